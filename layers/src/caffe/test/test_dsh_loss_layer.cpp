#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/dsh_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class DSHLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  DSHLossLayerTest()
      : blob_codes_(new Blob<Dtype>(10, 6, 1, 1)),
        blob_labels_(new Blob<Dtype>(vector<int>(1, 10))),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(-1.6);
    filler_param.set_max(1.6);  // a linear output around +-1
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(blob_codes_);
    for (int i = 0; i < 10; ++i) {
      blob_labels_->mutable_cpu_data()[i] = caffe_rng_rand() % 3;
    }
    blob_bottom_vec_.push_back(blob_codes_);
    blob_bottom_vec_.push_back(blob_labels_);
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~DSHLossLayerTest() {
    delete blob_codes_;
    delete blob_labels_;
    delete blob_top_loss_;
  }

  Dtype Dist(int i, int j) {
    const int dim = blob_codes_->count(1);
    const Dtype* b = blob_codes_->cpu_data();
    Dtype d = 0;
    for (int c = 0; c < dim; ++c) {
      d += std::pow(b[i * dim + c] - b[j * dim + c], 2);
    }
    return d;
  }

  bool Same(int i, int j) {
    return blob_labels_->cpu_data()[i] == blob_labels_->cpu_data()[j];
  }

  /// Eq. 3 summed over the pairs i < j, as written, over P.
  Dtype ReferenceLoss(Dtype margin, Dtype alpha) {
    const int num = blob_codes_->num();
    const int dim = blob_codes_->count(1);
    const Dtype* b = blob_codes_->cpu_data();
    Dtype loss = 0;
    int pairs = 0;
    for (int i = 0; i < num; ++i) {
      for (int j = i + 1; j < num; ++j) {
        const Dtype d = Dist(i, j);
        Dtype reg = 0;
        for (int c = 0; c < dim; ++c) {
          reg += std::fabs(std::fabs(b[i * dim + c]) - 1)
              + std::fabs(std::fabs(b[j * dim + c]) - 1);
        }
        loss += Same(i, j) ? d / 2 : std::max(margin - d, Dtype(0)) / 2;
        loss += alpha * reg;
        ++pairs;
      }
    }
    return loss / pairs;
  }

  /// Dissimilar pairs whose hinge is active / inactive.
  void CountHinges(Dtype margin, int* active, int* inactive) {
    *active = *inactive = 0;
    for (int i = 0; i < blob_codes_->num(); ++i) {
      for (int j = i + 1; j < blob_codes_->num(); ++j) {
        if (Same(i, j)) { continue; }
        (margin - Dist(i, j) > 0 ? *active : *inactive) += 1;
      }
    }
  }

  /// Moves every code at least `gap` from the regularizer's kinks (0, +-1)
  /// and every dissimilar pair's distance at least `hinge_gap` from the
  /// margin, so that finite differences never straddle a kink.
  void KeepOffKinks(Dtype margin, Dtype gap, Dtype hinge_gap) {
    const int num = blob_codes_->num();
    const int dim = blob_codes_->count(1);
    Dtype* b = blob_codes_->mutable_cpu_data();
    for (int k = 0; k < num * dim; ++k) {
      const Dtype ax = std::fabs(b[k]);
      if (ax < gap) { b[k] = b[k] < 0 ? -2 * gap : 2 * gap; }
      if (std::fabs(ax - 1) < gap) {
        b[k] = b[k] < 0 ? -1 - 2 * gap : 1 + 2 * gap;
      }
    }
    for (int tries = 0; tries < 100; ++tries) {
      bool moved = false;
      for (int i = 0; i < num; ++i) {
        for (int j = i + 1; j < num; ++j) {
          if (!Same(i, j) && std::fabs(margin - Dist(i, j)) < hinge_gap) {
            // Off the regularizer's kinks too: in (0.2, 0.7) or (1.1, 1.5).
            const Dtype u = Dtype(caffe_rng_rand() % 1000) / 1000;
            b[j * dim] = u < 0.5 ? Dtype(0.2) + u : Dtype(0.7) + u * Dtype(0.8);
            moved = true;
          }
        }
      }
      if (!moved) { return; }
    }
    FAIL() << "could not move the codes off the hinge";
  }

  Blob<Dtype>* const blob_codes_;
  Blob<Dtype>* const blob_labels_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(DSHLossLayerTest, TestDtypesAndDevices);

