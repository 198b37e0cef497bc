#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/pairwise_cosine_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class PairwiseCosineLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  PairwiseCosineLossLayerTest()
      : blob_z_(new Blob<Dtype>(8, 5, 1, 1)),
        blob_label_(new Blob<Dtype>(vector<int>(1, 8))),
        blob_top_loss_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(-1.0);
    filler_param.set_max(1.0);  // tanh outputs
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(blob_z_);
    // Three classes: both similar and dissimilar pairs.
    for (int i = 0; i < 8; ++i) {
      blob_label_->mutable_cpu_data()[i] = i % 3;
    }
    blob_bottom_vec_.push_back(blob_z_);
    blob_bottom_vec_.push_back(blob_label_);
    blob_top_vec_.push_back(blob_top_loss_);
  }
  virtual ~PairwiseCosineLossLayerTest() {
    delete blob_z_;
    delete blob_label_;
    delete blob_top_loss_;
  }

  /// Plain double loops over the ordered pairs, for the current bottoms.
  double ReferenceLoss(double similar, double dissimilar) {
    const int num = blob_z_->num();
    const int dim = blob_z_->count(1);
    const Dtype* z = blob_z_->cpu_data();
    const Dtype* label = blob_label_->cpu_data();
    double loss = 0;
    for (int i = 0; i < num; ++i) {
      for (int j = 0; j < num; ++j) {
        if (i == j) { continue; }
        double dot = 0, nii = 0, njj = 0;
        for (int k = 0; k < dim; ++k) {
          dot += static_cast<double>(z[i * dim + k]) * z[j * dim + k];
          nii += static_cast<double>(z[i * dim + k]) * z[i * dim + k];
          njj += static_cast<double>(z[j * dim + k]) * z[j * dim + k];
        }
        const double s = label[i] == label[j] ? similar : dissimilar;
        const double cosine = dot / std::sqrt(nii * njj);
        loss += (s - cosine) * (s - cosine);
      }
    }
    return loss / (num * (num - 1));
  }

  /// The smallest row norm (the gradient checks need rows well away from 0).
  Dtype MinNorm() {
    const int dim = blob_z_->count(1);
    Dtype smallest = 1e30;
    for (int i = 0; i < blob_z_->num(); ++i) {
      const Dtype* row = blob_z_->cpu_data() + i * dim;
      Dtype sq = 0;
      for (int k = 0; k < dim; ++k) { sq += row[k] * row[k]; }
      smallest = std::min(smallest, Dtype(std::sqrt(sq)));
    }
    return smallest;
  }

  Blob<Dtype>* const blob_z_;
  Blob<Dtype>* const blob_label_;
  Blob<Dtype>* const blob_top_loss_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(PairwiseCosineLossLayerTest, TestDtypesAndDevices);

// Three rows of two dimensions, labels (0, 0, 1), computed by hand:
//   z0 = (3, 4), |z0| = 5, u0 = (0.6, 0.8)
//   z1 = (4,-3), |z1| = 5, u1 = (0.8,-0.6)
//   z2 = (0,-2), |z2| = 2, u2 = (0, -1)
//   c01 = 0, c02 = -0.8, c12 = 0.6;  s01 = 1, s02 = s12 = -1
//   residuals c - s: r01 = -1, r02 = 0.2, r12 = 1.6
//   L = 2 (1 + 0.04 + 2.56) / (3 * 2) = 1.2
// Backward, loss weight 1: 4 / (N (N - 1)) = 2/3, so
//   dz0 = (2/3)/5 [-1 (u1 - 0 u0) + 0.2 (u2 + 0.8 u0)]
//       = (2/15) [(-0.8, 0.6) + (0.096, -0.072)] = (-0.0938667, 0.0704)
//   dz1 = (2/3)/5 [-1 (u0 - 0 u1) + 1.6 (u2 - 0.6 u1)]
//       = (2/15) [(-0.6, -0.8) + (-0.768, -1.024)] = (-0.1824, -0.2432)
//   dz2 = (2/3)/2 [0.2 (u0 + 0.8 u2) + 1.6 (u1 - 0.6 u2)]
//       = (1/3) [(0.12, 0) + (1.28, 0)] = (0.4666667, 0)
// (each dz_i is orthogonal to z_i: the loss ignores the rows' lengths).
TYPED_TEST(PairwiseCosineLossLayerTest, TestForwardBackwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype z[] = {3, 4, 4, -3, 0, -2};
  const Dtype label[] = {0, 0, 1};
  Blob<Dtype> bz(3, 2, 1, 1), bl(vector<int>(1, 3)), top;
  std::copy(z, z + 6, bz.mutable_cpu_data());
  std::copy(label, label + 3, bl.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &bz), top_vec(1, &top);
  bottom_vec.push_back(&bl);
  LayerParameter layer_param;
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 1.2, 1e-6);
  top.mutable_cpu_diff()[0] = 1;
  vector<bool> propagate_down(2, true);
  propagate_down[1] = false;
  layer.Backward(top_vec, propagate_down, bottom_vec);
  const Dtype want[] = {-0.0938667, 0.0704, -0.1824, -0.2432, 0.4666667, 0};
  for (int k = 0; k < 6; ++k) {
    EXPECT_NEAR(bz.cpu_diff()[k], want[k], 1e-6) << "element " << k;
  }
}

