#include <cmath>
#include <vector>

#include "caffe/layers/pairwise_cosine_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per row: its Euclidean norm.
template <typename Dtype>
__global__ void PairwiseCosineRowNorms(const int num, const int dim,
    const Dtype* z, Dtype* norm) {
  CUDA_KERNEL_LOOP(i, num) {
    Dtype sum = 0;
    for (int k = i * dim; k < (i + 1) * dim; ++k) {
      sum += z[k] * z[k];
    }
    norm[i] = sqrt(sum);
  }
}

// One thread per element: u = z / ||z_row||.
template <typename Dtype>
__global__ void PairwiseCosineNormalize(const int count, const int dim,
    const Dtype* z, const Dtype* norm, Dtype* u) {
  CUDA_KERNEL_LOOP(k, count) {
    u[k] = z[k] / norm[k / dim];
  }
}

// One thread per ordered pair (i, j): the residual c_ij - s_ij (0 when i == j)
// and its square.
template <typename Dtype>
__global__ void PairwiseCosineResiduals(const int num, const Dtype* c,
    const Dtype* label, const Dtype similar_value,
    const Dtype dissimilar_value, Dtype* r, Dtype* sq) {
  CUDA_KERNEL_LOOP(ij, num * num) {
    const int i = ij / num;
    const int j = ij % num;
    Dtype res = 0;
    if (i != j) {
      res = c[ij] - (label[i] == label[j] ? similar_value : dissimilar_value);
    }
    r[ij] = res;
    sq[ij] = res * res;
  }
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckLabelsFinite(*bottom[1]);  // N values
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const int count = bottom[0]->count();
  const Dtype* z = bottom[0]->gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairwiseCosineRowNorms<Dtype><<<CAFFE_GET_BLOCKS(num),
      CAFFE_CUDA_NUM_THREADS>>>(num, dim, z, norms_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  CheckNorms(*bottom[0]);  // N values; a NaN or inf in z shows in its norm
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairwiseCosineNormalize<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, dim, z, norms_.gpu_data(),
      unit_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  // c = U U^T
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, num, num, dim, Dtype(1),
      unit_.gpu_data(), unit_.gpu_data(), Dtype(0),
      cosines_.mutable_gpu_data());
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairwiseCosineResiduals<Dtype><<<CAFFE_GET_BLOCKS(num * num),
      CAFFE_CUDA_NUM_THREADS>>>(num, cosines_.gpu_data(),
      bottom[1]->gpu_data(), similar_value_, dissimilar_value_,
      residuals_.mutable_gpu_data(), squares_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype sum;
  caffe_gpu_asum(num * num, squares_.gpu_data(), &sum);  // terms are >= 0
  top[0]->mutable_cpu_data()[0] = sum / (Dtype(num) * (num - 1));
}

// One thread per row: sum_j r_ij c_ij.
template <typename Dtype>
__global__ void PairwiseCosineRowDots(const int num, const Dtype* r,
    const Dtype* c, Dtype* row_dot) {
  CUDA_KERNEL_LOOP(i, num) {
    Dtype sum = 0;
    for (int ij = i * num; ij < (i + 1) * num; ++ij) {
      sum += r[ij] * c[ij];
    }
    row_dot[i] = sum;
  }
}

// One thread per element: dz = scale / ||z_i|| (dz - row_dot_i u).
template <typename Dtype>
__global__ void PairwiseCosineBackward(const int count, const int dim,
    const Dtype scale, const Dtype* u, const Dtype* norm,
    const Dtype* row_dot, Dtype* dz) {
  CUDA_KERNEL_LOOP(k, count) {
    const int i = k / dim;
    dz[k] = scale / norm[i] * (dz[k] - row_dot[i] * u[k]);
  }
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << "Layer '" << this->layer_param_.name()
        << "': cannot backpropagate to the label bottom";
  }
  if (!propagate_down[0]) { return; }
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const int count = bottom[0]->count();
  const Dtype scale =
      top[0]->cpu_diff()[0] * Dtype(4) / (Dtype(num) * (num - 1));
  Dtype* dz = bottom[0]->mutable_gpu_diff();
  // dz_i <- sum_j r_ij u_j   (r_ii = 0)
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num, dim, num, Dtype(1),
      residuals_.gpu_data(), unit_.gpu_data(), Dtype(0), dz);
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairwiseCosineRowDots<Dtype><<<CAFFE_GET_BLOCKS(num),
      CAFFE_CUDA_NUM_THREADS>>>(num, residuals_.gpu_data(),
      cosines_.gpu_data(), row_dots_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairwiseCosineBackward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, dim, scale, unit_.gpu_data(),
      norms_.gpu_data(), row_dots_.gpu_data(), dz);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(PairwiseCosineLossLayer);

}  // namespace caffe
