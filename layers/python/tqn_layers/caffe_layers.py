"""pycaffe Python layers of the TQN losses, with the C++ layers' parameters.

Use them as

    layer {
      type: "Python"  name: "tqn"  bottom: "fa"  bottom: "fp"  bottom: "fn"  top: "loss"
      python_param { module: "tqn_layers"  layer: "TripletQuantizationLossLayer"
                     param_str: "alpha_d: 3.83  beta: 8  gamma: 1" }
      loss_weight: 1    # Python layers get no default loss weight, unlike Caffe's loss layers
    }

`param_str` is the protobuf text of the C++ layer's parameter message
(`TripletLossParameter`, `TripletQuantizationLossParameter` in caffe.proto), so names,
defaults and checks are the same as with `type: "TripletLoss"` / `"TripletQuantizationLoss"`
and `triplet_loss_param { ... }` / `triplet_quantization_loss_param { ... }`.
"""
import math

import caffe
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from . import losses


def parse_param(param_str, message_type, layer_name):
    """Parses `param_str` as the protobuf text of `message_type` (e.g. "margin: 1.6")."""
    message = message_type()
    try:
        text_format.Parse(param_str or "", message)
    except text_format.ParseError as e:
        raise ValueError(f"Layer '{layer_name}': param_str {param_str!r} is not a valid "
                         f"{message_type.DESCRIPTOR.name} ({e})") from None
    return message


def _require(layer_name, message, name, value, strictly_positive=False):
    ok = math.isfinite(value) and (value > 0 if strictly_positive else value >= 0)
    if not ok:
        raise ValueError(f"Layer '{layer_name}': {message}.{name} is {value:.6g}; it must be a finite "
                         f"number {'> 0' if strictly_positive else '>= 0'}")


def _reshape_triplet(layer_name, bottom, top):
    bottom, top = _blobs(bottom), _blobs(top)
    if len(bottom) != 3:
        raise ValueError(f"Layer '{layer_name}': needs 3 bottoms (anchor, positive, negative), "
                         f"got {len(bottom)}")
    shapes = [tuple(b.data.shape) for b in bottom]
    if len(set(shapes)) != 1 or len(shapes[0]) < 1 or shapes[0][0] == 0:
        raise ValueError(f"Layer '{layer_name}': the anchor, positive and negative bottoms have "
                         f"shapes {shapes}; they must be (bs x N) blobs of one shape")
    for t in top:
        t.reshape()  # scalar, as Caffe's loss layers


def _rows(blob):
    return blob.data.reshape(blob.data.shape[0], -1)


def _blobs(vector):
    """pycaffe's blob vectors index but do not iterate."""
    return [vector[i] for i in range(len(vector))]


class TripletLossLayer(caffe.Layer):
    """Eq. 1; `param_str` is a TripletLossParameter (default margin 1.6)."""

    def setup(self, bottom, top):
        self.param = parse_param(self.param_str, caffe_pb2.TripletLossParameter, "TripletLoss")
        _require("TripletLoss", "triplet_loss_param", "margin", self.param.margin)
        if len(top) != 1:
            raise ValueError(f"Layer 'TripletLoss': has exactly 1 top, got {len(top)}")

    def reshape(self, bottom, top):
        _reshape_triplet("TripletLoss", bottom, top)

    def forward(self, bottom, top):
        loss, self._grads = losses.triplet_loss(*(_rows(b) for b in _blobs(bottom)),
                                                margin=self.param.margin)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        w = float(top[0].diff)
        for k in range(3):
            if propagate_down[k]:
                bottom[k].diff[...] = (w * self._grads[k]).reshape(bottom[k].diff.shape)


class TripletQuantizationLossLayer(caffe.Layer):
    """Eqs. 2-4; `param_str` is a TripletQuantizationLossParameter (alpha_d required).

    Tops: L = beta L_s + gamma L_d, and optionally L_s and L_d alone (for plotting)."""

    def setup(self, bottom, top):
        name = "TripletQuantizationLoss"
        self.param = parse_param(self.param_str, caffe_pb2.TripletQuantizationLossParameter, name)
        q = self.param
        if not q.HasField("alpha_d"):
            raise ValueError(f"Layer '{name}': triplet_quantization_loss_param.alpha_d is "
                             f"required: take it from the paper's Table I or from Eq. 16 "
                             f"(prototxt/tqn_params.py)")
        if not math.isfinite(q.threshold):
            raise ValueError(f"Layer '{name}': triplet_quantization_loss_param.threshold must be finite")
        for field in ("alpha_s", "alpha_d", "beta", "gamma"):
            _require(name, "triplet_quantization_loss_param", field, getattr(q, field))
        _require(name, "triplet_quantization_loss_param", "delta", q.delta, strictly_positive=True)
        if not 1 <= len(top) <= 3:
            raise ValueError(f"Layer '{name}': has 1 to 3 tops (L, L_s, L_d), got {len(top)}")

    def reshape(self, bottom, top):
        _reshape_triplet("TripletQuantizationLoss", bottom, top)

    def forward(self, bottom, top):
        q = self.param
        loss_s, loss_d, self._grad_s, self._grad_d_n = losses.tqn_terms(
            *(_rows(b) for b in _blobs(bottom)), alpha_d=q.alpha_d, threshold=q.threshold,
            alpha_s=q.alpha_s, delta=q.delta)
        values = (q.beta * loss_s + q.gamma * loss_d, loss_s, loss_d)
        for t, value in zip(_blobs(top), values):
            t.data[...] = value

    def backward(self, top, propagate_down, bottom):
        q = self.param
        w = [float(top[k].diff) if k < len(top) else 0.0 for k in range(3)]
        grads = losses.combine_tqn_gradients(self._grad_s, self._grad_d_n,
                                             q.beta * w[0] + w[1], q.gamma * w[0] + w[2])
        for k in range(3):
            if propagate_down[k]:
                bottom[k].diff[...] = grads[k].reshape(bottom[k].diff.shape)
