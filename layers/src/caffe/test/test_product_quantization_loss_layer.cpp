#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/product_quantization_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class ProductQuantizationLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  ProductQuantizationLossLayerTest() : top_(new Blob<Dtype>()) {
    top_vec_.push_back(top_);
    Caffe::set_random_seed(1701);
  }
  virtual ~ProductQuantizationLossLayerTest() { delete top_; }

  /// A layer parameter with both blobs frozen, as the layer requires.
  LayerParameter Param(int m, int k, int interval, int buffer_size,
      Phase phase) {
    LayerParameter param;
    param.set_phase(phase);
    for (int i = 0; i < 2; ++i) {
      ParamSpec* spec = param.add_param();
      spec->set_lr_mult(0);
      spec->set_decay_mult(0);
    }
    ProductQuantizationLossParameter* p =
        param.mutable_product_quantization_loss_param();
    p->set_num_subspaces(m);
    p->set_num_centroids(k);
    p->set_codebook_update_interval(interval);
    p->set_buffer_size(buffer_size);
    return param;
  }

  void SetBlob(Blob<Dtype>* blob, const vector<Dtype>& values) {
    ASSERT_EQ(blob->count(), values.size());
    std::copy(values.begin(), values.end(), blob->mutable_cpu_data());
  }

  /// Fills `z` (n x d) with uniform values in [lo, hi].
  void Uniform(Blob<Dtype>* z, Dtype lo, Dtype hi) {
    FillerParameter filler_param;
    filler_param.set_min(lo);
    filler_param.set_max(hi);
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(z);
  }

  /// The quantization error of `z` under `codebooks` (M x K x S), by loops.
  Dtype QuantizationError(const Blob<Dtype>& z, const Blob<Dtype>& codebooks) {
    const int n = z.shape(0), dim = z.count(1);
    const int M = codebooks.shape(0), K = codebooks.shape(1);
    const int S = codebooks.shape(2);
    double total = 0;
    for (int i = 0; i < n; ++i) {
      for (int m = 0; m < M; ++m) {
        double best = -1;
        for (int k = 0; k < K; ++k) {
          double d = 0;
          for (int s = 0; s < S; ++s) {
            const double t = z.cpu_data()[i * dim + m * S + s]
                - codebooks.cpu_data()[(m * K + k) * S + s];
            d += t * t;
          }
          if (best < 0 || d < best) { best = d; }
        }
        total += best;
      }
    }
    return total / n;
  }

  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(ProductQuantizationLossLayerTest, TestDtypesAndDevices);

