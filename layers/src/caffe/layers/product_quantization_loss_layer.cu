#include <cmath>
#include <vector>

#include "caffe/layers/product_quantization_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per (row i, subspace m): the nearest centroid (ties: the
// smallest k) and its squared distance.
template <typename Dtype>
__global__ void PQAssign(const int count, const int num_subspaces,
    const int num_centroids, const int sub, const Dtype* z,
    const Dtype* codebooks, Dtype* codes, Dtype* dist) {
  CUDA_KERNEL_LOOP(index, count) {
    const int m = index % num_subspaces;
    const Dtype* x = z + index * sub;  // row i, columns m * sub ..
    const Dtype* book = codebooks + m * num_centroids * sub;
    int best = 0;
    Dtype best_d = 0;
    for (int k = 0; k < num_centroids; ++k) {
      Dtype d = 0;
      for (int s = 0; s < sub; ++s) {
        const Dtype t = x[s] - book[k * sub + s];
        d += t * t;
      }
      if (k == 0 || d < best_d) {
        best = k;
        best_d = d;
      }
    }
    codes[index] = best;
    dist[index] = best_d;
  }
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  // The ring buffer and k-means live on the host: a TRAIN pass copies the
  // batch to the CPU (bottom[0]->cpu_data()).
  if (this->phase_ == TRAIN) {
    CheckFinite(*bottom[0]);
    TrainStep(*bottom[0]);
  } else {
    int64_t passes, updates;
    ReadState(&passes, &updates);
    have_codebooks_ = updates > 0;
  }
  if (!have_codebooks_) {
    if (this->phase_ != TRAIN) { CheckFinite(*bottom[0]); }
    top[0]->mutable_cpu_data()[0] = 0;
    return;
  }
  const int n = bottom[0]->shape(0);
  const int count = n * num_subspaces_;
  // NOLINT_NEXT_LINE(whitespace/operators)
  PQAssign<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, num_subspaces_, num_centroids_, dim_ / num_subspaces_,
      bottom[0]->gpu_data(), this->blobs_[0]->gpu_data(),
      codes_.mutable_gpu_data(), dist_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype sum;
  caffe_gpu_asum(count, dist_.gpu_data(), &sum);  // every term is >= 0
  if (!std::isfinite(static_cast<double>(sum))) {
    CheckFinite(*bottom[0]);
  }
  top[0]->mutable_cpu_data()[0] = sum / n;
}

// One thread per element (i, j) of z: scale (z_ij - C_m[h_im]_s).
template <typename Dtype>
__global__ void PQBackwardBottom(const int count, const int dim,
    const int num_subspaces, const int num_centroids, const int sub,
    const Dtype scale, const Dtype* z, const Dtype* codebooks,
    const Dtype* codes, Dtype* dz) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = index / dim;
    const int j = index % dim;
    const int m = j / sub;
    const int k = static_cast<int>(codes[i * num_subspaces + m]);
    dz[index] = scale * (z[index] -
        codebooks[(m * num_centroids + k) * sub + j % sub]);
  }
}

// One thread per codebook element (m, k, s): accumulates
// -scale sum_{i: h_im = k} (z_im,s - C_m[k]_s) (used outside a Net only).
template <typename Dtype>
__global__ void PQBackwardCodebooks(const int count, const int n,
    const int dim, const int num_subspaces, const int num_centroids,
    const int sub, const Dtype scale, const Dtype* z, const Dtype* codebooks,
    const Dtype* codes, Dtype* dc) {
  CUDA_KERNEL_LOOP(index, count) {
    const int s = index % sub;
    const int k = (index / sub) % num_centroids;
    const int m = index / (sub * num_centroids);
    Dtype acc = 0;
    for (int i = 0; i < n; ++i) {
      if (static_cast<int>(codes[i * num_subspaces + m]) == k) {
        acc += z[i * dim + m * sub + s] - codebooks[index];
      }
    }
    dc[index] -= scale * acc;
  }
}

template <typename Dtype>
void ProductQuantizationLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  const int n = bottom[0]->shape(0);
  const int sub = dim_ / num_subspaces_;
  const Dtype scale = top[0]->cpu_diff()[0] * Dtype(2) / n;
  if (propagate_down[0] && !have_codebooks_) {
    caffe_gpu_set(bottom[0]->count(), Dtype(0), bottom[0]->mutable_gpu_diff());
  }
  if (!have_codebooks_) { return; }
  if (propagate_down[0]) {
    const int count = bottom[0]->count();
    // NOLINT_NEXT_LINE(whitespace/operators)
    PQBackwardBottom<Dtype><<<CAFFE_GET_BLOCKS(count),
        CAFFE_CUDA_NUM_THREADS>>>(count, dim_, num_subspaces_,
        num_centroids_, sub, scale, bottom[0]->gpu_data(),
        this->blobs_[0]->gpu_data(), codes_.gpu_data(),
        bottom[0]->mutable_gpu_diff());
    CUDA_POST_KERNEL_CHECK;
  }
  if (this->param_propagate_down(0)) {
    const int count = this->blobs_[0]->count();
    // NOLINT_NEXT_LINE(whitespace/operators)
    PQBackwardCodebooks<Dtype><<<CAFFE_GET_BLOCKS(count),
        CAFFE_CUDA_NUM_THREADS>>>(count, n, dim_, num_subspaces_,
        num_centroids_, sub, scale, bottom[0]->gpu_data(),
        this->blobs_[0]->gpu_data(), codes_.gpu_data(),
        this->blobs_[0]->mutable_gpu_diff());
    CUDA_POST_KERNEL_CHECK;
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(ProductQuantizationLossLayer);

}  // namespace caffe
