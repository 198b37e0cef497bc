#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/piecewise_threshold_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class PiecewiseThresholdLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  PiecewiseThresholdLayerTest()
      : blob_bottom_(new Blob<Dtype>(2, 3, 4, 5)),
        blob_top_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(0.0);
    filler_param.set_max(1.0);  // sigmoid outputs
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~PiecewiseThresholdLayerTest() {
    delete blob_bottom_;
    delete blob_top_;
  }

  /// Moves every bottom value at least `gap` away from the band edges
  /// lower and upper, so finite differences never straddle a jump; with
  /// inside_only, also into the band. Returns the number inside the band.
  int KeepOffEdges(Dtype lower, Dtype upper, Dtype gap, bool inside_only) {
    Dtype* s = blob_bottom_->mutable_cpu_data();
    int inside = 0;
    for (int k = 0; k < blob_bottom_->count(); ++k) {
      if (inside_only) {
        s[k] = lower + gap + (upper - lower - 2 * gap) * s[k];
      } else if (std::fabs(s[k] - lower) < gap) {
        s[k] = lower + (s[k] < lower ? -gap : gap);
      } else if (std::fabs(s[k] - upper) < gap) {
        s[k] = upper + (s[k] < upper ? -gap : gap);
      }
      inside += (s[k] > lower && s[k] < upper);
    }
    return inside;
  }

  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(PiecewiseThresholdLayerTest, TestDtypesAndDevices);

TYPED_TEST(PiecewiseThresholdLayerTest, TestDefaults) {
  // The project's choice (DNNH gives no epsilon), DNNH's centre, g's
  // derivative.
  LayerParameter layer_param;
  const PiecewiseThresholdParameter& p =
      layer_param.piecewise_threshold_param();
  EXPECT_FLOAT_EQ(p.epsilon(), 0.1);
  EXPECT_FLOAT_EQ(p.center(), 0.5);
  EXPECT_EQ(p.gradient(), PiecewiseThresholdParameter_Gradient_EXACT);
}

// center 0.5, epsilon 0.25: the band is [0.25, 0.75] (edges exact in binary).
//   s     : -0.5  0  0.2  0.25  0.3  0.5  0.7  0.75  0.8  1  1.5  3
//   g(s)  :  0    0  0    0.25  0.3  0.5  0.7  0.75  1    1  1    1
//   g'(s) :  0    0  0    0     1    1    1    0     0    0  0    0
//   (below: 0; edges: s itself, derivative 0; inside: s; above: 1)
// The top diff w_k = 0.5 (k + 1) gives EXACT bottom diffs w_k g'(s_k):
//   0 0 0 0 2.5 3 3.5 0 0 0 0 0, and STRAIGHT_THROUGH w_k itself.
TYPED_TEST(PiecewiseThresholdLayerTest, TestForwardBackwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype s[] = {-0.5, 0, 0.2, 0.25, 0.3, 0.5, 0.7, 0.75, 0.8, 1, 1.5, 3};
  const Dtype want_g[] = {0, 0, 0, 0.25, 0.3, 0.5, 0.7, 0.75, 1, 1, 1, 1};
  const Dtype want_exact[] = {0, 0, 0, 0, 2.5, 3, 3.5, 0, 0, 0, 0, 0};
  for (int mode = 0; mode < 2; ++mode) {
    Blob<Dtype> bottom(3, 4, 1, 1), top;
    std::copy(s, s + 12, bottom.mutable_cpu_data());
    vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
    LayerParameter layer_param;
    PiecewiseThresholdParameter* p =
        layer_param.mutable_piecewise_threshold_param();
    p->set_epsilon(0.25);
    if (mode == 1) {
      p->set_gradient(PiecewiseThresholdParameter_Gradient_STRAIGHT_THROUGH);
    }
    PiecewiseThresholdLayer<Dtype> layer(layer_param);
    layer.SetUp(bottom_vec, top_vec);
    ASSERT_TRUE(top.shape() == bottom.shape());
    layer.Forward(bottom_vec, top_vec);
    for (int k = 0; k < 12; ++k) {
      EXPECT_EQ(top.cpu_data()[k], want_g[k]) << "k=" << k;
      top.mutable_cpu_diff()[k] = Dtype(0.5) * (k + 1);
    }
    layer.Backward(top_vec, vector<bool>(1, true), bottom_vec);
    for (int k = 0; k < 12; ++k) {
      const Dtype want = mode == 0 ? want_exact[k] : Dtype(0.5) * (k + 1);
      EXPECT_EQ(bottom.cpu_diff()[k], want) << "mode=" << mode << " k=" << k;
    }
  }
}