// M = 2 subspaces of 2 values, K = 2 centroids:
//   C_0 = {(0,0), (1,1)},  C_1 = {(1,0), (0,1)}
// z_1 = (0.2, 0.1 | 0.9, 0.3):
//   sub 0: to (0,0) 0.04+0.01 = 0.05, to (1,1) 0.64+0.81 = 1.45 -> h=0, 0.05
//   sub 1: to (1,0) 0.01+0.09 = 0.10, to (0,1) 0.81+0.49 = 1.30 -> h=0, 0.10
// z_2 = (0.7, 0.8 | 0.4, 0.5):
//   sub 0: to (0,0) 0.49+0.64 = 1.13, to (1,1) 0.09+0.04 = 0.13 -> h=1, 0.13
//   sub 1: to (1,0) 0.36+0.25 = 0.61, to (0,1) 0.16+0.25 = 0.41 -> h=1, 0.41
// L = (0.05 + 0.10 + 0.13 + 0.41) / 2 = 0.345
// dL/dz_i = 2/N (z_i - C h_i) = z_i - C h_i:
//   z_1: (0.2, 0.1, 0.9 - 1, 0.3) = (0.2, 0.1, -0.1, 0.3)
//   z_2: (0.7 - 1, 0.8 - 1, 0.4, 0.5 - 1) = (-0.3, -0.2, 0.4, -0.5)
// With loss_weight 3.5 the loss reported by Forward and the gradient scale.
TYPED_TEST(ProductQuantizationLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype z[] = {0.2, 0.1, 0.9, 0.3, 0.7, 0.8, 0.4, 0.5};
  const Dtype want_dz[] = {0.2, 0.1, -0.1, 0.3, -0.3, -0.2, 0.4, -0.5};
  const Dtype books[] = {0, 0, 1, 1, 1, 0, 0, 1};
  for (int weighted = 0; weighted < 2; ++weighted) {
    const Dtype w = weighted ? 3.5 : 1;
    Blob<Dtype> bz(2, 4, 1, 1);
    std::copy(z, z + 8, bz.mutable_cpu_data());
    vector<Blob<Dtype>*> bottom_vec(1, &bz);
    LayerParameter param = this->Param(2, 2, 1000, 10, TEST);
    if (weighted) { param.add_loss_weight(w); }
    ProductQuantizationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec, this->top_vec_);
    ASSERT_EQ(layer.blobs().size(), 2);
    EXPECT_EQ(layer.blobs()[0]->shape_string(), "2 2 2 (8)");
    this->SetBlob(layer.blobs()[0].get(), vector<Dtype>(books, books + 8));
    this->SetBlob(layer.blobs()[1].get(), vector<Dtype>{0, 1});
    const Dtype reported = layer.Forward(bottom_vec, this->top_vec_);
    EXPECT_NEAR(this->top_->cpu_data()[0], 0.345, 1e-6);
    EXPECT_NEAR(reported, w * 0.345, 1e-5);
    layer.Backward(this->top_vec_, vector<bool>(1, true), bottom_vec);
    for (int k = 0; k < 8; ++k) {
      EXPECT_NEAR(bz.cpu_diff()[k], w * want_dz[k], 1e-6) << k;
    }
    // TEST phase: nothing counted, nothing buffered.
    EXPECT_EQ(layer.blobs()[1]->cpu_data()[0], 0);
    EXPECT_EQ(layer.blobs()[1]->cpu_data()[1], 1);
    EXPECT_EQ(layer.buffer_rows(), 0);
  }
}

// One row (0.5, 0.5 | 0.5, 0.5) with the codebooks above is equidistant
// (0.5) from both centroids of each subspace: ties go to k = 0, so
// L = 0.5 + 0.5 = 1 and dL/dz = 2 (z - ((0,0) | (1,0))) = (1, 1, -1, 1).
TYPED_TEST(ProductQuantizationLossLayerTest, TestTiesGoToSmallestK) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bz(1, 4, 1, 1);
  caffe_set(4, Dtype(0.5), bz.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  ProductQuantizationLossLayer<Dtype> layer(this->Param(2, 2, 1000, 10, TEST));
  layer.SetUp(bottom_vec, this->top_vec_);
  this->SetBlob(layer.blobs()[0].get(), vector<Dtype>{0, 0, 1, 1, 1, 0, 0, 1});
  this->SetBlob(layer.blobs()[1].get(), vector<Dtype>{0, 1});
  layer.Forward(bottom_vec, this->top_vec_);
  EXPECT_NEAR(this->top_->cpu_data()[0], 1.0, 1e-6);
  layer.Backward(this->top_vec_, vector<bool>(1, true), bottom_vec);
  const Dtype want[] = {1, 1, -1, 1};
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(bz.cpu_diff()[k], want[k], 1e-6);
  }
}

