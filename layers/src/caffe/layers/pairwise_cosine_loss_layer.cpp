#include <cmath>
#include <string>
#include <vector>

#include "caffe/layers/pairwise_cosine_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const PairwiseCosineLossParameter& param =
      this->layer_param_.pairwise_cosine_loss_param();
  similar_value_ = param.similar_value();
  dissimilar_value_ = param.dissimilar_value();
  CHECK(std::isfinite(similar_value_)) << "Layer '"
      << this->layer_param_.name()
      << "': pairwise_cosine_loss_param.similar_value is " << similar_value_
      << "; it must be a finite number";
  CHECK(std::isfinite(dissimilar_value_)) << "Layer '"
      << this->layer_param_.name()
      << "': pairwise_cosine_loss_param.dissimilar_value is "
      << dissimilar_value_ << "; it must be a finite number";
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const std::string& name = this->layer_param_.name();
  CHECK_GE(bottom[0]->num_axes(), 1) << "Layer '" << name
      << "': the feature bottom needs a batch axis (N x D)";
  const int num = bottom[0]->shape(0);
  CHECK_GE(num, 2) << "Layer '" << name << "': the batch has N = " << num
      << "; the pairwise cosine loss needs N >= 2 rows";
  const int dim = bottom[0]->count(1);
  CHECK_GT(dim, 0) << "Layer '" << name
      << "': the rows of the feature bottom are empty";
  CHECK_EQ(bottom[1]->count(), num) << "Layer '" << name
      << "': the label bottom has " << bottom[1]->count()
      << " values but the feature bottom has " << num
      << " rows; give one label per row";
  vector<int> loss_shape(0);  // a scalar, as in LossLayer
  top[0]->Reshape(loss_shape);
  vector<int> per_row(1, num);
  norms_.Reshape(per_row);
  row_dots_.Reshape(per_row);
  vector<int> rows(2, num);
  rows[1] = dim;
  unit_.Reshape(rows);
  vector<int> pairs(2, num);
  cosines_.Reshape(pairs);
  residuals_.Reshape(pairs);
  squares_.Reshape(pairs);
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::CheckFeaturesFinite(
    const Blob<Dtype>& features) const {
  const int dim = features.count(1);
  const Dtype* data = features.cpu_data();
  for (int k = 0; k < features.count(); ++k) {
    if (!std::isfinite(static_cast<double>(data[k]))) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name()
          << "': the feature bottom holds " << data[k] << " at row "
          << k / dim << ", column " << k % dim << "; the net upstream"
          << " diverged or the data holds non-finite values (lower the"
          << " learning rate or check the input)";
    }
  }
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::CheckLabelsFinite(
    const Blob<Dtype>& labels) const {
  const Dtype* data = labels.cpu_data();
  for (int i = 0; i < labels.count(); ++i) {
    if (!std::isfinite(static_cast<double>(data[i]))) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name()
          << "': the label bottom holds " << data[i] << " at row " << i
          << "; labels must be finite";
    }
  }
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::CheckNorms(
    const Blob<Dtype>& features) const {
  const Dtype* norm = norms_.cpu_data();
  for (int i = 0; i < norms_.count(); ++i) {
    if (!std::isfinite(static_cast<double>(norm[i]))) {
      CheckFeaturesFinite(features);
      LOG(FATAL) << "Layer '" << this->layer_param_.name() << "': row " << i
          << " of the feature bottom has a norm too large for its type ("
          << norm[i] << ")";
    }
    if (norm[i] == 0) {
      LOG(FATAL) << "Layer '" << this->layer_param_.name() << "': row " << i
          << " of the feature bottom has norm 0 (all its values are 0, or"
          << " their squares underflow); its cosine with the other rows is"
          << " undefined";
    }
  }
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CheckFeaturesFinite(*bottom[0]);
  CheckLabelsFinite(*bottom[1]);
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype* z = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* norm = norms_.mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    norm[i] = std::sqrt(caffe_cpu_dot(dim, z + i * dim, z + i * dim));
  }
  CheckNorms(*bottom[0]);
  Dtype* u = unit_.mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    caffe_cpu_scale(dim, Dtype(1) / norm[i], z + i * dim, u + i * dim);
  }
  // c = U U^T
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, num, num, dim, Dtype(1), u,
      u, Dtype(0), cosines_.mutable_cpu_data());
  const Dtype* c = cosines_.cpu_data();
  Dtype* r = residuals_.mutable_cpu_data();
  Dtype loss = 0;
  for (int i = 0; i < num; ++i) {
    for (int j = 0; j < num; ++j) {
      const int ij = i * num + j;
      r[ij] = i == j ? Dtype(0) : c[ij] - Similarity(label[i], label[j]);
      loss += r[ij] * r[ij];
    }
  }
  top[0]->mutable_cpu_data()[0] = loss / (Dtype(num) * (num - 1));
}

template <typename Dtype>
void PairwiseCosineLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << "Layer '" << this->layer_param_.name()
        << "': cannot backpropagate to the label bottom";
  }
  if (!propagate_down[0]) { return; }
  const int num = bottom[0]->shape(0);
  const int dim = bottom[0]->count(1);
  const Dtype scale =
      top[0]->cpu_diff()[0] * Dtype(4) / (Dtype(num) * (num - 1));
  const Dtype* u = unit_.cpu_data();
  const Dtype* c = cosines_.cpu_data();
  const Dtype* r = residuals_.cpu_data();
  const Dtype* norm = norms_.cpu_data();
  Dtype* dz = bottom[0]->mutable_cpu_diff();
  // dz_i <- sum_j r_ij u_j   (r_ii = 0)
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num, dim, num, Dtype(1), r,
      u, Dtype(0), dz);
  for (int i = 0; i < num; ++i) {
    const Dtype row_dot = caffe_cpu_dot(num, r + i * num, c + i * num);
    const Dtype s = scale / norm[i];
    for (int k = i * dim; k < (i + 1) * dim; ++k) {
      dz[k] = s * (dz[k] - row_dot * u[k]);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(PairwiseCosineLossLayer);
#endif

INSTANTIATE_CLASS(PairwiseCosineLossLayer);
REGISTER_LAYER_CLASS(PairwiseCosineLoss);

}  // namespace caffe
