#ifndef CAFFE_TRIPLET_QUANTIZATION_LOSS_LAYER_HPP_
#define CAFFE_TRIPLET_QUANTIZATION_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The triplet quantization loss (TQN) of Zhou et al., "Deep Hashing
 *        with Triplet Quantization Loss" (VCIP 2017), Eqs. 2-4, step 2 of TQN
 *        training:
 *
 * @f[
 *   L_s = \frac{1}{bs} \sum_{i=1}^{bs} \sum_{j=1}^{N}
 *     \max\left(\alpha_s - (f^{a_i}_j - t)(f^{p_i}_j - t),\; 0\right)
 * @f]
 * @f[
 *   L_d = \frac{1}{2\,bs} \sum_{i=1}^{bs}
 *     \max\left(\alpha_d - \sum_{j=1}^{N}
 *       \min\left((f^{a_i}_j - f^{n_i}_j)^2, \delta\right),\; 0\right)
 * @f]
 * @f[
 *   L_{TQN} = \beta L_s + \gamma L_d
 * @f]
 *
 * @param bottom input Blob vector (length 3), all of one shape
 *   -# @f$ (bs \times \ldots) @f$ the anchors' features @f$ f^{a_i} @f$; each
 *      row (the first axis) is one triplet, flattened to @f$ N @f$ values
 *   -# @f$ (bs \times \ldots) @f$ the positives' features @f$ f^{p_i} @f$
 *   -# @f$ (bs \times \ldots) @f$ the negatives' features @f$ f^{n_i} @f$
 * @param top output Blob vector (length 1 to 3)
 *   -# @f$ (1) @f$ @f$ L_{TQN} @f$ (loss weight 1 by default)
 *   -# @f$ (1) @f$ optional: @f$ L_s @f$ alone, unweighted (loss weight 0 by
 *      default: for plotting)
 *   -# @f$ (1) @f$ optional: @f$ L_d @f$ alone, unweighted (likewise)
 *
 * Backward is the exact gradient of the forward (the paper's Eq. 5 is not:
 * see README, "Erratum"). With @f$ s_{ij} = 1[\alpha_s - (f^{a_i}_j - t)
 * (f^{p_i}_j - t) > 0] @f$ (one indicator per triplet AND bit, since the hinge
 * sits inside the sum over j), @f$ h_i = 1[L_{d,i} > 0] @f$,
 * @f$ c_{ij} = 1[(f^{a_i}_j - f^{n_i}_j)^2 < \delta] @f$, and
 * @f$ w_s = \beta w_0 + w_1 @f$, @f$ w_d = \gamma w_0 + w_2 @f$ from the top
 * diffs @f$ w_k @f$:
 * @f[
 *   \frac{\partial}{\partial f^{a_i}_j} = \frac{w_s}{bs} s_{ij} (t - f^{p_i}_j)
 *     - \frac{w_d}{bs} h_i c_{ij} (f^{a_i}_j - f^{n_i}_j),\quad
 *   \frac{\partial}{\partial f^{p_i}_j} = \frac{w_s}{bs} s_{ij} (t - f^{a_i}_j),
 *   \quad
 *   \frac{\partial}{\partial f^{n_i}_j} =
 *     \frac{w_d}{bs} h_i c_{ij} (f^{a_i}_j - f^{n_i}_j).
 * @f]
 * At kinks (a hinge argument exactly 0, a squared difference exactly
 * @f$ \delta @f$) the subgradient of the inactive side is used.
 */
template <typename Dtype>
class TripletQuantizationLossLayer : public LossLayer<Dtype> {
 public:
  explicit TripletQuantizationLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const {
    return "TripletQuantizationLoss";
  }
  virtual inline int ExactNumBottomBlobs() const { return 3; }
  virtual inline int ExactNumTopBlobs() const { return -1; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 3; }
  /// Gradients flow to all three bottoms.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return true;
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

  /// Writes L, L_s and L_d to the tops that exist.
  void SetTops(Dtype loss_s, Dtype loss_d, const vector<Blob<Dtype>*>& top);
  /// The weights w_s / bs and w_d / bs of the two gradient terms.
  void GradientScales(const vector<Blob<Dtype>*>& top, int bs,
      Dtype* scale_s, Dtype* scale_d) const;

  Dtype threshold_, alpha_s_, alpha_d_, delta_, beta_, gamma_;
  /// Per triplet: 1 where L_{d,i} > 0, else 0.
  Blob<Dtype> active_d_;
  /// Per triplet: the terms of L_s and L_d (GPU scratch).
  Blob<Dtype> loss_s_terms_, loss_d_terms_;
};

}  // namespace caffe

#endif  // CAFFE_TRIPLET_QUANTIZATION_LOSS_LAYER_HPP_