// Defaults (epsilon 0.1, center 0.5: band [0.4, 0.6]), values off the edges:
//   s    : 0.05  0.35  0.45  0.5  0.58  0.65  0.95
//   g(s) : 0     0     0.45  0.5  0.58  1     1
TYPED_TEST(PiecewiseThresholdLayerTest, TestForwardDefaults) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype s[] = {0.05, 0.35, 0.45, 0.5, 0.58, 0.65, 0.95};
  const Dtype want[] = {0, 0, 0.45, 0.5, 0.58, 1, 1};
  Blob<Dtype> bottom(vector<int>(1, 7)), top;
  std::copy(s, s + 7, bottom.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
  PiecewiseThresholdLayer<Dtype> layer((LayerParameter()));
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  for (int k = 0; k < 7; ++k) {
    EXPECT_EQ(top.cpu_data()[k], want[k]) << "k=" << k;
  }
}

// center 0.3, epsilon 0.1: band [0.2, 0.4];
//   s: 0.1 0.25 0.35 0.45 -> g: 0 0.25 0.35 1, g': 0 1 1 0.
// epsilon 0 (a hard step at 0.3): s: 0.1 0.25 0.35 0.45 -> 0 0 1 1, g' = 0.
TYPED_TEST(PiecewiseThresholdLayerTest, TestCenterAndZeroEpsilon) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype s[] = {0.1, 0.25, 0.35, 0.45};
  const Dtype want_g[2][4] = {{0, 0.25, 0.35, 1}, {0, 0, 1, 1}};
  const Dtype want_d[2][4] = {{0, 1, 1, 0}, {0, 0, 0, 0}};
  const float epsilons[2] = {0.1, 0};
  for (int c = 0; c < 2; ++c) {
    Blob<Dtype> bottom(vector<int>(1, 4)), top;
    std::copy(s, s + 4, bottom.mutable_cpu_data());
    vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
    LayerParameter layer_param;
    layer_param.mutable_piecewise_threshold_param()->set_center(0.3);
    layer_param.mutable_piecewise_threshold_param()->set_epsilon(epsilons[c]);
    PiecewiseThresholdLayer<Dtype> layer(layer_param);
    layer.SetUp(bottom_vec, top_vec);
    layer.Forward(bottom_vec, top_vec);
    caffe_set(4, Dtype(1), top.mutable_cpu_diff());
    layer.Backward(top_vec, vector<bool>(1, true), bottom_vec);
    for (int k = 0; k < 4; ++k) {
      EXPECT_EQ(top.cpu_data()[k], want_g[c][k]) << "c=" << c << " k=" << k;
      EXPECT_EQ(bottom.cpu_diff()[k], want_d[c][k]) << "c=" << c << " k=" << k;
    }
  }
}