// Three codes of two bits, labels (0, 0, 1), default margin m = 2k = 4,
// alpha = 0.1, computed by hand:
//   b1 = (0.5, -1.5), b2 = (1.5, -0.5), b3 = (1.5, 0.5)
//   D12 = 1 + 1 = 2, similar:               1/2 D12          = 1
//   D13 = 1 + 4 = 5, dissimilar, 4 - 5 < 0:                  = 0
//   D23 = 0 + 1 = 1, dissimilar:            1/2 (4 - D23)    = 1.5
//   r_i = | |b| - 1 |_1 = 0.5 + 0.5 = 1 for each row
//   L = (1 + 0 + 1.5) / 3 + (2 * 0.1 / 3) * 3 = 0.8333... + 0.2 = 1.0333...
// Gradient (top diff 1), 1/P = 1/3, 2 alpha / N = 1/15; c12 = 1, c13 = 0,
// c23 = -1; sign(|b|-1) sign(b): b1 (-1, -1), b2 (1, 1), b3 (1, -1):
//   dL/db1 = (b1 - b2) / 3 + (-1, -1) / 15 = (-0.4, -0.4)
//   dL/db2 = ((b2 - b1) - (b2 - b3)) / 3 + (1, 1) / 15
//          = (1, 2) / 3 + (1, 1) / 15 = (0.4, 0.7333...)
//   dL/db3 = -(b3 - b2) / 3 + (1, -1) / 15 = (0.0666..., -0.4)
TYPED_TEST(DSHLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype b[] = {0.5, -1.5, 1.5, -0.5, 1.5, 0.5};
  const Dtype labels[] = {0, 0, 1};
  Blob<Dtype> codes(3, 2, 1, 1), label(3, 1, 1, 1), top;
  std::copy(b, b + 6, codes.mutable_cpu_data());
  std::copy(labels, labels + 3, label.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &codes), top_vec(1, &top);
  bottom_vec.push_back(&label);
  LayerParameter layer_param;
  layer_param.mutable_dsh_loss_param()->set_alpha(0.1);
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 2.5 / 3 + 0.2, 1e-6);
  top.mutable_cpu_diff()[0] = 1;
  vector<bool> propagate_down(1, true);
  propagate_down.push_back(false);
  layer.Backward(top_vec, propagate_down, bottom_vec);
  const Dtype want[] = {-0.4, -0.4, 0.4, 11.0 / 15, 1.0 / 15, -0.4};
  for (int k = 0; k < 6; ++k) {
    EXPECT_NEAR(codes.cpu_diff()[k], want[k], 1e-6) << "element " << k;
  }
}

TYPED_TEST(DSHLossLayerTest, TestDefaults) {
  LayerParameter layer_param;
  EXPECT_FLOAT_EQ(layer_param.dsh_loss_param().margin(), 0);  // 2k
  EXPECT_FLOAT_EQ(layer_param.dsh_loss_param().alpha(), 0.01);
}

TYPED_TEST(DSHLossLayerTest, TestForwardMatchesLoopsDefaultMargin) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // margin 0 means 2k = 12; with these codes some hinges are active.
  int active, inactive;
  this->CountHinges(12, &active, &inactive);
  EXPECT_GT(active, 0);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
      this->ReferenceLoss(12, 0.01), 1e-5);
}

TYPED_TEST(DSHLossLayerTest, TestMarginAndAlpha) {
  typedef typename TypeParam::Dtype Dtype;
  int active, inactive;
  this->CountHinges(6, &active, &inactive);
  EXPECT_GT(active, 0);  // both sides of the hinge with m = 6
  EXPECT_GT(inactive, 0);
  const Dtype margins[] = {6, 12, 3};
  const Dtype alphas[] = {0, 0.5, 0.01};
  for (int t = 0; t < 3; ++t) {
    LayerParameter layer_param;
    layer_param.mutable_dsh_loss_param()->set_margin(margins[t]);
    layer_param.mutable_dsh_loss_param()->set_alpha(alphas[t]);
    DSHLossLayer<Dtype> layer(layer_param);
    layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
        this->ReferenceLoss(margins[t], alphas[t]), 1e-5) << "case " << t;
  }
  // The explicit margin 6 differs from the default 2k = 12.
  EXPECT_GT(std::fabs(this->ReferenceLoss(6, 0) - this->ReferenceLoss(12, 0)),
      1e-2);
}

TYPED_TEST(DSHLossLayerTest, TestLabelShapeAndCodeShape) {
  typedef typename TypeParam::Dtype Dtype;
  // Codes (10 x 3 x 2) and labels (10 x 1 x 1 x 1) give the loss of their
  // flattened (10 x 6) and (10) forms.
  vector<int> shape(1, 10);
  shape.push_back(3);
  shape.push_back(2);
  Blob<Dtype> codes(shape), labels(10, 1, 1, 1);
  caffe_copy(60, this->blob_codes_->cpu_data(), codes.mutable_cpu_data());
  caffe_copy(10, this->blob_labels_->cpu_data(), labels.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &codes);
  bottom_vec.push_back(&labels);
  LayerParameter layer_param;
  layer_param.mutable_dsh_loss_param()->set_margin(6);
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, this->blob_top_vec_);
  layer.Forward(bottom_vec, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
      this->ReferenceLoss(6, 0.01), 1e-5);
}

