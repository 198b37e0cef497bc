#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/triplet_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class TripletLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  TripletLossLayerTest()
      : blob_anchor_(new Blob<Dtype>(10, 4, 1, 1)),
        blob_positive_(new Blob<Dtype>(10, 4, 1, 1)),
        blob_negative_(new Blob<Dtype>(10, 4, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(0.0);
    filler_param.set_max(1.0);  // sigmoid outputs
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(blob_anchor_);
    filler.Fill(blob_positive_);
    filler.Fill(blob_negative_);
    blob_bottom_vec_.push_back(blob_anchor_);
    blob_bottom_vec_.push_back(blob_positive_);
    blob_bottom_vec_.push_back(blob_negative_);
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~TripletLossLayerTest() {
    delete blob_anchor_;
    delete blob_positive_;
    delete blob_negative_;
    delete blob_top_loss_;
  }

  /// Plain-loop Eq. 1 for the current bottoms.
  Dtype ReferenceLoss(Dtype margin) {
    const int bs = blob_anchor_->num();
    const int dim = blob_anchor_->count(1);
    const Dtype* a = blob_anchor_->cpu_data();
    const Dtype* p = blob_positive_->cpu_data();
    const Dtype* n = blob_negative_->cpu_data();
    Dtype loss = 0;
    for (int i = 0; i < bs; ++i) {
      Dtype d_ap = 0, d_an = 0;
      for (int j = 0; j < dim; ++j) {
        d_ap += std::pow(a[i * dim + j] - p[i * dim + j], 2);
        d_an += std::pow(a[i * dim + j] - n[i * dim + j], 2);
      }
      loss += std::max(margin + d_ap - d_an, Dtype(0));
    }
    return loss / (2 * bs);
  }

  /// The number of triplets whose hinge is active (argument > 0).
  int CountActive(Dtype margin) {
    const int bs = blob_anchor_->num();
    const int dim = blob_anchor_->count(1);
    const Dtype* a = blob_anchor_->cpu_data();
    const Dtype* p = blob_positive_->cpu_data();
    const Dtype* n = blob_negative_->cpu_data();
    int active = 0;
    for (int i = 0; i < bs; ++i) {
      Dtype d_ap = 0, d_an = 0;
      for (int j = 0; j < dim; ++j) {
        d_ap += std::pow(a[i * dim + j] - p[i * dim + j], 2);
        d_an += std::pow(a[i * dim + j] - n[i * dim + j], 2);
      }
      active += (margin + d_ap - d_an > 0);
    }
    return active;
  }

  /// Moves every triplet's hinge argument at least `gap` away from 0, so that
  /// finite differences never straddle the kink.
  void KeepOffKink(Dtype margin, Dtype gap) {
    const int bs = blob_anchor_->num();
    const int dim = blob_anchor_->count(1);
    Dtype* a = blob_anchor_->mutable_cpu_data();
    const Dtype* p = blob_positive_->cpu_data();
    Dtype* n = blob_negative_->mutable_cpu_data();
    for (int i = 0; i < bs; ++i) {
      for (int tries = 0; tries < 100; ++tries) {
        Dtype d_ap = 0, d_an = 0;
        for (int j = 0; j < dim; ++j) {
          d_ap += std::pow(a[i * dim + j] - p[i * dim + j], 2);
          d_an += std::pow(a[i * dim + j] - n[i * dim + j], 2);
        }
        if (std::fabs(margin + d_ap - d_an) >= gap) { break; }
        n[i * dim] = Dtype(caffe_rng_rand() % 1000) / 1000;
      }
    }
  }

  Blob<Dtype>* const blob_anchor_;
  Blob<Dtype>* const blob_positive_;
  Blob<Dtype>* const blob_negative_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(TripletLossLayerTest, TestDtypesAndDevices);

// Two triplets of two dimensions, computed by hand:
//  triplet 1: a=(0.9,0.1) p=(0.8,0.3) n=(0.2,0.7)
//    ||a-p||^2 = 0.01+0.04 = 0.05, ||a-n||^2 = 0.49+0.36 = 0.85
//    hinge = 1.6 + 0.05 - 0.85 = 0.80
//  triplet 2: a=(0.0,1.0) p=(0.1,0.9) n=(1.0,0.0)
//    ||a-p||^2 = 0.02, ||a-n||^2 = 2.00, hinge = 1.6 + 0.02 - 2 < 0 -> 0
//  L_t = (0.80 + 0) / (2 * 2) = 0.20
TYPED_TEST(TripletLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype a[] = {0.9, 0.1, 0.0, 1.0};
  const Dtype p[] = {0.8, 0.3, 0.1, 0.9};
  const Dtype n[] = {0.2, 0.7, 1.0, 0.0};
  Blob<Dtype> ba(2, 2, 1, 1), bp(2, 2, 1, 1), bn(2, 2, 1, 1), top;
  std::copy(a, a + 4, ba.mutable_cpu_data());
  std::copy(p, p + 4, bp.mutable_cpu_data());
  std::copy(n, n + 4, bn.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &ba), top_vec(1, &top);
  bottom_vec.push_back(&bp);
  bottom_vec.push_back(&bn);
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(1.6);
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 0.20, 1e-6);
  // Backward with loss weight 1: only triplet 1 is active, 1/bs = 0.5.
  // dL/da = 0.5 (n - p) = (-0.3, 0.2); dL/dp = 0.5 (p - a) = (-0.05, 0.1);
  // dL/dn = 0.5 (a - n) = (0.35, -0.3); triplet 2 gets zeros.
  top.mutable_cpu_diff()[0] = 1;
  layer.Backward(top_vec, vector<bool>(3, true), bottom_vec);
  const Dtype want_da[] = {-0.3, 0.2, 0, 0};
  const Dtype want_dp[] = {-0.05, 0.1, 0, 0};
  const Dtype want_dn[] = {0.35, -0.3, 0, 0};
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(ba.cpu_diff()[k], want_da[k], 1e-6);
    EXPECT_NEAR(bp.cpu_diff()[k], want_dp[k], 1e-6);
    EXPECT_NEAR(bn.cpu_diff()[k], want_dn[k], 1e-6);
  }
}