// In place (top == bottom) gives the out-of-place top and bottom diff, in
// both gradient modes, including the widest band (epsilon 0.5: [0, 1]) where
// inputs outside [0, 1] become the edge values 0 and 1.
TYPED_TEST(PiecewiseThresholdLayerTest, TestInPlace) {
  typedef typename TypeParam::Dtype Dtype;
  // (Binary-exact values near the edges: epsilon 0.1 is a float, slightly
  // off 0.1, so a band edge "0.4" differs between float and double.)
  const Dtype s[] = {-2, -0.1, 0, 0.05, 0.25, 0.375, 0.5, 0.625, 0.75, 0.95, 1,
                     1.2, 7, 0.45};
  const int n = 14;
  const float epsilons[3] = {0.1, 0.25, 0.5};
  for (int mode = 0; mode < 2; ++mode) {
    for (int e = 0; e < 3; ++e) {
      LayerParameter layer_param;
      layer_param.mutable_piecewise_threshold_param()->set_epsilon(
          epsilons[e]);
      if (mode == 1) {
        layer_param.mutable_piecewise_threshold_param()->set_gradient(
            PiecewiseThresholdParameter_Gradient_STRAIGHT_THROUGH);
      }
      Blob<Dtype> bottom(vector<int>(1, n)), top, in_place(vector<int>(1, n));
      std::copy(s, s + n, bottom.mutable_cpu_data());
      std::copy(s, s + n, in_place.mutable_cpu_data());
      vector<Blob<Dtype>*> bottom_vec(1, &bottom), top_vec(1, &top);
      vector<Blob<Dtype>*> in_place_vec(1, &in_place);
      PiecewiseThresholdLayer<Dtype> layer(layer_param), layer2(layer_param);
      layer.SetUp(bottom_vec, top_vec);
      layer2.SetUp(in_place_vec, in_place_vec);
      layer.Forward(bottom_vec, top_vec);
      layer2.Forward(in_place_vec, in_place_vec);
      for (int k = 0; k < n; ++k) {
        top.mutable_cpu_diff()[k] = k + 1;
        in_place.mutable_cpu_diff()[k] = k + 1;
      }
      layer.Backward(top_vec, vector<bool>(1, true), bottom_vec);
      layer2.Backward(in_place_vec, vector<bool>(1, true), in_place_vec);
      int passed = 0;
      for (int k = 0; k < n; ++k) {
        EXPECT_EQ(in_place.cpu_data()[k], top.cpu_data()[k]);
        EXPECT_EQ(in_place.cpu_diff()[k], bottom.cpu_diff()[k])
            << "mode=" << mode << " epsilon=" << epsilons[e] << " s=" << s[k];
        passed += bottom.cpu_diff()[k] != 0;
      }
      // EXACT passes the gradient of the values strictly inside the band
      // only: 0.5 0.45 for 0.1; 0.375 0.5 0.625 0.45 for 0.25 (its edges
      // 0.25 and 0.75 excluded); the 8 values in (0, 1) for 0.5.
      const int want_passed[3] = {2, 4, 8};
      EXPECT_EQ(passed, mode == 0 ? want_passed[e] : n);
    }
  }
}

TYPED_TEST(PiecewiseThresholdLayerTest, TestGradientExact) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;  // band [0.4, 0.6]
  const int inside = this->KeepOffEdges(0.4, 0.6, 0.01, false);
  EXPECT_GT(inside, 5);  // both sides exercised
  EXPECT_LT(inside, this->blob_bottom_->count() - 5);
  PiecewiseThresholdLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientEltwise(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

TYPED_TEST(PiecewiseThresholdLayerTest, TestGradientExactWideBand) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;  // band [0.05, 0.65]
  layer_param.mutable_piecewise_threshold_param()->set_center(0.35);
  layer_param.mutable_piecewise_threshold_param()->set_epsilon(0.3);
  const int inside = this->KeepOffEdges(0.05, 0.65, 0.01, false);
  EXPECT_GT(inside, 5);
  EXPECT_LT(inside, this->blob_bottom_->count() - 5);
  PiecewiseThresholdLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientEltwise(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

// Straight-through equals g's derivative inside the band, where finite
// differences can check it (outside, TestForwardBackwardHandComputed shows
// it passes the top diff where g' is 0).
TYPED_TEST(PiecewiseThresholdLayerTest, TestGradientStraightThroughInBand) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_piecewise_threshold_param()->set_gradient(
      PiecewiseThresholdParameter_Gradient_STRAIGHT_THROUGH);
  const int inside = this->KeepOffEdges(0.4, 0.6, 0.01, true);
  EXPECT_EQ(inside, this->blob_bottom_->count());
  PiecewiseThresholdLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientEltwise(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

TYPED_TEST(PiecewiseThresholdLayerTest, TestNoPropagateDownLeavesDiff) {
  typedef typename TypeParam::Dtype Dtype;
  PiecewiseThresholdLayer<Dtype> layer((LayerParameter()));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  caffe_set(this->blob_top_->count(), Dtype(1),
      this->blob_top_->mutable_cpu_diff());
  caffe_set(this->blob_bottom_->count(), Dtype(-7),
      this->blob_bottom_->mutable_cpu_diff());
  layer.Backward(this->blob_top_vec_, vector<bool>(1, false),
      this->blob_bottom_vec_);
  for (int k = 0; k < this->blob_bottom_->count(); ++k) {
    EXPECT_EQ(this->blob_bottom_->cpu_diff()[k], Dtype(-7));
  }
}

}  // namespace caffe
