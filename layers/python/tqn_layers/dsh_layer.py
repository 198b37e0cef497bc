"""pycaffe Python layer of DSH's pairwise loss, with the C++ DSHLoss layer's parameters.

    layer {
      type: "Python"  name: "dsh"  bottom: "code"  bottom: "label"  top: "loss"
      python_param { module: "tqn_layers"  layer: "DSHLossLayer"  param_str: "alpha: 0.01" }
      loss_weight: 1    # Python layers get no default loss weight, unlike Caffe's loss layers
    }

`param_str` is the protobuf text of DSHLossParameter (caffe.proto): the same names, defaults and
checks as `type: "DSHLoss"` with `dsh_loss_param { ... }`. The math is `tqn_layers.dsh`.
Like the C++ layer, it refuses to backpropagate to the labels; note that a net with
`force_backward: true` asks every Python layer for all its bottoms' gradients (Caffe's C++ loss
layers are exempt for their labels), so use this layer in nets without force_backward.
"""
import caffe
from caffe.proto import caffe_pb2

from . import dsh
from .caffe_layers import _blobs, parse_param

NAME = "DSHLoss"


class DSHLossLayer(caffe.Layer):
    """Bottoms: codes (N x k), labels (N values); top: the loss. `param_str`: DSHLossParameter."""

    def setup(self, bottom, top):
        self.param = parse_param(self.param_str, caffe_pb2.DSHLossParameter, NAME)
        dsh.check_params(self.param.margin, self.param.alpha, NAME)
        if len(bottom) != 2:
            raise ValueError(f"Layer '{NAME}': needs 2 bottoms (codes, labels), got {len(bottom)}")
        if len(top) != 1:
            raise ValueError(f"Layer '{NAME}': has exactly 1 top, got {len(top)}")

    def reshape(self, bottom, top):
        bottom = _blobs(bottom)
        dsh.check_shapes(tuple(bottom[0].data.shape), tuple(bottom[1].data.shape), NAME)
        top[0].reshape()  # scalar, as Caffe's loss layers

    def forward(self, bottom, top):
        loss, self._grad = dsh.dsh_loss(bottom[0].data, bottom[1].data, margin=self.param.margin,
                                        alpha=self.param.alpha)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise ValueError(f"Layer '{NAME}': DSHLoss cannot backpropagate to the labels (bottom 1)")
        if propagate_down[0]:
            bottom[0].diff[...] = float(top[0].diff) * self._grad
