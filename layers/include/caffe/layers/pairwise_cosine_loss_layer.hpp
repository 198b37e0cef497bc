#ifndef CAFFE_PAIRWISE_COSINE_LOSS_LAYER_HPP_
#define CAFFE_PAIRWISE_COSINE_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The pairwise cosine loss of Cao et al., "Deep Quantization Network
 *        for Efficient Image Retrieval" (DQN, AAAI 2016), averaged over the
 *        @f$ N(N-1) @f$ ordered pairs of distinct rows of a batch:
 *
 * @f[
 *   L = \frac{1}{N(N-1)} \sum_{i \neq j}
 *       \left(s_{ij} - \cos(z_i, z_j)\right)^2,
 *   \qquad
 *   \cos(z_i, z_j) = \frac{z_i^\top z_j}{\|z_i\|_2\,\|z_j\|_2}
 * @f]
 *
 * with @f$ s_{ij} = @f$ PairwiseCosineLossParameter.similar_value (default 1)
 * when rows @f$ i @f$ and @f$ j @f$ have the same label and
 * PairwiseCosineLossParameter.dissimilar_value (default -1) otherwise.
 * The DQN paper defines @f$ s_{ij} @f$ as a binary similarity without giving
 * the value of a dissimilar pair; DQN's released code (thulab DeepHash) uses
 * -1, the default here. Labels are compared for exact equality (one class a
 * row; DQN's multi-label "share at least one label" is not implemented).
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times \ldots) @f$ the features @f$ z_i @f$ (DQN: the 300-unit
 *      tanh bottleneck); each row (the first axis) is flattened to
 *      @f$ D @f$ values. @f$ N \geq 2 @f$ is required.
 *   -# @f$ (N) @f$ (any shape of @f$ N @f$ values) the labels; no gradient
 *      flows to them (Backward is a fatal error if asked for it).
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss @f$ L @f$
 *
 * Gradient: with @f$ u_i = z_i / \|z_i\| @f$, @f$ c_{ij} = u_i^\top u_j @f$
 * and @f$ w @f$ the top diff (the loss weight), every unordered pair appears
 * twice in the ordered sum, so
 * @f[
 *   \frac{\partial L}{\partial z_i} = \frac{4\,w}{N(N-1)\,\|z_i\|}
 *     \sum_{j \neq i} (c_{ij} - s_{ij})\,(u_j - c_{ij}\,u_i)
 *   = \frac{4\,w}{N(N-1)\,\|z_i\|} \left(
 *     \sum_{j \neq i} (c_{ij} - s_{ij})\,u_j -
 *     \Big(\sum_{j \neq i} (c_{ij} - s_{ij})\,c_{ij}\Big) u_i \right).
 * @f]
 * The Gram matrix @f$ U U^\top @f$ and the sum over @f$ j @f$ are GEMMs.
 *
 * A row of zeros has no cosine (no direction): rather than inventing one with
 * an epsilon, Forward stops with a fatal error naming the row (tanh outputs
 * are all exactly 0 only in degenerate cases, e.g. dead weights). A row whose
 * squared norm underflows to 0 counts as zero. A non-finite feature or label
 * is a fatal error naming the bottom and the element.
 */
template <typename Dtype>
class PairwiseCosineLossLayer : public LossLayer<Dtype> {
 public:
  explicit PairwiseCosineLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "PairwiseCosineLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  /// Gradients flow to the features only, never to the labels.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index != 1;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// Fails naming the layer, the row and the column on a NaN or an infinity
  /// in the features (bottom 0).
  void CheckFeaturesFinite(const Blob<Dtype>& features) const;
  /// Fails naming the layer and the row on a NaN or an infinity in the
  /// labels (bottom 1).
  void CheckLabelsFinite(const Blob<Dtype>& labels) const;
  /// Fails naming the row when norms_ holds a 0 (or a non-finite value: then
  /// the features are checked first, for a message naming the element).
  void CheckNorms(const Blob<Dtype>& features) const;
  /// @f$ s_{ij} @f$ for two labels.
  inline Dtype Similarity(Dtype label_i, Dtype label_j) const {
    return label_i == label_j ? similar_value_ : dissimilar_value_;
  }

  Dtype similar_value_;
  Dtype dissimilar_value_;
  /// Per row: @f$ \|z_i\| @f$.
  Blob<Dtype> norms_;
  /// @f$ N \times D @f$: the unit rows @f$ u_i @f$.
  Blob<Dtype> unit_;
  /// @f$ N \times N @f$: the cosines @f$ c_{ij} @f$.
  Blob<Dtype> cosines_;
  /// @f$ N \times N @f$: @f$ c_{ij} - s_{ij} @f$ off the diagonal, 0 on it.
  Blob<Dtype> residuals_;
  /// @f$ N \times N @f$ GPU scratch: the squared residuals.
  Blob<Dtype> squares_;
  /// Per row: @f$ \sum_{j \neq i} (c_{ij} - s_{ij})\,c_{ij} @f$.
  Blob<Dtype> row_dots_;
};

}  // namespace caffe

#endif  // CAFFE_PAIRWISE_COSINE_LOSS_LAYER_HPP_
