#include <algorithm>
#include <cmath>
#include <vector>

#include "caffe/layers/piecewise_threshold_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void PiecewiseThresholdLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  NeuronLayer<Dtype>::LayerSetUp(bottom, top);
  const PiecewiseThresholdParameter& param =
      this->layer_param_.piecewise_threshold_param();
  // Checked in double, where center, 1 - center and epsilon (floats) are
  // exact: then c - eps >= 0 and c + eps <= 1 also hold after rounding to
  // Dtype, which Backward relies on (see the class comment).
  const double center = param.center();
  const double epsilon = param.epsilon();
  CHECK(std::isfinite(center) && center >= 0 && center <= 1) << "Layer '"
      << this->layer_param_.name() << "': piecewise_threshold_param.center is "
      << center << "; it must be a finite number in [0, 1] (DNNH: 0.5)";
  const double max_epsilon = std::min(center, 1 - center);
  CHECK(std::isfinite(epsilon) && epsilon >= 0 && epsilon <= max_epsilon)
      << "Layer '" << this->layer_param_.name()
      << "': piecewise_threshold_param.epsilon is " << epsilon
      << "; it must be a finite number in [0, min(center, 1 - center)] = [0, "
      << max_epsilon << "] (the band must lie in [0, 1])";
  lower_ = static_cast<Dtype>(center - epsilon);
  upper_ = static_cast<Dtype>(center + epsilon);
  straight_through_ =
      param.gradient() == PiecewiseThresholdParameter_Gradient_STRAIGHT_THROUGH;
}

template <typename Dtype>
void PiecewiseThresholdLayer<Dtype>::CheckInputFinite(
    const Blob<Dtype>& input) const {
  const int dim = input.num_axes() > 0 ? input.count(1) : 1;
  const Dtype* data = input.cpu_data();
  for (int k = 0; k < input.count(); ++k) {
    if (!std::isfinite(static_cast<double>(data[k]))) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name()
          << "': the bottom holds " << data[k] << " at row " << k / dim
          << ", column " << k % dim << "; the net upstream diverged or the"
          << " data holds non-finite values (lower the learning rate or"
          << " check the input)";
    }
  }
}

template <typename Dtype>
void PiecewiseThresholdLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckInputFinite(*bottom[0]);  // before an in-place top overwrites it
  const int count = bottom[0]->count();
  const Dtype* s = bottom[0]->cpu_data();
  Dtype* g = top[0]->mutable_cpu_data();
  for (int i = 0; i < count; ++i) {
    g[i] = s[i] < lower_ ? Dtype(0) : (s[i] > upper_ ? Dtype(1) : s[i]);
  }
}

template <typename Dtype>
void PiecewiseThresholdLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) { return; }
  const int count = bottom[0]->count();
  const Dtype* top_diff = top[0]->cpu_diff();
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  if (straight_through_) {
    caffe_copy(count, top_diff, bottom_diff);  // no-op when in place
    return;
  }
  // g(s) is strictly inside the band exactly when s is (class comment), so
  // the top data serves in place and out of place alike.
  const Dtype* g = top[0]->cpu_data();
  for (int i = 0; i < count; ++i) {
    bottom_diff[i] = (g[i] > lower_ && g[i] < upper_) ? top_diff[i] : Dtype(0);
  }
}

#ifdef CPU_ONLY
STUB_GPU(PiecewiseThresholdLayer);
#endif

INSTANTIATE_CLASS(PiecewiseThresholdLayer);
REGISTER_LAYER_CLASS(PiecewiseThreshold);

}  // namespace caffe
