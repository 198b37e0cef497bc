#include <algorithm>
#include <vector>

#include "caffe/layers/triplet_input_checks.hpp"
#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void TripletLossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  margin_ = this->layer_param_.triplet_loss_param().margin();
  CHECK(std::isfinite(margin_) && margin_ >= 0) << "Layer '"
      << this->layer_param_.name() << "': triplet_loss_param.margin is "
      << margin_ << "; it must be a finite number >= 0 (the paper uses 1.6)";
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CheckTripletBottomShapes(this->layer_param_.name(), bottom);
  vector<int> loss_shape(0);  // a scalar, as in LossLayer
  top[0]->Reshape(loss_shape);
  vector<int> per_triplet(1, bottom[0]->shape(0));
  active_.Reshape(per_triplet);
  hinge_.Reshape(per_triplet);
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CheckTripletBottomsFinite(this->layer_param_.name(), bottom);
  const int bs = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype* a = bottom[0]->cpu_data();
  const Dtype* p = bottom[1]->cpu_data();
  const Dtype* n = bottom[2]->cpu_data();
  Dtype* active = active_.mutable_cpu_data();
  Dtype loss = 0;
  for (int i = 0; i < bs; ++i) {
    Dtype d_ap = 0, d_an = 0;
    for (int j = i * dim; j < (i + 1) * dim; ++j) {
      d_ap += (a[j] - p[j]) * (a[j] - p[j]);
      d_an += (a[j] - n[j]) * (a[j] - n[j]);
    }
    const Dtype hinge = margin_ + d_ap - d_an;
    active[i] = hinge > 0 ? Dtype(1) : Dtype(0);
    loss += std::max(hinge, Dtype(0));
  }
  top[0]->mutable_cpu_data()[0] = loss / (Dtype(2) * bs);
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const int bs = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype scale = top[0]->cpu_diff()[0] / bs;
  const Dtype* a = bottom[0]->cpu_data();
  const Dtype* p = bottom[1]->cpu_data();
  const Dtype* n = bottom[2]->cpu_data();
  const Dtype* active = active_.cpu_data();
  Dtype* da = propagate_down[0] ? bottom[0]->mutable_cpu_diff() : NULL;
  Dtype* dp = propagate_down[1] ? bottom[1]->mutable_cpu_diff() : NULL;
  Dtype* dn = propagate_down[2] ? bottom[2]->mutable_cpu_diff() : NULL;
  for (int i = 0; i < bs; ++i) {
    const Dtype s = scale * active[i];
    for (int j = i * dim; j < (i + 1) * dim; ++j) {
      if (da) { da[j] = s * (n[j] - p[j]); }
      if (dp) { dp[j] = s * (p[j] - a[j]); }
      if (dn) { dn[j] = s * (a[j] - n[j]); }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(TripletLossLayer);
#endif

INSTANTIATE_CLASS(TripletLossLayer);
REGISTER_LAYER_CLASS(TripletLoss);

}  // namespace caffe