// Distances are summed as written, (x_0 - c_0)^2 + (x_1 - c_1)^2 + ..., each
// product rounded to double before it is added: never a fused multiply-add
// (which the vectorized assignment would get from GCC under AVX-512 unless
// contraction is off). With z = (1, 1) and the centroids (p, q) and (q, p) the
// two unfused sums are the same two rounded squares added in either order:
// equal, so the tie goes to k = 0. Fused, they round differently; p and q are
// drawn until the fused sums would send the row to k = 1 (1 - p and 1 - q need
// more than 26 bits, so their squares are not exact in double).
// CPU only: the GPU kernel's arithmetic is nvcc's.
TYPED_TEST(ProductQuantizationLossLayerTest, TestTiesWithoutFusedMultiplyAdd) {
  typedef typename TypeParam::Dtype Dtype;
  if (Caffe::mode() != Caffe::CPU) { return; }
  uint64_t state = 12345;
  Dtype p = 0, q = 0;
  bool found = false;
  for (int attempt = 0; attempt < 100000 && !found; ++attempt) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    p = static_cast<Dtype>(std::ldexp(
        1.0 + std::ldexp(static_cast<double>(state >> 40), -24), -12));
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    q = static_cast<Dtype>(std::ldexp(
        1.0 + std::ldexp(static_cast<double>(state >> 40), -24), -13));
    const double ta = 1.0 - static_cast<double>(p);
    const double tb = 1.0 - static_cast<double>(q);
    const double fused0 = std::fma(tb, tb, ta * ta);  // to (p, q)
    const double fused1 = std::fma(ta, ta, tb * tb);  // to (q, p)
    found = fused1 < fused0;
  }
  ASSERT_TRUE(found) << "no (p, q) separates fused from unfused sums";
  Blob<Dtype> bz(1, 2, 1, 1);
  caffe_set(2, Dtype(1), bz.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  ProductQuantizationLossLayer<Dtype> layer(this->Param(1, 2, 1000, 10, TEST));
  layer.SetUp(bottom_vec, this->top_vec_);
  this->SetBlob(layer.blobs()[0].get(), vector<Dtype>{p, q, q, p});
  this->SetBlob(layer.blobs()[1].get(), vector<Dtype>{0, 1});
  layer.Forward(bottom_vec, this->top_vec_);
  layer.Backward(this->top_vec_, vector<bool>(1, true), bottom_vec);
  // dL/dz = 2 (z - c_0): the row went to k = 0.
  EXPECT_EQ(bz.cpu_diff()[0], Dtype(2) * (Dtype(1) - p));
  EXPECT_EQ(bz.cpu_diff()[1], Dtype(2) * (Dtype(1) - q));
}

// Before the first codebook update (state[1] == 0) loss and gradient are 0,
// whatever the codebooks hold; in TRAIN the pass is still counted/buffered.
TYPED_TEST(ProductQuantizationLossLayerTest, TestZeroBeforeFirstUpdate) {
  typedef typename TypeParam::Dtype Dtype;
  for (int train = 0; train < 2; ++train) {
    Blob<Dtype> bz(3, 4, 1, 1);
    this->Uniform(&bz, -1, 1);
    caffe_set(bz.count(), Dtype(7), bz.mutable_cpu_diff());
    vector<Blob<Dtype>*> bottom_vec(1, &bz);
    ProductQuantizationLossLayer<Dtype> layer(
        this->Param(2, 2, 1000, 10, train ? TRAIN : TEST));
    layer.SetUp(bottom_vec, this->top_vec_);
    this->SetBlob(layer.blobs()[0].get(),
        vector<Dtype>{5, 5, 5, 5, 5, 5, 5, 5});
    layer.Forward(bottom_vec, this->top_vec_);
    EXPECT_EQ(this->top_->cpu_data()[0], 0);
    layer.Backward(this->top_vec_, vector<bool>(1, true), bottom_vec);
    for (int k = 0; k < bz.count(); ++k) { EXPECT_EQ(bz.cpu_diff()[k], 0); }
    EXPECT_EQ(layer.blobs()[1]->cpu_data()[0], train ? 1 : 0);
    EXPECT_EQ(layer.buffer_rows(), train ? 3 : 0);
  }
}

