#include <cmath>
#include <vector>

#include "caffe/layers/piecewise_threshold_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void PiecewiseThresholdForward(const int n, const Dtype lower,
    const Dtype upper, const Dtype* s, Dtype* g) {
  CUDA_KERNEL_LOOP(i, n) {
    const Dtype v = s[i];
    g[i] = v < lower ? Dtype(0) : (v > upper ? Dtype(1) : v);
  }
}

template <typename Dtype>
void PiecewiseThresholdLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  // A NaN or infinity makes the sum non-finite; the CPU check then names it.
  // Done before the kernel, which would turn an infinity into 0 or 1 in place.
  Dtype sum;
  caffe_gpu_asum(count, bottom[0]->gpu_data(), &sum);
  if (!std::isfinite(static_cast<double>(sum))) {
    CheckInputFinite(*bottom[0]);
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  PiecewiseThresholdForward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, lower_, upper_, bottom[0]->gpu_data(),
      top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
__global__ void PiecewiseThresholdBackward(const int n, const Dtype lower,
    const Dtype upper, const Dtype* top_diff, const Dtype* g,
    Dtype* bottom_diff) {
  CUDA_KERNEL_LOOP(i, n) {
    const Dtype v = g[i];
    bottom_diff[i] = (v > lower && v < upper) ? top_diff[i] : Dtype(0);
  }
}

template <typename Dtype>
void PiecewiseThresholdLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) { return; }
  const int count = bottom[0]->count();
  const Dtype* top_diff = top[0]->gpu_diff();
  Dtype* bottom_diff = bottom[0]->mutable_gpu_diff();
  if (straight_through_) {
    caffe_copy(count, top_diff, bottom_diff);  // no-op when in place
    return;
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  PiecewiseThresholdBackward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, lower_, upper_, top_diff,
      top[0]->gpu_data(), bottom_diff);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(PiecewiseThresholdLayer);

}  // namespace caffe
