#ifndef CAFFE_TRIPLET_DATA_LAYER_HPP_
#define CAFFE_TRIPLET_DATA_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/data_transformer.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/base_data_layer.hpp"
#include "caffe/proto/caffe.pb.h"

struct MDB_env;

namespace caffe {

/**
 * @brief Feeds triplet batches from images stored once: an LMDB of Datum
 *        records keyed by their 0-based row index ("%08d", as data_prep
 *        writes them) and a text file of triplets, one "anchor positive
 *        negative" (row indices) a line, every epoch's fresh triplets one
 *        after the other.
 *
 * Each batch holds TripletDataParameter.batch_size triplets as
 * @f$ 3\,bs @f$ rows: the @f$ bs @f$ anchors, then the @f$ bs @f$ positives,
 * then the @f$ bs @f$ negatives, so that a Slice layer (axis 0, two slice
 * points bs and 2 bs) after the latent layer yields the three bottoms of the
 * triplet losses. transform_param (crop, mirror, mean file or values, scale)
 * applies to every image, raw or encoded (PNG/JPEG) Datums alike. The
 * optional second top holds the 3 bs labels. The triplet list is read in
 * order from line first_triplet and restarts from its first line when it
 * ends (logged).
 *
 * Records are fetched by key with LMDB's own random access (mdb_get), so the
 * images are neither held in memory nor written once per epoch.
 */
template <typename Dtype>
class TripletDataLayer : public BasePrefetchingDataLayer<Dtype> {
 public:
  explicit TripletDataLayer(const LayerParameter& param);
  virtual ~TripletDataLayer();
  virtual void DataLayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual inline const char* type() const { return "TripletData"; }
  virtual inline int ExactNumBottomBlobs() const { return 0; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

  /// The number of triplets in the list (all epochs).
  inline size_t num_triplets() const { return triplets_.size() / 3; }

 protected:
  virtual void load_batch(Batch<Dtype>* batch);
  /// Reads record `index` of the image LMDB into `datum` (fails naming it).
  void ReadDatum(void* txn, int index, Datum* datum);
  /// Loads the triplet list and checks every index against the LMDB.
  void LoadTriplets(const std::string& path);

  MDB_env* env_;
  unsigned int dbi_;
  size_t num_records_;
  vector<int> triplets_;  // 3 row indices per triplet
  size_t position_;       // the next triplet to read
};

}  // namespace caffe

#endif  // CAFFE_TRIPLET_DATA_LAYER_HPP_
