#ifndef CAFFE_TRIPLET_LOSS_LAYER_HPP_
#define CAFFE_TRIPLET_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The triplet loss of Zhou et al., "Deep Hashing with Triplet
 *        Quantization Loss" (VCIP 2017), Eq. 1, step 1 of TQN training:
 *
 * @f[
 *   L_t = \frac{1}{2\,bs} \sum_{i=1}^{bs}
 *     \max\left(\alpha + \|f^{a_i} - f^{p_i}\|_2^2
 *                      - \|f^{a_i} - f^{n_i}\|_2^2,\; 0\right)
 * @f]
 *
 * @param bottom input Blob vector (length 3), all of one shape
 *   -# @f$ (bs \times \ldots) @f$ the anchors' features @f$ f^{a_i} @f$; each
 *      row (the first axis) is one triplet, flattened to @f$ N @f$ values
 *   -# @f$ (bs \times \ldots) @f$ the positives' features @f$ f^{p_i} @f$
 *   -# @f$ (bs \times \ldots) @f$ the negatives' features @f$ f^{n_i} @f$
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss @f$ L_t @f$
 *
 * The margin @f$ \alpha @f$ is TripletLossParameter.margin (paper: 1.6).
 * With @f$ h_i = 1[\alpha + \|f^{a_i} - f^{p_i}\|^2 - \|f^{a_i} - f^{n_i}\|^2
 * > 0] @f$ and @f$ w @f$ the top diff (the loss weight), Backward gives
 * @f$ \partial/\partial f^{a_i} = \frac{w\,h_i}{bs}(f^{n_i} - f^{p_i}) @f$,
 * @f$ \partial/\partial f^{p_i} = \frac{w\,h_i}{bs}(f^{p_i} - f^{a_i}) @f$,
 * @f$ \partial/\partial f^{n_i} = \frac{w\,h_i}{bs}(f^{a_i} - f^{n_i}) @f$.
 * At the hinge's kink (argument exactly 0) the subgradient 0 is used.
 * A non-finite input is a fatal error that names the bottom and the element.
 */
template <typename Dtype>
class TripletLossLayer : public LossLayer<Dtype> {
 public:
  explicit TripletLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "TripletLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 3; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
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

  Dtype margin_;
  /// Per triplet: 1 where the hinge is active (argument > 0), else 0.
  Blob<Dtype> active_;
  /// Per triplet: the hinge's argument (GPU scratch).
  Blob<Dtype> hinge_;
};

}  // namespace caffe

#endif  // CAFFE_TRIPLET_LOSS_LAYER_HPP_
