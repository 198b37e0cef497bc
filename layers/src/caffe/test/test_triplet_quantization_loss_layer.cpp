#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/triplet_quantization_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class TripletQuantizationLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  TripletQuantizationLossLayerTest()
      : blob_anchor_(new Blob<Dtype>(8, 6, 1, 1)),
        blob_positive_(new Blob<Dtype>(8, 6, 1, 1)),
        blob_negative_(new Blob<Dtype>(8, 6, 1, 1)),
        blob_top_loss_(new Blob<Dtype>()),
        blob_top_loss_s_(new Blob<Dtype>()),
        blob_top_loss_d_(new Blob<Dtype>()) {
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
  virtual ~TripletQuantizationLossLayerTest() {
    delete blob_anchor_;
    delete blob_positive_;
    delete blob_negative_;
    delete blob_top_loss_;
    delete blob_top_loss_s_;
    delete blob_top_loss_d_;
  }

  /// Parameters with alpha_d chosen so that, on 6 uniform bits, some
  /// triplets' L_d hinge is active and some is not.
  static LayerParameter TestParam() {
    LayerParameter layer_param;
    TripletQuantizationLossParameter* p =
        layer_param.mutable_triplet_quantization_loss_param();
    p->set_alpha_d(1.2);
    p->set_beta(2.0);
    p->set_gamma(1.5);
    return layer_param;
  }

  /// Plain loops over Eqs. 2 and 3: (L_s, L_d, active L_d hinges).
  void Reference(const TripletQuantizationLossParameter& q, Dtype* loss_s,
      Dtype* loss_d, int* active_d) {
    const int bs = blob_anchor_->num();
    const int dim = blob_anchor_->count(1);
    const Dtype* a = blob_anchor_->cpu_data();
    const Dtype* p = blob_positive_->cpu_data();
    const Dtype* n = blob_negative_->cpu_data();
    *loss_s = 0;
    *loss_d = 0;
    *active_d = 0;
    for (int i = 0; i < bs; ++i) {
      Dtype clipped = 0;
      for (int j = i * dim; j < (i + 1) * dim; ++j) {
        *loss_s += std::max(Dtype(q.alpha_s() -
            (a[j] - q.threshold()) * (p[j] - q.threshold())), Dtype(0));
        clipped += std::min(Dtype(std::pow(a[j] - n[j], 2)),
                            Dtype(q.delta()));
      }
      *loss_d += std::max(Dtype(q.alpha_d() - clipped), Dtype(0));
      *active_d += q.alpha_d() - clipped > 0;
    }
    *loss_s /= bs;
    *loss_d /= 2 * bs;
  }

  /// Resamples values until every hinge argument and every clip is at least
  /// `gap` away from its kink, so finite differences never straddle one.
  void KeepOffKinks(const TripletQuantizationLossParameter& q, Dtype gap) {
    const int bs = blob_anchor_->num();
    const int dim = blob_anchor_->count(1);
    const Dtype* a = blob_anchor_->cpu_data();
    Dtype* p = blob_positive_->mutable_cpu_data();
    Dtype* n = blob_negative_->mutable_cpu_data();
    const Dtype t = q.threshold();
    for (int round = 0; round < 1000; ++round) {
      bool moved = false;
      for (int i = 0; i < bs; ++i) {
        Dtype clipped = 0;
        for (int j = i * dim; j < (i + 1) * dim; ++j) {
          if (std::fabs(q.alpha_s() - (a[j] - t) * (p[j] - t)) < gap) {
            p[j] = Dtype(caffe_rng_rand() % 1000) / 1000;
            moved = true;
          }
          if (std::fabs(std::pow(a[j] - n[j], 2) - q.delta()) < gap) {
            n[j] = Dtype(caffe_rng_rand() % 1000) / 1000;
            moved = true;
          }
          clipped += std::min(Dtype(std::pow(a[j] - n[j], 2)),
                              Dtype(q.delta()));
        }
        if (std::fabs(q.alpha_d() - clipped) < gap) {
          n[i * dim + caffe_rng_rand() % dim] =
              Dtype(caffe_rng_rand() % 1000) / 1000;
          moved = true;
        }
      }
      if (!moved) { return; }
    }
    FAIL() << "could not move the test data off the kinks";
  }

  Blob<Dtype>* const blob_anchor_;
  Blob<Dtype>* const blob_positive_;
  Blob<Dtype>* const blob_negative_;
  Blob<Dtype>* const blob_top_loss_;
  Blob<Dtype>* const blob_top_loss_s_;
  Blob<Dtype>* const blob_top_loss_d_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(TripletQuantizationLossLayerTest, TestDtypesAndDevices);

// Two triplets of two bits, t = 0.5, alpha_s = 0.16, alpha_d = 1.0,
// delta = 0.64, beta = 8, gamma = 1, computed by hand:
//  triplet 1: a=(0.9,0.2) p=(0.7,0.6) n=(0.2,0.3)
//    L_s terms: 0.16 - (0.4)(0.2) = 0.08;  0.16 - (-0.3)(0.1) = 0.19
//    L_d: min(0.49, 0.64) + min(0.01, 0.64) = 0.50 -> 1.0 - 0.50 = 0.50
//  triplet 2: a=(0.1,0.95) p=(0.2,0.9) n=(0.85,0.05)
//    L_s terms: 0.16 - (-0.4)(-0.3) = 0.04;  0.16 - (0.45)(0.4) < 0 -> 0
//    L_d: min(0.5625, 0.64) + min(0.81, 0.64) = 1.2025 -> 1.0 - 1.2025 < 0
//  L_s = (0.27 + 0.04) / 2 = 0.155, L_d = 0.50 / 4 = 0.125,
//  L = 8 * 0.155 + 1 * 0.125 = 1.365
TYPED_TEST(TripletQuantizationLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype a[] = {0.9, 0.2, 0.1, 0.95};
  const Dtype p[] = {0.7, 0.6, 0.2, 0.9};
  const Dtype n[] = {0.2, 0.3, 0.85, 0.05};
  Blob<Dtype> ba(2, 2, 1, 1), bp(2, 2, 1, 1), bn(2, 2, 1, 1);
  Blob<Dtype> top, top_s, top_d;
  std::copy(a, a + 4, ba.mutable_cpu_data());
  std::copy(p, p + 4, bp.mutable_cpu_data());
  std::copy(n, n + 4, bn.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &ba), top_vec(1, &top);
  bottom_vec.push_back(&bp);
  bottom_vec.push_back(&bn);
  top_vec.push_back(&top_s);
  top_vec.push_back(&top_d);
  LayerParameter layer_param;
  layer_param.mutable_triplet_quantization_loss_param()->set_alpha_d(1.0);
  TripletQuantizationLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  const Dtype weighted = layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 1.365, 1e-6);
  EXPECT_NEAR(top_s.cpu_data()[0], 0.155, 1e-6);
  EXPECT_NEAR(top_d.cpu_data()[0], 0.125, 1e-6);
  EXPECT_NEAR(weighted, 1.365, 1e-6);  // L_s, L_d tops weigh 0 by default
  // Backward with loss weight 1 (w_s / bs = 8 / 2 = 4, w_d / bs = 0.5):
  //  triplet 1: da = 4 (0.5 - p) - 0.5 (a - n) on active bits
  //               = (4(-0.2) - 0.5(0.7), 4(-0.1) - 0.5(-0.1)) = (-1.15, -0.35)
  //             dp = 4 (0.5 - a) = (-1.6, 1.2); dn = 0.5 (a - n) = (0.35, -0.05)
  //  triplet 2: only bit 1 of L_s is active (the paper's per-triplet
  //             indicator would also move bit 2), L_d is inactive:
  //             da = (4(0.3), 0) = (1.2, 0); dp = (4(0.4), 0) = (1.6, 0); dn = 0
  top.mutable_cpu_diff()[0] = 1;
  top_s.mutable_cpu_diff()[0] = 0;
  top_d.mutable_cpu_diff()[0] = 0;
  layer.Backward(top_vec, vector<bool>(3, true), bottom_vec);
  const Dtype want_da[] = {-1.15, -0.35, 1.2, 0};
  const Dtype want_dp[] = {-1.6, 1.2, 1.6, 0};
  const Dtype want_dn[] = {0.35, -0.05, 0, 0};
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(ba.cpu_diff()[k], want_da[k], 1e-6) << "anchor " << k;
    EXPECT_NEAR(bp.cpu_diff()[k], want_dp[k], 1e-6) << "positive " << k;
    EXPECT_NEAR(bn.cpu_diff()[k], want_dn[k], 1e-6) << "negative " << k;
  }
}

