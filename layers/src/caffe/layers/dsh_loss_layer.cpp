#include <cmath>
#include <string>
#include <vector>

#include "caffe/layers/dsh_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void DSHLossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const DSHLossParameter& param = this->layer_param_.dsh_loss_param();
  CHECK(std::isfinite(param.margin()) && param.margin() >= 0) << "Layer '"
      << this->layer_param_.name() << "': dsh_loss_param.margin is "
      << param.margin() << "; it must be a finite number >= 0 (0 means twice"
      << " the code length, DSH's choice)";
  CHECK(std::isfinite(param.alpha()) && param.alpha() >= 0) << "Layer '"
      << this->layer_param_.name() << "': dsh_loss_param.alpha is "
      << param.alpha() << "; it must be a finite number >= 0 (DSH uses 0.01)";
  alpha_ = param.alpha();
}

template <typename Dtype>
void DSHLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const std::string& name = this->layer_param_.name();
  CHECK_GE(bottom[0]->num_axes(), 1) << "Layer '" << name
      << "': the codes bottom needs a batch axis (N x k)";
  const int num = bottom[0]->shape(0);
  CHECK_GE(num, 2) << "Layer '" << name << "': the batch has " << num
      << " row(s); DSHLoss needs at least 2 to form a pair";
  const int dim = bottom[0]->count(1);
  CHECK_GT(dim, 0) << "Layer '" << name << "': the codes bottom has shape "
      << bottom[0]->shape_string() << "; its rows are empty";
  CHECK_EQ(bottom[1]->count(), num) << "Layer '" << name
      << "': the label bottom has shape " << bottom[1]->shape_string()
      << " but the codes bottom has " << num << " rows ("
      << bottom[0]->shape_string() << "); give one label per row";
  const float margin = this->layer_param_.dsh_loss_param().margin();
  margin_ = margin > 0 ? Dtype(margin) : Dtype(2 * dim);
  vector<int> loss_shape(0);  // a scalar, as in LossLayer
  top[0]->Reshape(loss_shape);
  coef_.Reshape(vector<int>(2, num));
  coef_sum_.Reshape(vector<int>(1, num));
  row_loss_.Reshape(vector<int>(1, num));
}

template <typename Dtype>
void DSHLossLayer<Dtype>::CheckCodesFinite(const Blob<Dtype>& codes) const {
  const int dim = codes.count(1);
  const Dtype* data = codes.cpu_data();
  for (int k = 0; k < codes.count(); ++k) {
    if (!std::isfinite(static_cast<double>(data[k]))) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name() << "': the codes"
          << " bottom holds " << data[k] << " at row " << k / dim
          << ", column " << k % dim << "; the net upstream diverged or the"
          << " data holds non-finite values (lower the learning rate or"
          << " check the input)";
    }
  }
}

template <typename Dtype>
void DSHLossLayer<Dtype>::CheckLabels(const Blob<Dtype>& labels) const {
  const Dtype* data = labels.cpu_data();
  for (int i = 0; i < labels.count(); ++i) {
    const double label = static_cast<double>(data[i]);
    if (!std::isfinite(label) || label != std::floor(label)) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name() << "': the label"
          << " bottom holds " << data[i] << " at row " << i << "; labels"
          << " must be integer class ids (bottom 1 is the labels, bottom 0"
          << " the codes)";
    }
  }
}

template <typename Dtype>
void DSHLossLayer<Dtype>::CheckNoLabelGradient(
    const vector<bool>& propagate_down) const {
  if (propagate_down[1]) {
    LOG(FATAL) << "Layer '" << this->layer_param_.name() << "': "
        << this->type() << " cannot backpropagate to the labels (bottom 1)";
  }
}

// The subgradient of | |x| - 1 |: sign(|x| - 1) sign(x), 0 at x = 0, +-1.
template <typename Dtype>
inline Dtype RegularizerSign(const Dtype x) {
  const Dtype ax = x < 0 ? -x : x;
  const Dtype s = x > 0 ? Dtype(1) : (x < 0 ? Dtype(-1) : Dtype(0));
  return ax > 1 ? s : (ax < 1 ? -s : Dtype(0));
}

template <typename Dtype>
void DSHLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CheckCodesFinite(*bottom[0]);
  CheckLabels(*bottom[1]);
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype* b = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* coef = coef_.mutable_cpu_data();
  Dtype* coef_sum = coef_sum_.mutable_cpu_data();
  caffe_set(num, Dtype(0), coef_sum);
  Dtype pair_loss = 0;
  for (int i = 0; i < num; ++i) {
    coef[i * num + i] = 0;
    const Dtype* bi = b + i * dim;
    for (int j = i + 1; j < num; ++j) {
      const Dtype* bj = b + j * dim;
      Dtype dist = 0;
      for (int c = 0; c < dim; ++c) {
        dist += (bi[c] - bj[c]) * (bi[c] - bj[c]);
      }
      Dtype cij;
      if (label[i] == label[j]) {
        pair_loss += dist / 2;
        cij = 1;
      } else {
        const Dtype hinge = margin_ - dist;
        if (hinge > 0) { pair_loss += hinge / 2; }
        cij = hinge > 0 ? Dtype(-1) : Dtype(0);
      }
      coef[i * num + j] = cij;
      coef[j * num + i] = cij;
      coef_sum[i] += cij;
      coef_sum[j] += cij;
    }
  }
  Dtype reg = 0;
  for (int k = 0; k < num * dim; ++k) {
    reg += std::fabs(std::fabs(b[k]) - Dtype(1));
  }
  const Dtype pairs = Dtype(num) * (num - 1) / 2;
  top[0]->mutable_cpu_data()[0] = pair_loss / pairs
      + Dtype(2) * alpha_ / num * reg;
}

template <typename Dtype>
void DSHLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  CheckNoLabelGradient(propagate_down);
  if (!propagate_down[0]) { return; }
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype weight = top[0]->cpu_diff()[0];
  const Dtype pair_scale = weight / (Dtype(num) * (num - 1) / 2);
  const Dtype reg_scale = weight * Dtype(2) * alpha_ / num;
  const Dtype* b = bottom[0]->cpu_data();
  const Dtype* coef_sum = coef_sum_.cpu_data();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  // sum_j c_ij (b_i - b_j) = (sum_j c_ij) b_i - (C B)_i: C B into the diff.
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num, dim, num, Dtype(1),
      coef_.cpu_data(), b, Dtype(0), diff);
  for (int i = 0; i < num; ++i) {
    for (int k = i * dim; k < (i + 1) * dim; ++k) {
      diff[k] = pair_scale * (coef_sum[i] * b[k] - diff[k])
          + reg_scale * RegularizerSign(b[k]);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(DSHLossLayer);
#endif

INSTANTIATE_CLASS(DSHLossLayer);
REGISTER_LAYER_CLASS(DSHLoss);

}  // namespace caffe
