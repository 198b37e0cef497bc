"""pycaffe Python layers of DQN (Cao et al., AAAI 2016), with the C++ layers' parameters.

    layer {
      type: "Python"  name: "cosine"  bottom: "z"  bottom: "label"  top: "loss"
      python_param { module: "tqn_layers"  layer: "PairwiseCosineLossLayer"
                     param_str: "similar_value: 1  dissimilar_value: -1" }
      loss_weight: 1    # Python layers get no default loss weight, unlike Caffe's loss layers
    }

`param_str` is the protobuf text of the C++ layer's parameter message
(`PairwiseCosineLossParameter` for `type: "PairwiseCosineLoss"`), so names, defaults and checks
are the same. The numpy math is in `tqn_layers.dqn`.
"""
import caffe
from caffe.proto import caffe_pb2

from . import dqn
from .caffe_layers import parse_param


class PairwiseCosineLossLayer(caffe.Layer):
    """DQN's pairwise cosine loss; bottoms (z: N x D, labels: N values), top: the loss.

    `param_str` is a PairwiseCosineLossParameter (similar_value 1, dissimilar_value -1).
    Unlike the C++ layer, a pycaffe layer cannot refuse force_backward on its labels: asked for
    a label gradient, it writes zeros (the loss is piecewise constant in the labels)."""

    NAME = "PairwiseCosineLoss"

    def setup(self, bottom, top):
        self.param = parse_param(self.param_str, caffe_pb2.PairwiseCosineLossParameter, self.NAME)
        dqn.pairwise_cosine_check_params(self.param.similar_value, self.param.dissimilar_value,
                                         self.NAME)
        if len(bottom) != 2:
            raise ValueError(f"Layer '{self.NAME}': needs 2 bottoms (features, labels), got "
                             f"{len(bottom)}")
        if len(top) != 1:
            raise ValueError(f"Layer '{self.NAME}': has exactly 1 top, got {len(top)}")

    def reshape(self, bottom, top):
        dqn.pairwise_cosine_check_shapes(tuple(bottom[0].data.shape), bottom[1].data.size,
                                         self.NAME)
        top[0].reshape()  # scalar, as Caffe's loss layers

    def forward(self, bottom, top):
        loss, self._grad = dqn.pairwise_cosine_loss(
            bottom[0].data, bottom[1].data, similar_value=self.param.similar_value,
            dissimilar_value=self.param.dissimilar_value, layer_name=self.NAME)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = float(top[0].diff) * self._grad
        if propagate_down[1]:
            bottom[1].diff[...] = 0


def _row_length(shape):
    """D: the values in one row of an (N x ...) blob."""
    dim = 1
    for size in shape[1:]:
        dim *= int(size)
    return dim


class ProductQuantizationLossLayer(caffe.Layer):
    """DQN's product quantization loss; bottom z (N x D), top: the loss (C++ type
    "ProductQuantizationLoss"; the numpy math is `dqn.pq_loss` and `dqn.pq_kmeans`).

    `param_str` is a ProductQuantizationLossParameter (num_subspaces and
    codebook_update_interval required). Blobs, as the C++ layer's: the codebooks (M x K x D/M,
    0 at setup) and the state (forward passes counted in TRAIN, codebook updates done). Give
    the layer `param { lr_mult: 0 decay_mult: 0 }` twice: unlike the C++ layer, a pycaffe
    layer cannot see its ParamSpecs to check them. It never writes the codebooks' diff (the C++
    layer does under force_backward; the solver ignores it either way)."""

    NAME = dqn.PQ_NAME

    def setup(self, bottom, top):
        self.param = parse_param(self.param_str, caffe_pb2.ProductQuantizationLossParameter,
                                 self.NAME)
        p = self.param
        if len(bottom) != 1:
            raise ValueError(f"Layer '{self.NAME}': needs 1 bottom (z), got {len(bottom)}")
        if len(top) != 1:
            raise ValueError(f"Layer '{self.NAME}': has exactly 1 top, got {len(top)}")
        shape = tuple(bottom[0].data.shape)
        if len(shape) < 1:
            raise ValueError(f"Layer '{self.NAME}': the bottom needs a batch axis (N x D)")
        self.dim = _row_length(shape)
        dqn.pq_check_params(p.num_subspaces if p.HasField("num_subspaces") else None,
                            p.num_centroids,
                            p.codebook_update_interval if p.HasField("codebook_update_interval")
                            else None, p.buffer_size, p.kmeans_iterations, self.dim, self.NAME)
        m, k = p.num_subspaces, p.num_centroids
        if len(self.blobs) == 0:
            self.blobs.add_blob(m, k, self.dim // m)
            self.blobs.add_blob(2)
            self.blobs[0].data[...] = 0
            self.blobs[1].data[...] = 0
        self.buffer = dqn.PQRingBuffer(p.buffer_size, self.dim)
        self.have_codebooks = False

    def reshape(self, bottom, top):
        shape = tuple(bottom[0].data.shape)
        if len(shape) < 1 or shape[0] == 0:
            raise ValueError(f"Layer '{self.NAME}': the batch is empty")
        dim = _row_length(shape)
        if dim != self.dim:
            raise ValueError(f"Layer '{self.NAME}': the bottom's rows changed from D = {self.dim} "
                             f"to {dim} values (shape {shape}); the codebooks are M x K x D/M")
        top[0].reshape()  # scalar, as Caffe's loss layers

    def forward(self, bottom, top):
        p = self.param
        z = bottom[0].data
        rows = z.reshape(z.shape[0], -1)
        dqn._pq_rows(rows, self.NAME)  # the finite check, before anything is buffered
        passes, updates = dqn.pq_read_state(self.blobs[1].data, self.NAME)
        if self.phase == caffe.TRAIN:
            self.buffer.append(rows)
            passes += 1
            self.blobs[1].data[0] = passes
            if passes % p.codebook_update_interval == 0:
                dqn.pq_update_due_check(passes, self.buffer.count, p.num_centroids, self.NAME)
                self.blobs[0].data[...] = dqn.pq_kmeans(
                    self.buffer.rows(), self.blobs[0].data, p.kmeans_iterations,
                    first=updates == 0, seed=p.seed)
                updates += 1
                self.blobs[1].data[1] = updates
        self.have_codebooks = updates > 0
        if self.have_codebooks:
            loss, self._grad, _ = dqn.pq_loss(z, self.blobs[0].data, layer_name=self.NAME)
        else:
            loss, self._grad = 0.0, None
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self._grad is None:
            bottom[0].diff[...] = 0
        else:
            bottom[0].diff[...] = float(top[0].diff) * self._grad
