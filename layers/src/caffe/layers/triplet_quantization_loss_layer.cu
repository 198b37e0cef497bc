#include <cmath>
#include <vector>

#include "caffe/layers/triplet_input_checks.hpp"
#include "caffe/layers/triplet_quantization_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per triplet: its L_s and L_d terms and L_d's active flag.
template <typename Dtype>
__global__ void TQNForward(const int bs, const int dim, const Dtype threshold,
    const Dtype alpha_s, const Dtype alpha_d, const Dtype delta,
    const Dtype* a, const Dtype* p, const Dtype* n, Dtype* loss_s,
    Dtype* loss_d, Dtype* active_d) {
  CUDA_KERNEL_LOOP(i, bs) {
    Dtype ls = 0, clipped = 0;
    for (int j = i * dim; j < (i + 1) * dim; ++j) {
      const Dtype hs = alpha_s - (a[j] - threshold) * (p[j] - threshold);
      ls += hs <= 0 ? Dtype(0) : hs;  // NaN stays NaN, for the check below
      const Dtype sq = (a[j] - n[j]) * (a[j] - n[j]);
      clipped += sq >= delta ? delta : sq;
    }
    const Dtype hd = alpha_d - clipped;
    active_d[i] = hd > 0 ? Dtype(1) : Dtype(0);
    loss_s[i] = ls;
    loss_d[i] = hd <= 0 ? Dtype(0) : hd;
  }
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int bs = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  // NOLINT_NEXT_LINE(whitespace/operators)
  TQNForward<Dtype><<<CAFFE_GET_BLOCKS(bs), CAFFE_CUDA_NUM_THREADS>>>(
      bs, dim, threshold_, alpha_s_, alpha_d_, delta_, bottom[0]->gpu_data(),
      bottom[1]->gpu_data(), bottom[2]->gpu_data(),
      loss_s_terms_.mutable_gpu_data(), loss_d_terms_.mutable_gpu_data(),
      active_d_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype sum_s, sum_d;
  caffe_gpu_asum(bs, loss_s_terms_.gpu_data(), &sum_s);  // terms are >= 0
  caffe_gpu_asum(bs, loss_d_terms_.gpu_data(), &sum_d);
  if (!std::isfinite(static_cast<double>(sum_s + sum_d))) {
    CheckTripletBottomsFinite(this->layer_param_.name(), bottom);
  }
  SetTops(sum_s / bs, sum_d / (Dtype(2) * bs), top);
}

template <typename Dtype>
__global__ void TQNBackward(const int count, const int dim,
    const Dtype threshold, const Dtype alpha_s, const Dtype delta,
    const Dtype scale_s, const Dtype scale_d, const Dtype* a, const Dtype* p,
    const Dtype* n, const Dtype* active_d, Dtype* da, Dtype* dp, Dtype* dn) {
  CUDA_KERNEL_LOOP(k, count) {
    const bool s_active =
        alpha_s - (a[k] - threshold) * (p[k] - threshold) > 0;
    const Dtype gs = s_active ? scale_s : Dtype(0);
    const Dtype diff = a[k] - n[k];
    const Dtype gd = (active_d[k / dim] > 0 && diff * diff < delta) ?
        scale_d * diff : Dtype(0);
    if (da) { da[k] = gs * (threshold - p[k]) - gd; }
    if (dp) { dp[k] = gs * (threshold - a[k]); }
    if (dn) { dn[k] = gd; }
  }
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  const int bs = bottom[0]->shape(0);
  const int count = bottom[0]->count();
  Dtype scale_s, scale_d;
  GradientScales(top, bs, &scale_s, &scale_d);
  Dtype* da = propagate_down[0] ? bottom[0]->mutable_gpu_diff() : NULL;
  Dtype* dp = propagate_down[1] ? bottom[1]->mutable_gpu_diff() : NULL;
  Dtype* dn = propagate_down[2] ? bottom[2]->mutable_gpu_diff() : NULL;
  // NOLINT_NEXT_LINE(whitespace/operators)
  TQNBackward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, bottom[0]->count(1), threshold_, alpha_s_, delta_, scale_s,
      scale_d, bottom[0]->gpu_data(), bottom[1]->gpu_data(),
      bottom[2]->gpu_data(), active_d_.gpu_data(), da, dp, dn);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(TripletQuantizationLossLayer);

}  // namespace caffe
