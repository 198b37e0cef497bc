#include <cmath>
#include <vector>

#include "caffe/layers/dsh_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per row i, looping over the other rows j: the pair coefficients
// c_ij (row i of coef), their sum, and row i's share of the loss (its pairs
// with j > i over P, plus 2 alpha / N r_i).
template <typename Dtype>
__global__ void DSHLossForward(const int num, const int dim,
    const Dtype margin, const Dtype pair_scale, const Dtype reg_scale,
    const Dtype* b, const Dtype* label, Dtype* coef, Dtype* coef_sum,
    Dtype* row_loss) {
  CUDA_KERNEL_LOOP(i, num) {
    Dtype pair_loss = 0, csum = 0;
    for (int j = 0; j < num; ++j) {
      if (j == i) {
        coef[i * num + j] = 0;
        continue;
      }
      Dtype dist = 0;
      for (int c = 0; c < dim; ++c) {
        const Dtype d = b[i * dim + c] - b[j * dim + c];
        dist += d * d;
      }
      Dtype cij, term;
      if (label[i] == label[j]) {
        cij = 1;
        term = dist / 2;
      } else {
        const Dtype hinge = margin - dist;
        cij = hinge > 0 ? Dtype(-1) : Dtype(0);
        term = hinge <= 0 ? Dtype(0) : hinge / 2;  // NaN stays NaN
      }
      coef[i * num + j] = cij;
      csum += cij;
      if (j > i) { pair_loss += term; }
    }
    Dtype reg = 0;
    for (int c = 0; c < dim; ++c) {
      const Dtype x = b[i * dim + c];
      const Dtype r = (x < 0 ? -x : x) - Dtype(1);
      reg += r < 0 ? -r : r;
    }
    coef_sum[i] = csum;
    row_loss[i] = pair_scale * pair_loss + reg_scale * reg;
  }
}

template <typename Dtype>
void DSHLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CheckLabels(*bottom[1]);  // N values, on the host anyway
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype pair_scale = Dtype(1) / (Dtype(num) * (num - 1) / 2);
  const Dtype reg_scale = Dtype(2) * alpha_ / num;
  // NOLINT_NEXT_LINE(whitespace/operators)
  DSHLossForward<Dtype><<<CAFFE_GET_BLOCKS(num), CAFFE_CUDA_NUM_THREADS>>>(
      num, dim, margin_, pair_scale, reg_scale, bottom[0]->gpu_data(),
      bottom[1]->gpu_data(), coef_.mutable_gpu_data(),
      coef_sum_.mutable_gpu_data(), row_loss_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype sum;
  caffe_gpu_asum(num, row_loss_.gpu_data(), &sum);  // every term is >= 0
  if (!std::isfinite(static_cast<double>(sum))) {
    CheckCodesFinite(*bottom[0]);
  }
  top[0]->mutable_cpu_data()[0] = sum;
}

// diff holds (C B) on entry; one thread per element.
template <typename Dtype>
__global__ void DSHLossBackward(const int count, const int dim,
    const Dtype pair_scale, const Dtype reg_scale, const Dtype* b,
    const Dtype* coef_sum, Dtype* diff) {
  CUDA_KERNEL_LOOP(k, count) {
    const Dtype x = b[k];
    const Dtype ax = x < 0 ? -x : x;
    const Dtype s = x > 0 ? Dtype(1) : (x < 0 ? Dtype(-1) : Dtype(0));
    const Dtype reg_sign = ax > 1 ? s : (ax < 1 ? -s : Dtype(0));
    diff[k] = pair_scale * (coef_sum[k / dim] * x - diff[k])
        + reg_scale * reg_sign;
  }
}

template <typename Dtype>
void DSHLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  CheckNoLabelGradient(propagate_down);
  if (!propagate_down[0]) { return; }
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const int count = bottom[0]->count();
  const Dtype weight = top[0]->cpu_diff()[0];
  const Dtype pair_scale = weight / (Dtype(num) * (num - 1) / 2);
  const Dtype reg_scale = weight * Dtype(2) * alpha_ / num;
  const Dtype* b = bottom[0]->gpu_data();
  Dtype* diff = bottom[0]->mutable_gpu_diff();
  // sum_j c_ij (b_i - b_j) = (sum_j c_ij) b_i - (C B)_i: C B into the diff.
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num, dim, num, Dtype(1),
      coef_.gpu_data(), b, Dtype(0), diff);
  // NOLINT_NEXT_LINE(whitespace/operators)
  DSHLossBackward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, dim, pair_scale, reg_scale, b, coef_sum_.gpu_data(), diff);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(DSHLossLayer);

}  // namespace caffe
