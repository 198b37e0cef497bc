#ifndef CAFFE_DSH_LOSS_LAYER_HPP_
#define CAFFE_DSH_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The pairwise loss of Liu et al., "Deep Supervised Hashing for Fast
 *        Image Retrieval" (DSH, CVPR 2016): the paper's per-pair loss (Eq. 3,
 *        with its regularizer weighted by @f$ \alpha @f$) averaged over all
 *        @f$ P = N(N-1)/2 @f$ unordered pairs @f$ i < j @f$ of the batch:
 *
 * @f[
 *   L = \frac{1}{P} \sum_{i<j} \Big[ \frac{1}{2} (1 - y_{ij}) D_{ij}
 *       + \frac{1}{2} y_{ij} \max(m - D_{ij}, 0)
 *       + \alpha \big( r_i + r_j \big) \Big]
 *     = \frac{1}{P} \sum_{i<j} \Big[ \frac{1}{2} (1 - y_{ij}) D_{ij}
 *       + \frac{1}{2} y_{ij} \max(m - D_{ij}, 0) \Big]
 *       + \frac{2\alpha}{N} \sum_{i} r_i
 * @f]
 *
 * with @f$ D_{ij} = \|b_i - b_j\|_2^2 @f$, @f$ r_i = \| |b_i| - 1 \|_1 @f$
 * (each row is in @f$ N-1 @f$ pairs, hence the second form), and
 * @f$ y_{ij} = 0 @f$ when rows @f$ i @f$ and @f$ j @f$ have the same label,
 * 1 otherwise.
 *
 * DSH's released Caffe code ("HashingLoss") also uses all pairs of a batch:
 * its pair part, @f$ \frac{1}{N(N-1)} \sum_{i<j} [(1-y_{ij}) D_{ij} +
 * y_{ij} \max(m - D_{ij}, 0)] @f$, equals the one above, and its regularizer
 * is @f$ \frac{\alpha'}{N} \sum_i r_i @f$, i.e. its "tradeoff" @f$ \alpha' @f$
 * is @f$ 2\alpha @f$ here (its tradeoff 0.01 is alpha: 0.005). Other
 * normalizations of the same sums only rescale the learning rate.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times \ldots) @f$ the codes @f$ b_i @f$, the linear output of
 *      the net; each row (the first axis) is flattened to @f$ k @f$ values.
 *      @f$ N \ge 2 @f$.
 *   -# @f$ (N) @f$ (or any shape of @f$ N @f$ values) the labels: integer
 *      class ids stored as floats, as Caffe's Data layers give them
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss @f$ L @f$
 *
 * Parameters (DSHLossParameter): the margin @f$ m @f$ (0, the default, means
 * DSH's choice @f$ m = 2k @f$) and @f$ \alpha @f$ (default 0.01).
 *
 * Backward, with @f$ w @f$ the top diff (the loss weight), elementwise:
 * @f[
 *   \frac{\partial L}{\partial b_i} = w \Big[ \frac{1}{P} \sum_{j \ne i}
 *     \big( (1 - y_{ij}) - y_{ij}\, 1[m - D_{ij} > 0] \big) (b_i - b_j)
 *     + \frac{2\alpha}{N} \mathrm{sign}(|b_i| - 1)\, \mathrm{sign}(b_i) \Big]
 * @f]
 * At the kinks (@f$ b = 0 @f$, @f$ |b| = 1 @f$, @f$ m - D_{ij} = 0 @f$) the
 * subgradient 0 is used. The labels get no gradient: asking for one
 * (propagate_down on bottom 1) is a fatal error, as in Caffe's loss layers.
 * A non-finite code or a non-integer label is a fatal error naming the
 * bottom and the element.
 */
template <typename Dtype>
class DSHLossLayer : public LossLayer<Dtype> {
 public:
  explicit DSHLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "DSHLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  // AllowForceBackward: LossLayer's (not to the labels, bottom 1).

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// Fatal, naming the element, if a code is not finite.
  void CheckCodesFinite(const Blob<Dtype>& codes) const;
  /// Fatal, naming the row, if a label is not a finite integer.
  void CheckLabels(const Blob<Dtype>& labels) const;
  /// Fatal if the labels are asked for a gradient.
  void CheckNoLabelGradient(const vector<bool>& propagate_down) const;

  /// The margin in use: margin, or 2k when margin is 0.
  Dtype margin_;
  Dtype alpha_;
  /// N x N: the pair coefficients c_ij = (1 - y_ij) - y_ij 1[m - D_ij > 0]
  /// of dL/db_i = 1/P sum_j c_ij (b_i - b_j) + ...; c_ii = 0.
  Blob<Dtype> coef_;
  /// N: the row sums of coef_.
  Blob<Dtype> coef_sum_;
  /// N: row i's share of the loss (GPU scratch): its pairs with j > i over P,
  /// plus 2 alpha / N r_i.
  Blob<Dtype> row_loss_;
};

}  // namespace caffe

#endif  // CAFFE_DSH_LOSS_LAYER_HPP_
