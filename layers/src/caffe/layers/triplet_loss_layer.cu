#include <cmath>
#include <vector>

#include "caffe/layers/triplet_input_checks.hpp"
#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per triplet: the hinge argument, its active flag and max(.,0).
template <typename Dtype>
__global__ void TripletLossForward(const int bs, const int dim,
    const Dtype margin, const Dtype* a, const Dtype* p, const Dtype* n,
    Dtype* hinge, Dtype* active) {
  CUDA_KERNEL_LOOP(i, bs) {
    Dtype d_ap = 0, d_an = 0;
    for (int j = i * dim; j < (i + 1) * dim; ++j) {
      d_ap += (a[j] - p[j]) * (a[j] - p[j]);
      d_an += (a[j] - n[j]) * (a[j] - n[j]);
    }
    const Dtype h = margin + d_ap - d_an;
    active[i] = h > 0 ? Dtype(1) : Dtype(0);
    hinge[i] = h <= 0 ? Dtype(0) : h;  // NaN stays NaN, for the check below
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int bs = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletLossForward<Dtype><<<CAFFE_GET_BLOCKS(bs), CAFFE_CUDA_NUM_THREADS>>>(
      bs, dim, margin_, bottom[0]->gpu_data(), bottom[1]->gpu_data(),
      bottom[2]->gpu_data(), hinge_.mutable_gpu_data(),
      active_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype sum;
  caffe_gpu_asum(bs, hinge_.gpu_data(), &sum);  // every term is >= 0
  if (!std::isfinite(static_cast<double>(sum))) {
    CheckTripletBottomsFinite(this->layer_param_.name(), bottom);
  }
  top[0]->mutable_cpu_data()[0] = sum / (Dtype(2) * bs);
}

template <typename Dtype>
__global__ void TripletLossBackward(const int count, const int dim,
    const Dtype scale, const Dtype* a, const Dtype* p, const Dtype* n,
    const Dtype* active, Dtype* da, Dtype* dp, Dtype* dn) {
  CUDA_KERNEL_LOOP(k, count) {
    const Dtype s = scale * active[k / dim];
    if (da) { da[k] = s * (n[k] - p[k]); }
    if (dp) { dp[k] = s * (p[k] - a[k]); }
    if (dn) { dn[k] = s * (a[k] - n[k]); }
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const int bs = bottom[0]->shape(0);
  const int count = bottom[0]->count();
  const Dtype scale = top[0]->cpu_diff()[0] / bs;
  Dtype* da = propagate_down[0] ? bottom[0]->mutable_gpu_diff() : NULL;
  Dtype* dp = propagate_down[1] ? bottom[1]->mutable_gpu_diff() : NULL;
  Dtype* dn = propagate_down[2] ? bottom[2]->mutable_gpu_diff() : NULL;
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletLossBackward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, bottom[0]->count(1), scale,
      bottom[0]->gpu_data(), bottom[1]->gpu_data(), bottom[2]->gpu_data(),
      active_.gpu_data(), da, dp, dn);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(TripletLossLayer);

}  // namespace caffe
