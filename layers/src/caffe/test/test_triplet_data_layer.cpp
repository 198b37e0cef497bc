#ifdef USE_LMDB
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layers/triplet_data_layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"
#include "caffe/util/io.hpp"

#include "caffe/test/test_caffe_main.hpp"

namespace caffe {

template <typename TypeParam>
class TripletDataLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  TripletDataLayerTest()
      : blob_top_data_(new Blob<Dtype>()),
        blob_top_label_(new Blob<Dtype>()) {
    blob_top_vec_.push_back(blob_top_data_);
    blob_top_vec_.push_back(blob_top_label_);
    MakeTempDir(&lmdb_path_);
    lmdb_path_ += "/images";
    MakeTempFilename(&triplet_path_);
  }
  virtual ~TripletDataLayerTest() {
    delete blob_top_data_;
    delete blob_top_label_;
  }

  /// Six 1x2x3 images: every pixel of image i is 10 i + c (channel c),
  /// label i % 3, keyed "%08d" by row.
  void WriteImages() {
    boost::scoped_ptr<db::DB> db(db::GetDB("lmdb"));
    db->Open(lmdb_path_, db::NEW);
    boost::scoped_ptr<db::Transaction> txn(db->NewTransaction());
    for (int i = 0; i < 6; ++i) {
      Datum datum;
      datum.set_channels(2);
      datum.set_height(1);
      datum.set_width(3);
      datum.set_label(i % 3);
      std::string data;
      for (int c = 0; c < 2; ++c) {
        for (int x = 0; x < 3; ++x) { data.push_back(static_cast<char>(10 * i + c)); }
      }
      datum.set_data(data);
      char key[16];
      snprintf(key, sizeof(key), "%08d", i);
      std::string value;
      datum.SerializeToString(&value);
      txn->Put(key, value);
    }
    txn->Commit();
    db->Close();
  }

  void WriteTriplets(const std::string& text) {
    std::ofstream out(triplet_path_.c_str());
    out << text;
  }

  LayerParameter Param(int batch_size) {
    LayerParameter param;
    param.set_phase(TRAIN);
    TripletDataParameter* p = param.mutable_triplet_data_param();
    p->set_source(lmdb_path_);
    p->set_triplet_source(triplet_path_);
    p->set_batch_size(batch_size);
    return param;
  }

  /// The image index held by row `row` of the data top (its channel-0 value / 10).
  int ImageAt(int row) {
    return static_cast<int>(blob_top_data_->data_at(row, 0, 0, 0)) / 10;
  }

  std::string lmdb_path_, triplet_path_;
  Blob<Dtype>* const blob_top_data_;
  Blob<Dtype>* const blob_top_label_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(TripletDataLayerTest, TestDtypesAndDevices);

TYPED_TEST(TripletDataLayerTest, TestBatchLayoutAnchorsPositivesNegatives) {
  this->WriteImages();
  this->WriteTriplets("0 3 1\n2 5 4\n4 1 0\n");
  TripletDataLayer<typename TypeParam::Dtype> layer(this->Param(2));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(layer.num_triplets(), 3);
  EXPECT_EQ(this->blob_top_data_->num(), 6);
  EXPECT_EQ(this->blob_top_data_->channels(), 2);
  EXPECT_EQ(this->blob_top_data_->height(), 1);
  EXPECT_EQ(this->blob_top_data_->width(), 3);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // rows: anchors (0, 2), positives (3, 5), negatives (1, 4)
  const int want[] = {0, 2, 3, 5, 1, 4};
  for (int row = 0; row < 6; ++row) {
    EXPECT_EQ(this->ImageAt(row), want[row]) << "row " << row;
    EXPECT_EQ(this->blob_top_label_->cpu_data()[row], want[row] % 3);
    EXPECT_EQ(this->blob_top_data_->data_at(row, 1, 0, 2), 10 * want[row] + 1);
  }
  // The second batch takes triplet 3, then wraps around to triplet 1.
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const int want2[] = {4, 0, 1, 3, 0, 1};
  for (int row = 0; row < 6; ++row) {
    EXPECT_EQ(this->ImageAt(row), want2[row]) << "row " << row;
  }
}

TYPED_TEST(TripletDataLayerTest, TestFirstTriplet) {
  this->WriteImages();
  this->WriteTriplets("0 3 1\n2 5 4\n4 1 0\n");
  LayerParameter param = this->Param(1);
  param.mutable_triplet_data_param()->set_first_triplet(2);
  TripletDataLayer<typename TypeParam::Dtype> layer(param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->ImageAt(0), 4);
  EXPECT_EQ(this->ImageAt(1), 1);
  EXPECT_EQ(this->ImageAt(2), 0);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->ImageAt(0), 0);  // wrapped around
}

TYPED_TEST(TripletDataLayerTest, TestTransformScaleAndMean) {
  this->WriteImages();
  this->WriteTriplets("5 2 0\n");
  LayerParameter param = this->Param(1);
  param.mutable_transform_param()->set_scale(0.5);
  param.mutable_transform_param()->add_mean_value(1);
  param.mutable_transform_param()->add_mean_value(2);
  TripletDataLayer<typename TypeParam::Dtype> layer(param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const int want[] = {5, 2, 0};
  for (int row = 0; row < 3; ++row) {
    for (int c = 0; c < 2; ++c) {
      EXPECT_EQ(this->blob_top_data_->data_at(row, c, 0, 1),
                (10 * want[row] + c - (c + 1)) * 0.5);
    }
  }
}

}  // namespace caffe
#endif  // USE_LMDB