TYPED_TEST(DSHLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_dsh_loss_param()->set_margin(6);
  layer_param.mutable_dsh_loss_param()->set_alpha(0.1);
  this->KeepOffKinks(6, 0.02, 0.1);
  int active, inactive;
  this->CountHinges(6, &active, &inactive);
  EXPECT_GT(active, 0);
  EXPECT_GT(inactive, 0);
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(DSHLossLayerTest, TestGradientDefaultMarginLossWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.add_loss_weight(3.5);
  this->KeepOffKinks(12, 0.02, 0.1);
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(DSHLossLayerTest, TestLossWeightScalesLossAndGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_dsh_loss_param()->set_margin(6);
  layer_param.add_loss_weight(3.5);
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype weighted = layer.Forward(this->blob_bottom_vec_,
      this->blob_top_vec_);
  EXPECT_NEAR(weighted, 3.5 * this->ReferenceLoss(6, 0.01), 1e-4);
  vector<bool> propagate_down(1, true);
  propagate_down.push_back(false);
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  const int count = this->blob_codes_->count();
  vector<Dtype> weighted_diff(this->blob_codes_->cpu_diff(),
      this->blob_codes_->cpu_diff() + count);
  this->blob_top_loss_->mutable_cpu_diff()[0] = 1;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  Dtype max_abs = 0;
  for (int k = 0; k < count; ++k) {
    EXPECT_NEAR(weighted_diff[k], 3.5 * this->blob_codes_->cpu_diff()[k],
        1e-5);
    max_abs = std::max(max_abs, std::fabs(this->blob_codes_->cpu_diff()[k]));
  }
  EXPECT_GT(max_abs, 1e-3);
}

TYPED_TEST(DSHLossLayerTest, TestTwoRowsSimilarAndDissimilar) {
  typedef typename TypeParam::Dtype Dtype;
  // N = 2 (one pair, P = 1), k = 1, alpha = 0: b = (2, -1).
  // Same label: L = 1/2 * 9 = 4.5. Different labels, m = 2k = 2: D = 9 > 2,
  // L = 0; with margin 10: L = 1/2 * (10 - 9) = 0.5.
  Blob<Dtype> codes(2, 1, 1, 1), labels(vector<int>(1, 2)), top;
  codes.mutable_cpu_data()[0] = 2;
  codes.mutable_cpu_data()[1] = -1;
  vector<Blob<Dtype>*> bottom_vec(1, &codes), top_vec(1, &top);
  bottom_vec.push_back(&labels);
  const Dtype label_b[] = {7, 3, 3};
  const Dtype margin[] = {0, 0, 10};
  const Dtype want[] = {4.5, 0, 0.5};
  for (int t = 0; t < 3; ++t) {
    labels.mutable_cpu_data()[0] = 7;
    labels.mutable_cpu_data()[1] = label_b[t];
    LayerParameter layer_param;
    layer_param.mutable_dsh_loss_param()->set_alpha(0);
    layer_param.mutable_dsh_loss_param()->set_margin(margin[t]);
    DSHLossLayer<Dtype> layer(layer_param);
    layer.SetUp(bottom_vec, top_vec);
    layer.Forward(bottom_vec, top_vec);
    EXPECT_NEAR(top.cpu_data()[0], want[t], 1e-6) << "case " << t;
  }
}

// At the kinks the subgradient 0 is used: b1 = (1, 0), b2 = (-1, 0) with
// different labels and margin 4 = D12 (the hinge's kink), every code at 0 or
// +-1. L = 0 (pair) + (2 alpha / 2) (r1 + r2) = alpha (1 + 1) = 0.2 for
// alpha = 0.1, and the gradient is exactly 0.
TYPED_TEST(DSHLossLayerTest, TestSubgradientZeroAtKinks) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype b[] = {1, 0, -1, 0};
  Blob<Dtype> codes(2, 2, 1, 1), labels(vector<int>(1, 2)), top;
  std::copy(b, b + 4, codes.mutable_cpu_data());
  labels.mutable_cpu_data()[0] = 0;
  labels.mutable_cpu_data()[1] = 1;
  vector<Blob<Dtype>*> bottom_vec(1, &codes), top_vec(1, &top);
  bottom_vec.push_back(&labels);
  LayerParameter layer_param;
  layer_param.mutable_dsh_loss_param()->set_margin(4);
  layer_param.mutable_dsh_loss_param()->set_alpha(0.1);
  DSHLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 0.2, 1e-6);
  top.mutable_cpu_diff()[0] = 1;
  caffe_set(4, Dtype(7), codes.mutable_cpu_diff());
  vector<bool> propagate_down(1, true);
  propagate_down.push_back(false);
  layer.Backward(top_vec, propagate_down, bottom_vec);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(codes.cpu_diff()[k], 0) << "element " << k;
  }
}

}  // namespace caffe