TYPED_TEST(TripletQuantizationLossLayerTest, TestDefaultsArePapers) {
  LayerParameter layer_param;
  const TripletQuantizationLossParameter& p =
      layer_param.triplet_quantization_loss_param();
  // Delta = 0.4: alpha_s = Delta^2, delta = 4 Delta^2; beta = 8, gamma = 1.
  EXPECT_FLOAT_EQ(p.threshold(), 0.5);
  EXPECT_FLOAT_EQ(p.alpha_s(), 0.16);
  EXPECT_FLOAT_EQ(p.delta(), 0.64);
  EXPECT_FLOAT_EQ(p.beta(), 8);
  EXPECT_FLOAT_EQ(p.gamma(), 1);
  EXPECT_FALSE(p.has_alpha_d());
}

TYPED_TEST(TripletQuantizationLossLayerTest, TestForwardMatchesLoops) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param = this->TestParam();
  const TripletQuantizationLossParameter& q =
      layer_param.triplet_quantization_loss_param();
  this->blob_top_vec_.push_back(this->blob_top_loss_s_);
  this->blob_top_vec_.push_back(this->blob_top_loss_d_);
  TripletQuantizationLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  Dtype loss_s, loss_d;
  int active_d;
  this->Reference(q, &loss_s, &loss_d, &active_d);
  EXPECT_GT(active_d, 0);
  EXPECT_LT(active_d, this->blob_anchor_->num());
  EXPECT_NEAR(this->blob_top_loss_s_->cpu_data()[0], loss_s, 1e-5);
  EXPECT_NEAR(this->blob_top_loss_d_->cpu_data()[0], loss_d, 1e-5);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
      q.beta() * loss_s + q.gamma() * loss_d, 1e-5);
}

TYPED_TEST(TripletQuantizationLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param = this->TestParam();
  this->KeepOffKinks(layer_param.triplet_quantization_loss_param(), 0.02);
  TripletQuantizationLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  for (int b = 0; b < 3; ++b) {
    checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
        this->blob_top_vec_, b);
  }
}

// With the L_s and L_d tops present, the checker's objective weighs all three
// tops, so this also checks how Backward combines their diffs.
TYPED_TEST(TripletQuantizationLossLayerTest, TestGradientThreeTops) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param = this->TestParam();
  this->KeepOffKinks(layer_param.triplet_quantization_loss_param(), 0.02);
  this->blob_top_vec_.push_back(this->blob_top_loss_s_);
  this->blob_top_vec_.push_back(this->blob_top_loss_d_);
  TripletQuantizationLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

TYPED_TEST(TripletQuantizationLossLayerTest, TestGradientOtherThreshold) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param = this->TestParam();
  layer_param.mutable_triplet_quantization_loss_param()->set_threshold(0.3);
  layer_param.mutable_triplet_quantization_loss_param()->set_alpha_s(0.05);
  this->KeepOffKinks(layer_param.triplet_quantization_loss_param(), 0.02);
  TripletQuantizationLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

}  // namespace caffe
