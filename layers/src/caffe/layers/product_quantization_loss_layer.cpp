#include <stdint.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <vector>

#include "caffe/layers/product_quantization_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

namespace {

/// splitmix64 (Steele, Lea and Flood, 2014), spelled out so that
/// tqn_layers.dqn.splitmix64 reproduces it in numpy.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

/// Fisher-Yates: p = (0, .., n-1); for j = n-1 down to 1 swap p[j] and
/// p[next() % (j + 1)].
vector<int> SeededPermutation(int n, SplitMix64* rng) {
  vector<int> p(n);
  for (int j = 0; j < n; ++j) { p[j] = j; }
  for (int j = n - 1; j >= 1; --j) {
    const int r = static_cast<int>(rng->Next() % static_cast<uint64_t>(j + 1));
    std::swap(p[j], p[r]);
  }
  return p;
}

/// Squared distances from one sub-vector x (S values) to K centroids stored
/// transposed, cent_t[s * K + k]: d[k] = sum over s = 0 .. S-1, in that order,
/// of (x[s] - c_k[s])^2, each sum in double precision. Every d[k] goes through
/// exactly the operations of the scalar loop over s (a subtraction, a
/// multiplication, an addition, in s order; no reassociation and no fused
/// multiply-add: GCC would fuse t * t + d[k] under AVX-512, so contraction is
/// switched off for this function), so the results are bitwise those of the
/// scalar loop; the loop over k is what the compiler vectorizes. Returns the
/// nearest centroid (ties: the smallest k) and its
/// distance in *best_d.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default"),
    optimize("fp-contract=off")))
#elif defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))  // e.g. aarch64: FMA by default
#endif
int NearestCentroid(const double* x, const double* cent_t, int K, int S,
    double* d, double* best_d) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  for (int k = 0; k < K; ++k) { d[k] = 0; }
  for (int s = 0; s < S; ++s) {
    const double xs = x[s];
    const double* c = cent_t + static_cast<size_t>(s) * K;
    for (int k = 0; k < K; ++k) {
      const double t = xs - c[k];
      d[k] += t * t;
    }
  }
  int best = 0;
  for (int k = 1; k < K; ++k) {
    if (d[k] < d[best]) { best = k; }
  }
  *best_d = d[best];
  return best;
}