// The gradient (of z, and of the codebooks as the checker also perturbs
// them) with a fixed codebook; rows sit near one centroid, far from the
// Voronoi boundaries. TEST phase: no codebook update during the checker.
TYPED_TEST(ProductQuantizationLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  const int M = 2, K = 3, S = 3, N = 8;
  // Centroids per subspace at pairwise distance >= ~1.4.
  const Dtype books[] = {1, 0, 0, 0, 1, 0, 0, 0, 1,
                         -1, 0, 1, 0, -1, 0, 0.5, 0.5, -0.5};
  for (int weighted = 0; weighted < 2; ++weighted) {
    Blob<Dtype> bz(N, M * S, 1, 1);
    this->Uniform(&bz, -0.2, 0.2);  // noise around the chosen centroids
    Dtype* z = bz.mutable_cpu_data();
    for (int i = 0; i < N; ++i) {
      for (int m = 0; m < M; ++m) {
        const int k = (i + 2 * m) % K;
        for (int s = 0; s < S; ++s) {
          z[i * M * S + m * S + s] += books[(m * K + k) * S + s];
        }
      }
    }
    vector<Blob<Dtype>*> bottom_vec(1, &bz);
    LayerParameter param = this->Param(M, K, 1000, 10, TEST);
    if (weighted) { param.add_loss_weight(3.5); }
    ProductQuantizationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec, this->top_vec_);
    this->SetBlob(layer.blobs()[0].get(), vector<Dtype>(books, books + 18));
    this->SetBlob(layer.blobs()[1].get(), vector<Dtype>{0, 1});
    GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
    checker.CheckGradientExhaustive(&layer, bottom_vec, this->top_vec_, 0);
  }
}

// The layer in TRAIN with a huge interval behaves as in TEST (no update
// fires while the checker runs many forward passes).
TYPED_TEST(ProductQuantizationLossLayerTest, TestGradientTrainLargeInterval) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bz(4, 4, 1, 1);
  this->Uniform(&bz, -1, 1);
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  ProductQuantizationLossLayer<Dtype> layer(
      this->Param(2, 1, 1000000, 10, TRAIN));
  layer.SetUp(bottom_vec, this->top_vec_);
  // K = 1: no Voronoi boundary at all.
  this->SetBlob(layer.blobs()[0].get(), vector<Dtype>{0.1, -0.2, 0.3, 0.4});
  this->SetBlob(layer.blobs()[1].get(), vector<Dtype>{0, 1});
  GradientChecker<Dtype> checker(1e-3, 1e-3, 1701);
  checker.CheckGradientExhaustive(&layer, bottom_vec, this->top_vec_, 0);
  // No update fired (the checker's +-step on the state leaves rounding dust).
  EXPECT_NEAR(layer.blobs()[1]->cpu_data()[1], 1, 1e-2);
  EXPECT_GT(layer.blobs()[1]->cpu_data()[0], 10);  // but passes counted
}