TYPED_TEST(TripletLossLayerTest, TestForwardMatchesLoops) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(0.4);
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype want = this->ReferenceLoss(0.4);
  EXPECT_GT(want, 0);  // some triplets active...
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], want, 1e-5);
}

TYPED_TEST(TripletLossLayerTest, TestDefaultMarginIsPapers) {
  LayerParameter layer_param;
  EXPECT_FLOAT_EQ(layer_param.triplet_loss_param().margin(), 1.6);
}

TYPED_TEST(TripletLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(0.4);
  this->KeepOffKink(0.4, 0.05);
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // Both sides of the hinge are exercised.
  const int active = this->CountActive(0.4);
  EXPECT_GT(active, 0);
  EXPECT_LT(active, this->blob_anchor_->num());
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  for (int b = 0; b < 3; ++b) {
    checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
        this->blob_top_vec_, b);
  }
}

TYPED_TEST(TripletLossLayerTest, TestLossWeightScalesLoss) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(0.4);
  layer_param.add_loss_weight(3.5);
  TripletLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype weighted = layer.Forward(this->blob_bottom_vec_,
      this->blob_top_vec_);
  EXPECT_NEAR(weighted, 3.5 * this->ReferenceLoss(0.4), 1e-4);
  // Backward scales the gradient by the top diff (the loss weight).
  layer.Backward(this->blob_top_vec_, vector<bool>(3, true),
      this->blob_bottom_vec_);
  vector<Dtype> weighted_diff(this->blob_anchor_->cpu_diff(),
      this->blob_anchor_->cpu_diff() + this->blob_anchor_->count());
  this->blob_top_loss_->mutable_cpu_diff()[0] = 1;
  layer.Backward(this->blob_top_vec_, vector<bool>(3, true),
      this->blob_bottom_vec_);
  for (int k = 0; k < this->blob_anchor_->count(); ++k) {
    EXPECT_NEAR(weighted_diff[k], 3.5 * this->blob_anchor_->cpu_diff()[k],
        1e-5);
  }
}

TYPED_TEST(TripletLossLayerTest, TestGradientLossWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_triplet_loss_param()->set_margin(0.4);
  layer_param.add_loss_weight(3.5);
  this->KeepOffKink(0.4, 0.05);
  TripletLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

}  // namespace caffe