// The same rows with dissimilar_value 0: residuals r01 = -1, r02 = -0.8,
// r12 = 0.6, L = 2 (1 + 0.64 + 0.36) / 6 = 2/3.
TYPED_TEST(PairwiseCosineLossLayerTest, TestForwardDissimilarValue) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype z[] = {3, 4, 4, -3, 0, -2};
  const Dtype label[] = {0, 0, 1};
  Blob<Dtype> bz(3, 2, 1, 1), bl(vector<int>(1, 3)), top;
  std::copy(z, z + 6, bz.mutable_cpu_data());
  std::copy(label, label + 3, bl.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &bz), top_vec(1, &top);
  bottom_vec.push_back(&bl);
  LayerParameter layer_param;
  layer_param.mutable_pairwise_cosine_loss_param()->set_dissimilar_value(0);
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 2.0 / 3, 1e-6);
}

// The smallest batch, N = 2: z0 = (1, 0), z1 = (1, 1), one label, so
// c = 1/sqrt(2) and L = 2 (1 - 1/sqrt(2))^2 / 2 = 0.0857864.
TYPED_TEST(PairwiseCosineLossLayerTest, TestForwardTwoRows) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype z[] = {1, 0, 1, 1};
  Blob<Dtype> bz(2, 2, 1, 1), bl(vector<int>(1, 2)), top;
  std::copy(z, z + 4, bz.mutable_cpu_data());
  bl.mutable_cpu_data()[0] = bl.mutable_cpu_data()[1] = 7;
  vector<Blob<Dtype>*> bottom_vec(1, &bz), top_vec(1, &top);
  bottom_vec.push_back(&bl);
  LayerParameter layer_param;
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(bottom_vec, top_vec);
  layer.Forward(bottom_vec, top_vec);
  EXPECT_NEAR(top.cpu_data()[0], 0.0857864, 1e-6);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestDefaultsAreDQNs) {
  LayerParameter layer_param;
  EXPECT_FLOAT_EQ(layer_param.pairwise_cosine_loss_param().similar_value(),
      1);
  EXPECT_FLOAT_EQ(
      layer_param.pairwise_cosine_loss_param().dissimilar_value(), -1);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestForwardMatchesLoops) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0],
      this->ReferenceLoss(1, -1), 1e-5);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestForwardMatchesLoopsParams) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_pairwise_cosine_loss_param()->set_similar_value(0.7);
  layer_param.mutable_pairwise_cosine_loss_param()->set_dissimilar_value(
      -0.2);
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const double want = this->ReferenceLoss(0.7, -0.2);
  EXPECT_GT(std::fabs(want - this->ReferenceLoss(1, -1)), 0.01);
  EXPECT_NEAR(this->blob_top_loss_->cpu_data()[0], want, 1e-5);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  EXPECT_GT(this->MinNorm(), 0.3);
  LayerParameter layer_param;
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestGradientParams) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.mutable_pairwise_cosine_loss_param()->set_similar_value(0.7);
  layer_param.mutable_pairwise_cosine_loss_param()->set_dissimilar_value(
      -0.2);
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

// Trailing axes are flattened: a (N x 5 x 1 x 1) blob and its (N x 1 x 5 x 1)
// reshape give one loss and gradient.
TYPED_TEST(PairwiseCosineLossLayerTest, TestTrailingAxesFlattened) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype flat = layer.Forward(this->blob_bottom_vec_,
      this->blob_top_vec_);
  this->blob_z_->Reshape(8, 1, 5, 1);
  layer.Reshape(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype shaped = layer.Forward(this->blob_bottom_vec_,
      this->blob_top_vec_);
  EXPECT_NEAR(flat, shaped, 1e-6);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestLossWeightScalesLoss) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.add_loss_weight(3.5);
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype weighted = layer.Forward(this->blob_bottom_vec_,
      this->blob_top_vec_);
  EXPECT_NEAR(weighted, 3.5 * this->ReferenceLoss(1, -1), 1e-4);
  // Backward scales the gradient by the top diff (the loss weight).
  vector<bool> propagate_down(2, true);
  propagate_down[1] = false;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  vector<Dtype> weighted_diff(this->blob_z_->cpu_diff(),
      this->blob_z_->cpu_diff() + this->blob_z_->count());
  this->blob_top_loss_->mutable_cpu_diff()[0] = 1;
  layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
  Dtype largest = 0;
  for (int k = 0; k < this->blob_z_->count(); ++k) {
    EXPECT_NEAR(weighted_diff[k], 3.5 * this->blob_z_->cpu_diff()[k], 1e-5);
    largest = std::max(largest, Dtype(std::fabs(weighted_diff[k])));
  }
  EXPECT_GT(largest, 0.01);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestGradientLossWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  layer_param.add_loss_weight(3.5);
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(PairwiseCosineLossLayerTest, TestNoForceBackwardToLabels) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  PairwiseCosineLossLayer<Dtype> layer(layer_param);
  EXPECT_TRUE(layer.AllowForceBackward(0));
  EXPECT_FALSE(layer.AllowForceBackward(1));
}

}  // namespace caffe
