#ifndef CAFFE_PIECEWISE_THRESHOLD_LAYER_HPP_
#define CAFFE_PIECEWISE_THRESHOLD_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/neuron_layer.hpp"

namespace caffe {

/**
 * @brief The piece-wise threshold function of the divide-and-encode module of
 *        Lai et al., "Simultaneous Feature Learning and Hash Coding with Deep
 *        Neural Networks" (DNNH, CVPR 2015), applied element-wise to the
 *        module's sigmoid outputs @f$ s @f$:
 *
 * @f[
 *   g(s) = \left\{ \begin{array}{ll}
 *     0 & \mathrm{if}\ s < c - \epsilon \\
 *     1 & \mathrm{if}\ s > c + \epsilon \\
 *     s & \mathrm{otherwise}
 *   \end{array} \right.
 * @f]
 *
 * with the band centre @f$ c @f$ = PiecewiseThresholdParameter.center (DNNH:
 * 0.5, the threshold its binary codes are taken at) and half width
 * @f$ \epsilon @f$ = PiecewiseThresholdParameter.epsilon. DNNH gives no value
 * for @f$ \epsilon @f$: the default 0.1 is this project's choice. Both must be
 * finite with @f$ 0 \le \epsilon \le \min(c, 1 - c) @f$ (so the band lies in
 * [0, 1]); otherwise LayerSetUp fails naming the layer and the field.
 *
 * DNNH builds its divide-and-encode module as: split the (N x q bits)
 * features into `bits` slices of q values, one fully connected unit per slice,
 * a sigmoid, then @f$ g @f$. With stock Caffe layers: Reshape to
 * (N x q bits x 1 x 1), Convolution with kernel_size 1, group = bits and
 * num_output = bits (a block-diagonal fully connected layer), Sigmoid, then
 * this layer (tests/test_dnnh_layers.py checks the equivalence).
 *
 * @param bottom input Blob vector (length 1)
 *   -# @f$ (N \times \ldots) @f$ the inputs @f$ s @f$ (any finite values; in
 *      DNNH sigmoid outputs in [0, 1])
 * @param top output Blob vector (length 1)
 *   -# @f$ (N \times \ldots) @f$ the outputs @f$ g(s) @f$, same shape
 *
 * Gradient (PiecewiseThresholdParameter.gradient), with @f$ w @f$ the top diff:
 *   - EXACT (default): @f$ \partial E / \partial s = w \, g'(s) @f$ with
 *     @f$ g'(s) = 1 @f$ strictly inside the band,
 *     @f$ c - \epsilon < s < c + \epsilon @f$, and 0 outside it and at its
 *     two edges (where @f$ g @f$ jumps and has no derivative). It is the
 *     default because it is @f$ g @f$'s true derivative, the one DNNH's
 *     back-propagation through @f$ g @f$ implies.
 *   - STRAIGHT_THROUGH: @f$ \partial E / \partial s = w @f$ everywhere (the
 *     straight-through estimator), offered for users who want gradients to
 *     reach saturated units too.
 *
 * In-place use (top == bottom) is supported, forward and backward, without a
 * stored mask: Backward reads the band membership from the top data. This is
 * exact because the band lies in [0, 1]: a value strictly inside the band is
 * passed through unchanged (so it is still strictly inside), while a value
 * outside it becomes 0 or 1, and an edge value stays on its edge, none of
 * which is strictly inside the band (0 <= c - eps and 1 >= c + eps).
 * Caution: running in place on a Sigmoid's top changes what the Sigmoid's
 * Backward reads (its top, for s (1 - s)): that is still exact with EXACT
 * (g(s) = s wherever g' != 0) but wrong with STRAIGHT_THROUGH, which needs
 * a separate top after a Sigmoid.
 *
 * A non-finite input is a fatal error that names the layer, the row (first
 * axis) and the column (flat index within the row).
 */
template <typename Dtype>
class PiecewiseThresholdLayer : public NeuronLayer<Dtype> {
 public:
  explicit PiecewiseThresholdLayer(const LayerParameter& param)
      : NeuronLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "PiecewiseThreshold"; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// Fails naming the layer, row and column at the first non-finite input.
  void CheckInputFinite(const Blob<Dtype>& input) const;

  /// The band's edges, c - epsilon and c + epsilon.
  Dtype lower_, upper_;
  /// True for STRAIGHT_THROUGH.
  bool straight_through_;
};

}  // namespace caffe

#endif  // CAFFE_PIECEWISE_THRESHOLD_LAYER_HPP_