// k-means on two planted, well separated clusters per subspace: the update
// (interval 1: the buffer is exactly the batch) recovers the centroids and
// the loss it reports is the noise's.
TYPED_TEST(ProductQuantizationLossLayerTest, TestKMeansFindsPlantedCentroids) {
  typedef typename TypeParam::Dtype Dtype;
  const int M = 2, K = 2, S = 2, N = 40;
  const Dtype planted[] = {-1, 0.5, 1, -0.5, 0.3, 0.9, -0.6, -0.8};
  for (int seed = 0; seed < 4; ++seed) {
    Blob<Dtype> bz(N, M * S, 1, 1);
    this->Uniform(&bz, -0.05, 0.05);
    Dtype* z = bz.mutable_cpu_data();
    for (int i = 0; i < N; ++i) {
      for (int m = 0; m < M; ++m) {
        const int k = caffe_rng_rand() % K;
        for (int s = 0; s < S; ++s) {
          z[i * M * S + m * S + s] += planted[(m * K + k) * S + s];
        }
      }
    }
    vector<Blob<Dtype>*> bottom_vec(1, &bz);
    LayerParameter param = this->Param(M, K, 1, N, TRAIN);
    param.mutable_product_quantization_loss_param()->set_seed(seed);
    ProductQuantizationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec, this->top_vec_);
    Blob<Dtype> zero_books(M, K, S, 1);
    caffe_set(zero_books.count(), Dtype(0), zero_books.mutable_cpu_data());
    const Dtype before = this->QuantizationError(bz, zero_books);
    layer.Forward(bottom_vec, this->top_vec_);
    EXPECT_EQ(layer.blobs()[1]->cpu_data()[1], 1);
    const Blob<Dtype>& books = *layer.blobs()[0];
    const Dtype after = this->top_->cpu_data()[0];
    EXPECT_NEAR(after, this->QuantizationError(bz, books), 1e-5);
    EXPECT_LT(after, 4 * 0.05 * 0.05 / 3 * 1.5);  // ~ the uniform noise
    EXPECT_LT(after, before / 50);
    for (int m = 0; m < M; ++m) {
      for (int k = 0; k < K; ++k) {  // some learned centroid is planted k
        Dtype nearest = 1e9;
        for (int j = 0; j < K; ++j) {
          Dtype d = 0;
          for (int s = 0; s < S; ++s) {
            d = std::max(d, std::fabs(books.cpu_data()[(m * K + j) * S + s]
                - planted[(m * K + k) * S + s]));
          }
          nearest = std::min(nearest, d);
        }
        EXPECT_LT(nearest, 0.03) << "seed " << seed << " m " << m << " k " << k;
      }
    }
  }
}

// Lloyd's iterations never increase the quantization error of the data
// they run on: more kmeans_iterations (same seed, same first rows) give an
// error no larger, and on unclustered data strictly smaller somewhere.
TYPED_TEST(ProductQuantizationLossLayerTest, TestKMeansLowersError) {
  typedef typename TypeParam::Dtype Dtype;
  const int M = 2, K = 4, N = 60;
  Blob<Dtype> bz(N, 6, 1, 1);
  this->Uniform(&bz, -1, 1);
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  const int iterations[] = {1, 2, 3, 5, 10, 30};
  vector<Dtype> errors;
  for (int t = 0; t < 6; ++t) {
    LayerParameter param = this->Param(M, K, 1, N, TRAIN);
    param.mutable_product_quantization_loss_param()->set_kmeans_iterations(
        iterations[t]);
    ProductQuantizationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec, this->top_vec_);
    layer.Forward(bottom_vec, this->top_vec_);
    errors.push_back(this->top_->cpu_data()[0]);
    if (t > 0) { EXPECT_LE(errors[t], errors[t - 1] + 1e-6) << t; }
  }
  EXPECT_LT(errors.back(), errors.front() - 1e-3);
}

// An empty cluster at the first update takes the row farthest from its
// centroid: 9 equal rows and one outlier always yield both as centroids
// (without the rule, two equal starting rows would leave one centroid at a
// duplicate and the outlier unrepresented).
TYPED_TEST(ProductQuantizationLossLayerTest, TestEmptyClusterTakesFarthestRow) {
  typedef typename TypeParam::Dtype Dtype;
  for (int seed = 0; seed < 5; ++seed) {
    Blob<Dtype> bz(10, 2, 1, 1);
    caffe_set(bz.count(), Dtype(0.25), bz.mutable_cpu_data());
    bz.mutable_cpu_data()[2 * 6] = 4;
    bz.mutable_cpu_data()[2 * 6 + 1] = -3;
    vector<Blob<Dtype>*> bottom_vec(1, &bz);
    LayerParameter param = this->Param(1, 2, 1, 10, TRAIN);
    param.mutable_product_quantization_loss_param()->set_seed(seed);
    ProductQuantizationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec, this->top_vec_);
    layer.Forward(bottom_vec, this->top_vec_);
    const Dtype* c = layer.blobs()[0]->cpu_data();
    const bool outlier_first = c[0] == 4;
    const Dtype* out = outlier_first ? c : c + 2;
    const Dtype* in = outlier_first ? c + 2 : c;
    EXPECT_EQ(out[0], 4) << seed;
    EXPECT_EQ(out[1], -3) << seed;
    EXPECT_EQ(in[0], Dtype(0.25)) << seed;
    EXPECT_EQ(in[1], Dtype(0.25)) << seed;
    EXPECT_EQ(this->top_->cpu_data()[0], 0);
  }
}

