"""pycaffe Python layer of DNNH's piece-wise threshold function, with the C++ layer's parameters.

    layer {
      type: "Python"  name: "g"  bottom: "s"  top: "g"
      python_param { module: "tqn_layers"  layer: "PiecewiseThresholdLayer"
                     param_str: "epsilon: 0.1  center: 0.5  gradient: EXACT" }
    }

`param_str` is the protobuf text of PiecewiseThresholdParameter, so names, defaults and
checks are the same as with `type: "PiecewiseThreshold"  piecewise_threshold_param { ... }`.
Like the C++ layer it runs in place (top == bottom): the backward reads the band membership
from the top data (see `dnnh.piecewise_threshold_backward`). In place on a Sigmoid's top is
right with EXACT only: the Sigmoid's backward reads its top for s (1 - s), and g(s) = s wherever
g' != 0; give STRAIGHT_THROUGH a separate top.
"""
import caffe
import numpy as np
from caffe.proto import caffe_pb2

from . import dnnh
from .caffe_layers import parse_param


class PiecewiseThresholdLayer(caffe.Layer):
    """g(s) element-wise; `param_str` is a PiecewiseThresholdParameter (defaults: epsilon 0.1,
    center 0.5, gradient EXACT)."""

    def setup(self, bottom, top):
        message = caffe_pb2.PiecewiseThresholdParameter
        param = parse_param(self.param_str, message, dnnh.LAYER)
        # The float values the C++ layer sees.
        self.epsilon = float(np.float32(param.epsilon))
        self.center = float(np.float32(param.center))
        self.gradient = message.Gradient.Name(param.gradient)
        dnnh.check_piecewise_threshold_params(self.epsilon, self.center)
        if len(bottom) != 1 or len(top) != 1:
            raise ValueError(f"Layer '{dnnh.LAYER}': has exactly 1 bottom and 1 top, got "
                             f"{len(bottom)} and {len(top)}")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        # Computed in full before being written, so in place works.
        top[0].data[...] = dnnh.piecewise_threshold(bottom[0].data, self.epsilon, self.center)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = dnnh.piecewise_threshold_backward(
                top[0].data, top[0].diff, self.epsilon, self.center, self.gradient)