/// cent_t[s * K + k] = cent[k * S + s] (K x S to S x K), in double.
template <typename T>
void TransposeCentroids(const T* cent, int K, int S, double* cent_t) {
  for (int k = 0; k < K; ++k) {
    for (int s = 0; s < S; ++s) {
      cent_t[static_cast<size_t>(s) * K + k] =
          static_cast<double>(cent[k * S + s]);
    }
  }
}

}  // namespace

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const string& name = this->layer_param_.name();
  const ProductQuantizationLossParameter& p =
      this->layer_param_.product_quantization_loss_param();
  CHECK(p.has_num_subspaces()) << "Layer '" << name
      << "': product_quantization_loss_param.num_subspaces (M) is required";
  CHECK(p.num_subspaces() >= 1) << "Layer '" << name
      << "': product_quantization_loss_param.num_subspaces is "
      << p.num_subspaces() << "; it must be >= 1";
  CHECK(p.num_centroids() >= 1 && p.num_centroids() <= (1u << 24))
      << "Layer '" << name << "': product_quantization_loss_param."
      << "num_centroids is " << p.num_centroids()
      << "; it must be between 1 and 16777216";
  CHECK(p.has_codebook_update_interval()) << "Layer '" << name
      << "': product_quantization_loss_param.codebook_update_interval is "
      << "required (forward passes between codebook updates; DQN: 2 epochs)";
  CHECK(p.codebook_update_interval() > 0 &&
      p.codebook_update_interval() <= static_cast<uint32_t>(INT_MAX))
      << "Layer '" << name << "': product_quantization_loss_param."
      << "codebook_update_interval is " << p.codebook_update_interval()
      << "; it must be > 0";
  CHECK(p.buffer_size() >= p.num_centroids() &&
      p.buffer_size() <= static_cast<uint32_t>(INT_MAX)) << "Layer '" << name
      << "': product_quantization_loss_param.buffer_size is "
      << p.buffer_size() << "; it must be >= num_centroids ("
      << p.num_centroids() << "): k-means needs at least K rows";
  CHECK(p.kmeans_iterations() >= 1 &&
      p.kmeans_iterations() <= static_cast<uint32_t>(INT_MAX))
      << "Layer '" << name << "': product_quantization_loss_param."
      << "kmeans_iterations is " << p.kmeans_iterations()
      << "; it must be >= 1";
  num_subspaces_ = p.num_subspaces();
  num_centroids_ = p.num_centroids();
  interval_ = p.codebook_update_interval();
  buffer_size_ = p.buffer_size();
  iterations_ = p.kmeans_iterations();
  seed_ = p.seed();
  CHECK_GE(bottom[0]->num_axes(), 1) << "Layer '" << name
      << "': the bottom needs a batch axis (N x D)";
  dim_ = bottom[0]->count(1);
  CHECK_GT(dim_, 0) << "Layer '" << name << "': the bottom's rows are empty "
      << "(shape " << bottom[0]->shape_string() << "); each row needs D > 0 "
      << "values";
  CHECK(dim_ % num_subspaces_ == 0) << "Layer '" << name
      << "': product_quantization_loss_param.num_subspaces is "
      << num_subspaces_ << " but the bottom's rows have D = " << dim_
      << " values; M must divide D";

  // The codebooks and the state are learned by k-means and counted by the
  // layer: the solver must leave them alone.
  if (this->layer_param_.param_size() < 2) {
    LOG(FATAL) << "Layer '" << name << "': its two blobs (codebooks, state) "
        << "are updated by k-means, never by the solver: add "
        << "`param { lr_mult: 0 decay_mult: 0 }` twice to the layer";
  }
  for (int i = 0; i < 2; ++i) {
    const ParamSpec& spec = this->layer_param_.param(i);
    CHECK(spec.lr_mult() == 0 && spec.decay_mult() == 0) << "Layer '" << name
        << "': param " << i << " has lr_mult " << spec.lr_mult()
        << " and decay_mult " << spec.decay_mult() << "; both blobs "
        << "(codebooks, state) are updated by k-means, never by the solver: "
        << "give each `param { lr_mult: 0 decay_mult: 0 }`";
  }

  const int sub = dim_ / num_subspaces_;
  vector<int> codebook_shape(3);
  codebook_shape[0] = num_subspaces_;
  codebook_shape[1] = num_centroids_;
  codebook_shape[2] = sub;
  const vector<int> state_shape(1, 2);
  if (this->blobs_.size() > 0) {
    CHECK_EQ(this->blobs_.size(), 2) << "Layer '" << name
        << "': expected 2 blobs (codebooks, state)";
    CHECK(this->blobs_[0]->shape() == codebook_shape) << "Layer '" << name
        << "': the codebook blob has shape "
        << this->blobs_[0]->shape_string() << "; expected M x K x D/M = "
        << num_subspaces_ << " x " << num_centroids_ << " x " << sub;
    CHECK(this->blobs_[1]->shape() == state_shape) << "Layer '" << name
        << "': the state blob has shape " << this->blobs_[1]->shape_string()
        << "; expected 2";
  } else {
    this->blobs_.resize(2);
    this->blobs_[0].reset(new Blob<Dtype>(codebook_shape));
    this->blobs_[1].reset(new Blob<Dtype>(state_shape));
    caffe_set(this->blobs_[0]->count(), Dtype(0),
        this->blobs_[0]->mutable_cpu_data());
    caffe_set(this->blobs_[1]->count(), Dtype(0),
        this->blobs_[1]->mutable_cpu_data());
  }
  // A Net sets these from lr_mult (0: false) or force_backward (true);
  // standalone, the codebooks' gradient is computed (see Backward).
  this->param_propagate_down_.resize(this->blobs_.size(), true);
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const string& name = this->layer_param_.name();
  CHECK_GE(bottom[0]->num_axes(), 1) << "Layer '" << name
      << "': the bottom needs a batch axis (N x D)";
  CHECK_GT(bottom[0]->shape(0), 0) << "Layer '" << name
      << "': the batch is empty";
  CHECK_EQ(bottom[0]->count(1), dim_) << "Layer '" << name
      << "': the bottom's rows changed from D = " << dim_ << " to "
      << bottom[0]->count(1) << " values (shape " << bottom[0]->shape_string()
      << "); the codebooks are M x K x D/M";
  vector<int> loss_shape(0);  // a scalar, as in LossLayer
  top[0]->Reshape(loss_shape);
  vector<int> per_code(2);
  per_code[0] = bottom[0]->shape(0);
  per_code[1] = num_subspaces_;
  codes_.Reshape(per_code);
  dist_.Reshape(per_code);
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::CheckFinite(
    const Blob<Dtype>& bottom) const {
  const Dtype* z = bottom.cpu_data();
  const int count = bottom.count();
  for (int k = 0; k < count; ++k) {
    if (!std::isfinite(static_cast<double>(z[k]))) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name()
          << "': the z bottom holds " << z[k] << " at row " << k / dim_
          << ", column " << k % dim_ << "; the net upstream diverged or the"
          << " data holds non-finite values (lower the learning rate or"
          << " check the input)";
    }
  }
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::ReadState(int64_t* passes,
    int64_t* updates) const {
  const Dtype* s = this->blobs_[1]->cpu_data();
  const double v0 = s[0], v1 = s[1];
  CHECK(std::isfinite(v0) && std::isfinite(v1) && std::floor(v0 + 0.5) >= 0
      && std::floor(v1 + 0.5) >= 0 && v0 < 9e18 && v1 < 9e18)
      << "Layer '" << this->layer_param_.name() << "': the state blob holds ("
      << v0 << ", " << v1 << "); it must hold whole numbers >= 0 (forward "
      << "passes, codebook updates): was it changed by the solver? Give both "
      << "blobs `param { lr_mult: 0 decay_mult: 0 }`";
  *passes = static_cast<int64_t>(std::floor(v0 + 0.5));
  *updates = static_cast<int64_t>(std::floor(v1 + 0.5));
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::TrainStep(const Blob<Dtype>& bottom) {
  int64_t passes, updates;
  ReadState(&passes, &updates);
  const int n = bottom.shape(0);
  const Dtype* z = bottom.cpu_data();
  for (int i = 0; i < n; ++i) {
    const size_t end = static_cast<size_t>(buffer_next_ + 1) * dim_;
    if (buffer_.size() < end) { buffer_.resize(end); }  // grows until full
    std::copy(z + static_cast<size_t>(i) * dim_,
        z + static_cast<size_t>(i + 1) * dim_,
        buffer_.begin() + static_cast<size_t>(buffer_next_) * dim_);
    buffer_next_ = (buffer_next_ + 1) % buffer_size_;
    buffer_rows_ = std::min(buffer_rows_ + 1, buffer_size_);
  }
  ++passes;
  const int64_t exact = int64_t(1) << std::min(
      std::numeric_limits<Dtype>::digits, 62);
  CHECK_LT(passes, exact) << "Layer '" << this->layer_param_.name()
      << "': the forward pass count no longer fits the state blob exactly";
  Dtype* state = this->blobs_[1]->mutable_cpu_data();
  state[0] = static_cast<Dtype>(passes);
  if (passes % interval_ == 0) {
    CHECK_GE(buffer_rows_, num_centroids_) << "Layer '"
        << this->layer_param_.name() << "': a codebook update is due at "
        << "forward pass " << passes << " but the buffer holds only "
        << buffer_rows_ << " rows, fewer than product_quantization_loss_param"
        << ".num_centroids (" << num_centroids_ << "); raise "
        << "codebook_update_interval or lower num_centroids";
    UpdateCodebooks();
    ++updates;
    state[1] = static_cast<Dtype>(updates);
  }
  have_codebooks_ = updates > 0;
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::UpdateCodebooks() {
  int64_t passes, updates;
  ReadState(&passes, &updates);
  const bool first = updates == 0;
  const int M = num_subspaces_, K = num_centroids_, S = dim_ / M;
  const int n = buffer_rows_;
  // Chronological row r (oldest first) of the ring buffer.
  const int start = buffer_rows_ < buffer_size_ ? 0 : buffer_next_;
  vector<const Dtype*> rows(n);
  for (int r = 0; r < n; ++r) {
    rows[r] = &buffer_[static_cast<size_t>((start + r) % buffer_size_) * dim_];
  }
  SplitMix64 rng(seed_);
  Dtype* codebooks = this->blobs_[0]->mutable_cpu_data();
  vector<double> cent(static_cast<size_t>(K) * S), sum(cent.size());
  vector<double> cent_t(cent.size()), xd(S), dk(K);
  vector<int> count(K), assign(n);
  vector<double> dist(n);
  vector<char> taken(n);
  for (int m = 0; m < M; ++m) {
    Dtype* book = codebooks + static_cast<size_t>(m) * K * S;
    if (first) {
      const vector<int> perm = SeededPermutation(n, &rng);
      for (int k = 0; k < K; ++k) {
        const Dtype* x = rows[perm[static_cast<int64_t>(k) * n / K]] + m * S;
        for (int s = 0; s < S; ++s) { cent[k * S + s] = x[s]; }
      }
    } else {
      for (int j = 0; j < K * S; ++j) { cent[j] = book[j]; }
    }
    std::fill(assign.begin(), assign.end(), -1);
    bool relocated = false;
    for (int it = 0; it < iterations_; ++it) {
      // Assignment step (ties: the smallest k).
      bool changed = false;
      TransposeCentroids(&cent[0], K, S, &cent_t[0]);
      for (int r = 0; r < n; ++r) {
        const Dtype* x = rows[r] + m * S;
        for (int s = 0; s < S; ++s) { xd[s] = static_cast<double>(x[s]); }
        double best_d;
        const int best = NearestCentroid(&xd[0], &cent_t[0], K, S, &dk[0],
            &best_d);
        changed |= assign[r] != best;
        assign[r] = best;
        dist[r] = best_d;
      }
      // The centroids are already the means of these assignments.
      if (!changed && !relocated) { break; }
      // Update step: each centroid moves to the mean of its rows.
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(count.begin(), count.end(), 0);
      for (int r = 0; r < n; ++r) {
        const Dtype* x = rows[r] + m * S;
        const int k = assign[r];
        ++count[k];
        for (int s = 0; s < S; ++s) { sum[k * S + s] += x[s]; }
      }
      relocated = false;
      std::fill(taken.begin(), taken.end(), 0);
      for (int k = 0; k < K; ++k) {
        if (count[k] > 0) {
          for (int s = 0; s < S; ++s) {
            cent[k * S + s] = sum[k * S + s] / count[k];
          }
        } else if (first) {
          // Empty at the first update: take the row farthest from its
          // centroid (ties: the oldest), each empty cluster a different one.
          int far = -1;
          for (int r = 0; r < n; ++r) {
            if (!taken[r] && (far < 0 || dist[r] > dist[far])) { far = r; }
          }
          taken[far] = 1;
          const Dtype* x = rows[far] + m * S;
          for (int s = 0; s < S; ++s) { cent[k * S + s] = x[s]; }
          relocated = true;
        }  // else: an empty cluster keeps its centroid
      }
    }
    for (int j = 0; j < K * S; ++j) { book[j] = static_cast<Dtype>(cent[j]); }
  }
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckFinite(*bottom[0]);
  if (this->phase_ == TRAIN) {
    TrainStep(*bottom[0]);
  } else {
    int64_t passes, updates;
    ReadState(&passes, &updates);
    have_codebooks_ = updates > 0;
  }
  if (!have_codebooks_) {
    top[0]->mutable_cpu_data()[0] = 0;
    return;
  }
  const int n = bottom[0]->shape(0);
  const int M = num_subspaces_, K = num_centroids_, S = dim_ / M;
  const Dtype* z = bottom[0]->cpu_data();
  const Dtype* codebooks = this->blobs_[0]->cpu_data();
  Dtype* codes = codes_.mutable_cpu_data();
  // Per subspace (its codebook transposed once), every row's nearest centroid;
  // the loss sums rows in the order (i, m), as written in the header.
  vector<double> cent_t(static_cast<size_t>(K) * S), xd(S), dk(K);
  vector<double> best_ds(static_cast<size_t>(n) * M);
  for (int m = 0; m < M; ++m) {
    TransposeCentroids(codebooks + static_cast<size_t>(m) * K * S, K, S,
        &cent_t[0]);
    for (int i = 0; i < n; ++i) {
      const Dtype* x = z + static_cast<size_t>(i) * dim_ + m * S;
      for (int s = 0; s < S; ++s) { xd[s] = static_cast<double>(x[s]); }
      const int best = NearestCentroid(&xd[0], &cent_t[0], K, S, &dk[0],
          &best_ds[static_cast<size_t>(i) * M + m]);
      codes[i * M + m] = static_cast<Dtype>(best);
    }
  }
  double loss = 0;
  for (size_t j = 0; j < best_ds.size(); ++j) { loss += best_ds[j]; }
  top[0]->mutable_cpu_data()[0] = static_cast<Dtype>(loss / n);
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  const int n = bottom[0]->shape(0);
  const int M = num_subspaces_, K = num_centroids_, S = dim_ / M;
  const Dtype scale = top[0]->cpu_diff()[0] * Dtype(2) / n;
  const bool codebook_grad = this->param_propagate_down(0);
  if (propagate_down[0] && !have_codebooks_) {
    caffe_set(bottom[0]->count(), Dtype(0), bottom[0]->mutable_cpu_diff());
  }
  if (!have_codebooks_ || (!propagate_down[0] && !codebook_grad)) { return; }
  const Dtype* z = bottom[0]->cpu_data();
  const Dtype* codebooks = this->blobs_[0]->cpu_data();
  const Dtype* codes = codes_.cpu_data();
  Dtype* dz = propagate_down[0] ? bottom[0]->mutable_cpu_diff() : NULL;
  // Param diffs accumulate, as in Caffe's other layers.
  Dtype* dc = codebook_grad ? this->blobs_[0]->mutable_cpu_diff() : NULL;
  for (int i = 0; i < n; ++i) {
    for (int m = 0; m < M; ++m) {
      const int k = static_cast<int>(codes[i * M + m]);
      const size_t zi = static_cast<size_t>(i) * dim_ + m * S;
      const size_t ci = (static_cast<size_t>(m) * K + k) * S;
      for (int s = 0; s < S; ++s) {
        const Dtype g = scale * (z[zi + s] - codebooks[ci + s]);
        if (dz) { dz[zi + s] = g; }
        if (dc) { dc[ci + s] -= g; }
      }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(ProductQuantizationLossLayer);
#endif

INSTANTIATE_CLASS(ProductQuantizationLossLayer);
REGISTER_LAYER_CLASS(ProductQuantizationLoss);

}  // namespace caffe