// The update fires exactly at passes interval, 2 interval, ...; between
// updates the codebooks do not move; the update precedes the loss of its
// pass (the loss reported at pass 3 is that of the new codebooks).
TYPED_TEST(ProductQuantizationLossLayerTest, TestSchedule) {
  typedef typename TypeParam::Dtype Dtype;
  const int interval = 3;
  Blob<Dtype> bz(4, 4, 1, 1);
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  ProductQuantizationLossLayer<Dtype> layer(
      this->Param(2, 2, interval, 6, TRAIN));
  layer.SetUp(bottom_vec, this->top_vec_);
  ProductQuantizationLossLayer<Dtype> test_layer(
      this->Param(2, 2, interval, 6, TEST));
  test_layer.SetUp(bottom_vec, this->top_vec_);
  vector<Dtype> last_books(8, 0);
  for (int pass = 1; pass <= 7; ++pass) {
    this->Uniform(&bz, -1, 1);
    layer.Forward(bottom_vec, this->top_vec_);
    const Dtype loss = this->top_->cpu_data()[0];
    const Dtype* state = layer.blobs()[1]->cpu_data();
    EXPECT_EQ(state[0], pass);
    EXPECT_EQ(state[1], pass / interval);
    EXPECT_EQ(layer.buffer_rows(), std::min(4 * pass, 6));
    const Dtype* books = layer.blobs()[0]->cpu_data();
    const bool moved = !std::equal(books, books + 8, last_books.begin());
    EXPECT_EQ(moved, pass % interval == 0) << "pass " << pass;
    last_books.assign(books, books + 8);
    if (pass < interval) {
      EXPECT_EQ(loss, 0);
    } else {
      EXPECT_GT(loss, 0);
      // The same codebooks in a TEST layer give the same loss on this batch.
      test_layer.blobs()[0]->CopyFrom(*layer.blobs()[0]);
      test_layer.blobs()[1]->CopyFrom(*layer.blobs()[1]);
      test_layer.Forward(bottom_vec, this->top_vec_);
      EXPECT_NEAR(this->top_->cpu_data()[0], loss, 1e-6);
      EXPECT_EQ(test_layer.blobs()[1]->cpu_data()[0], pass);  // not counted
    }
  }
}

// The seed picks the first update's starting rows: one seed, one result;
// with a single Lloyd iteration on unclustered data, another seed differs.
TYPED_TEST(ProductQuantizationLossLayerTest, TestSeed) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bz(30, 4, 1, 1);
  this->Uniform(&bz, -1, 1);
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  vector<vector<Dtype> > results;
  const int seeds[] = {5, 5, 6};
  for (int t = 0; t < 3; ++t) {
    LayerParameter param = this->Param(2, 3, 1, 30, TRAIN);
    param.mutable_product_quantization_loss_param()->set_seed(seeds[t]);
    param.mutable_product_quantization_loss_param()->set_kmeans_iterations(1);
    ProductQuantizationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec, this->top_vec_);
    layer.Forward(bottom_vec, this->top_vec_);
    const Dtype* c = layer.blobs()[0]->cpu_data();
    results.push_back(vector<Dtype>(c, c + layer.blobs()[0]->count()));
  }
  EXPECT_TRUE(results[0] == results[1]);
  EXPECT_FALSE(results[0] == results[2]);
}

