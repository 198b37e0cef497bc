#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "caffe/layers/triplet_input_checks.hpp"
#include "caffe/layers/triplet_quantization_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

namespace {

void CheckParameter(const std::string& layer, const char* name, float value,
    bool strictly_positive) {
  CHECK(std::isfinite(value) && (strictly_positive ? value > 0 : value >= 0))
      << "Layer '" << layer << "': triplet_quantization_loss_param." << name
      << " is " << value << "; it must be a finite number "
      << (strictly_positive ? "> 0" : ">= 0");
}

}  // namespace

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  // Default loss weights: 1 for L, 0 for the optional L_s and L_d tops.
  if (this->layer_param_.loss_weight_size() == 0) {
    this->layer_param_.add_loss_weight(Dtype(1));
    for (int t = 1; t < top.size(); ++t) {
      this->layer_param_.add_loss_weight(Dtype(0));
    }
  }
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const TripletQuantizationLossParameter& param =
      this->layer_param_.triplet_quantization_loss_param();
  const std::string& name = this->layer_param_.name();
  CHECK(param.has_alpha_d()) << "Layer '" << name
      << "': triplet_quantization_loss_param.alpha_d is required: take it"
      << " from the paper's Table I or from Eq. 16 (prototxt/tqn_params.py)";
  CHECK(std::isfinite(param.threshold())) << "Layer '" << name
      << "': triplet_quantization_loss_param.threshold must be finite";
  CheckParameter(name, "alpha_s", param.alpha_s(), false);
  CheckParameter(name, "alpha_d", param.alpha_d(), false);
  CheckParameter(name, "delta", param.delta(), true);
  CheckParameter(name, "beta", param.beta(), false);
  CheckParameter(name, "gamma", param.gamma(), false);
  threshold_ = param.threshold();
  alpha_s_ = param.alpha_s();
  alpha_d_ = param.alpha_d();
  delta_ = param.delta();
  beta_ = param.beta();
  gamma_ = param.gamma();
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckTripletBottomShapes(this->layer_param_.name(), bottom);
  vector<int> scalar(0);
  for (int t = 0; t < top.size(); ++t) {
    top[t]->Reshape(scalar);
  }
  vector<int> per_triplet(1, bottom[0]->shape(0));
  active_d_.Reshape(per_triplet);
  loss_s_terms_.Reshape(per_triplet);
  loss_d_terms_.Reshape(per_triplet);
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::SetTops(Dtype loss_s, Dtype loss_d,
    const vector<Blob<Dtype>*>& top) {
  top[0]->mutable_cpu_data()[0] = beta_ * loss_s + gamma_ * loss_d;
  if (top.size() > 1) { top[1]->mutable_cpu_data()[0] = loss_s; }
  if (top.size() > 2) { top[2]->mutable_cpu_data()[0] = loss_d; }
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::GradientScales(
    const vector<Blob<Dtype>*>& top, int bs, Dtype* scale_s,
    Dtype* scale_d) const {
  const Dtype w0 = top[0]->cpu_diff()[0];
  const Dtype w1 = top.size() > 1 ? top[1]->cpu_diff()[0] : Dtype(0);
  const Dtype w2 = top.size() > 2 ? top[2]->cpu_diff()[0] : Dtype(0);
  *scale_s = (beta_ * w0 + w1) / bs;
  *scale_d = (gamma_ * w0 + w2) / bs;
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckTripletBottomsFinite(this->layer_param_.name(), bottom);
  const int bs = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype* a = bottom[0]->cpu_data();
  const Dtype* p = bottom[1]->cpu_data();
  const Dtype* n = bottom[2]->cpu_data();
  Dtype* active_d = active_d_.mutable_cpu_data();
  Dtype sum_s = 0, sum_d = 0;
  for (int i = 0; i < bs; ++i) {
    Dtype clipped = 0;
    for (int j = i * dim; j < (i + 1) * dim; ++j) {
      sum_s += std::max(
          alpha_s_ - (a[j] - threshold_) * (p[j] - threshold_), Dtype(0));
      clipped += std::min((a[j] - n[j]) * (a[j] - n[j]), delta_);
    }
    const Dtype hinge_d = alpha_d_ - clipped;
    active_d[i] = hinge_d > 0 ? Dtype(1) : Dtype(0);
    sum_d += std::max(hinge_d, Dtype(0));
  }
  SetTops(sum_s / bs, sum_d / (Dtype(2) * bs), top);
}

template <typename Dtype>
void TripletQuantizationLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  const int bs = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  Dtype scale_s, scale_d;
  GradientScales(top, bs, &scale_s, &scale_d);
  const Dtype* a = bottom[0]->cpu_data();
  const Dtype* p = bottom[1]->cpu_data();
  const Dtype* n = bottom[2]->cpu_data();
  const Dtype* active_d = active_d_.cpu_data();
  Dtype* da = propagate_down[0] ? bottom[0]->mutable_cpu_diff() : NULL;
  Dtype* dp = propagate_down[1] ? bottom[1]->mutable_cpu_diff() : NULL;
  Dtype* dn = propagate_down[2] ? bottom[2]->mutable_cpu_diff() : NULL;
  for (int i = 0; i < bs; ++i) {
    for (int j = i * dim; j < (i + 1) * dim; ++j) {
      // L_s: the hinge is per (triplet, bit).
      const bool s_active =
          alpha_s_ - (a[j] - threshold_) * (p[j] - threshold_) > 0;
      const Dtype gs = s_active ? scale_s : Dtype(0);
      // L_d: the triplet's hinge, then the bit's clip.
      const Dtype diff = a[j] - n[j];
      const Dtype gd = (active_d[i] > 0 && diff * diff < delta_) ?
          scale_d * diff : Dtype(0);
      if (da) { da[j] = gs * (threshold_ - p[j]) - gd; }
      if (dp) { dp[j] = gs * (threshold_ - a[j]); }
      if (dn) { dn[j] = gd; }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(TripletQuantizationLossLayer);
#endif

INSTANTIATE_CLASS(TripletQuantizationLossLayer);
REGISTER_LAYER_CLASS(TripletQuantizationLoss);

}  // namespace caffe