// The buffer keeps the most recent buffer_size rows: after 3 batches of 4
// rows with buffer_size 5 the update sees rows 8..11 of the stream and the
// last row of batch 2; with K = 5 every one of these rows is a centroid.
TYPED_TEST(ProductQuantizationLossLayerTest, TestBufferKeepsRecentRows) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bz(4, 1, 1, 1);
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  ProductQuantizationLossLayer<Dtype> layer(this->Param(1, 5, 3, 5, TRAIN));
  layer.SetUp(bottom_vec, this->top_vec_);
  for (int pass = 0; pass < 3; ++pass) {
    for (int i = 0; i < 4; ++i) { bz.mutable_cpu_data()[i] = 4 * pass + i; }
    layer.Forward(bottom_vec, this->top_vec_);
  }
  EXPECT_EQ(layer.buffer_rows(), 5);
  vector<Dtype> c(layer.blobs()[0]->cpu_data(),
      layer.blobs()[0]->cpu_data() + 5);
  std::sort(c.begin(), c.end());
  for (int k = 0; k < 5; ++k) { EXPECT_EQ(c[k], 7 + k); }
}

// The blobs survive ToProto / a new layer from the proto (a snapshot and a
// resumed run): the resumed layer continues the schedule, and as its buffer
// refills with the same rows it reaches the same codebooks.
TYPED_TEST(ProductQuantizationLossLayerTest, TestStateRoundTrip) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bz(4, 4, 1, 1);
  vector<Blob<Dtype>*> bottom_vec(1, &bz);
  // buffer_size 8: at pass 6 the buffer holds exactly passes 5 and 6.
  const LayerParameter param = this->Param(2, 2, 3, 8, TRAIN);
  ProductQuantizationLossLayer<Dtype> layer(param);
  layer.SetUp(bottom_vec, this->top_vec_);
  for (int pass = 1; pass <= 4; ++pass) {
    this->Uniform(&bz, -1, 1);
    layer.Forward(bottom_vec, this->top_vec_);
  }
  LayerParameter saved(param);
  layer.ToProto(&saved);
  ASSERT_EQ(saved.blobs_size(), 2);
  ProductQuantizationLossLayer<Dtype> resumed(saved);
  resumed.SetUp(bottom_vec, this->top_vec_);
  EXPECT_EQ(resumed.buffer_rows(), 0);
  for (int b = 0; b < 2; ++b) {
    const Blob<Dtype>& x = *layer.blobs()[b];
    const Blob<Dtype>& y = *resumed.blobs()[b];
    ASSERT_TRUE(x.shape() == y.shape());
    for (int k = 0; k < x.count(); ++k) {
      EXPECT_EQ(x.cpu_data()[k], y.cpu_data()[k]);
    }
  }
  EXPECT_EQ(resumed.blobs()[1]->cpu_data()[0], 4);
  EXPECT_EQ(resumed.blobs()[1]->cpu_data()[1], 1);
  for (int pass = 5; pass <= 6; ++pass) {
    this->Uniform(&bz, -1, 1);
    layer.Forward(bottom_vec, this->top_vec_);
    const Dtype loss = this->top_->cpu_data()[0];
    resumed.Forward(bottom_vec, this->top_vec_);
    EXPECT_NEAR(this->top_->cpu_data()[0], loss, 1e-6);
  }
  EXPECT_EQ(resumed.blobs()[1]->cpu_data()[0], 6);
  EXPECT_EQ(resumed.blobs()[1]->cpu_data()[1], 2);
  for (int k = 0; k < 8; ++k) {
    EXPECT_EQ(resumed.blobs()[0]->cpu_data()[k],
        layer.blobs()[0]->cpu_data()[k]);
  }
}

TYPED_TEST(ProductQuantizationLossLayerTest, TestDefaults) {
  LayerParameter param;
  const ProductQuantizationLossParameter& p =
      param.product_quantization_loss_param();
  EXPECT_EQ(p.num_centroids(), 256u);
  EXPECT_EQ(p.buffer_size(), 10000u);
  EXPECT_EQ(p.kmeans_iterations(), 20u);
  EXPECT_EQ(p.seed(), 0u);
  EXPECT_FALSE(p.has_num_subspaces());
  EXPECT_FALSE(p.has_codebook_update_interval());
}

}  // namespace caffe
