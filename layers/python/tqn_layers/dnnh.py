"""DNNH's piece-wise threshold function and triplet ranking loss, in numpy.

Lai et al., "Simultaneous Feature Learning and Hash Coding with Deep Neural Networks"
(DNNH, CVPR 2015). Its divide-and-encode module cuts the (N, q * bits) features into `bits`
slices of q values, maps each slice to one unit with its own fully connected weights, applies
a sigmoid, then the piece-wise threshold function

    g(s) = 0 if s < center - epsilon;  1 if s > center + epsilon;  s otherwise

(center 0.5; DNNH gives no value for epsilon, the default 0.1 is this project's choice).
DNNH's binary codes are the g outputs thresholded at 0.5 (`tools.hashing.codes.binarize`).
In Caffe the slice-wise part is stock layers (Reshape, Convolution with kernel_size 1,
group = bits, num_output = bits, Sigmoid) followed by the PiecewiseThreshold layer, whose
parameters (PiecewiseThresholdParameter) and checks these functions share.

DNNH's triplet ranking loss is max(0, 1 - (|F(I) - F(I-)|^2 - |F(I) - F(I+)|^2)) per triplet;
averaged over a batch's triplets it equals the project's TripletLoss with margin 1 and
loss_weight 2 (`dnnh_triplet_ranking_loss`).
"""
import math

import numpy as np

from .losses import _check_triplets, check_rows_finite

LAYER = "PiecewiseThreshold"
GRADIENTS = ("EXACT", "STRAIGHT_THROUGH")


def check_piecewise_threshold_params(epsilon, center, layer_name=LAYER):
    """Raises ValueError, with the C++ layer's wording, unless center is in [0, 1] and
    epsilon in [0, min(center, 1 - center)] (both finite)."""
    epsilon, center = float(epsilon), float(center)
    if not (math.isfinite(center) and 0 <= center <= 1):
        raise ValueError(f"Layer '{layer_name}': piecewise_threshold_param.center is {center:.6g}; "
                         f"it must be a finite number in [0, 1] (DNNH: 0.5)")
    max_epsilon = min(center, 1 - center)
    if not (math.isfinite(epsilon) and 0 <= epsilon <= max_epsilon):
        raise ValueError(f"Layer '{layer_name}': piecewise_threshold_param.epsilon is "
                         f"{epsilon:.6g}; it must be a finite number in [0, min(center, 1 - "
                         f"center)] = [0, {max_epsilon:.6g}] (the band must lie in [0, 1])")


def check_finite_input(s, layer_name=LAYER):
    """Raises ValueError naming the row (first axis) and column (flat index within the row)
    of the first non-finite value, with the C++ layer's wording."""
    s = np.asarray(s)
    if s.size == 0:
        return
    rows = s.reshape(s.shape[0] if s.ndim else 1, -1)
    check_rows_finite(rows, f"Layer '{layer_name}'")


def _band(epsilon, center, dtype):
    # The edges as the C++ layer computes them: in double from the float parameters, then
    # rounded to the data type.
    return dtype.type(float(center) - float(epsilon)), dtype.type(float(center) + float(epsilon))


def piecewise_threshold(s, epsilon=0.1, center=0.5):
    """g(s) element-wise (same shape and floating dtype as `s`)."""
    check_piecewise_threshold_params(epsilon, center)
    s = np.asarray(s)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    check_finite_input(s)
    lower, upper = _band(epsilon, center, s.dtype)
    return np.where(s < lower, s.dtype.type(0), np.where(s > upper, s.dtype.type(1), s))


def piecewise_threshold_backward(values, top_diff, epsilon=0.1, center=0.5, gradient="EXACT"):
    """The bottom diff for `top_diff`.

    EXACT: top_diff * g'(s), g' = 1 strictly inside the band (center - epsilon,
    center + epsilon), 0 outside and at its edges. STRAIGHT_THROUGH: top_diff unchanged.
    `values` may be the inputs s or the outputs g(s): since the band lies in [0, 1], g(s) is
    strictly inside the band exactly when s is (what lets the layers run in place)."""
    check_piecewise_threshold_params(epsilon, center)
    if gradient not in GRADIENTS:
        raise ValueError(f"Layer '{LAYER}': piecewise_threshold_param.gradient is {gradient!r}; "
                         f"it must be one of {GRADIENTS}")
    top_diff = np.asarray(top_diff)
    if gradient == "STRAIGHT_THROUGH":
        return top_diff.copy()
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    lower, upper = _band(epsilon, center, values.dtype)
    return np.where((values > lower) & (values < upper), top_diff, top_diff.dtype.type(0))


def dnnh_triplet_ranking_loss(a, p, n):
    """DNNH's triplet ranking loss averaged over the bs triplets (rows of a, p, n):

        L = 1/bs sum_i max(0, 1 - (|a_i - n_i|^2 - |a_i - p_i|^2))

    Returns (L, (dL/da, dL/dp, dL/dn)): with h_i = 1[1 + |a_i - p_i|^2 - |a_i - n_i|^2 > 0]
    (subgradient 0 at the kink), dL/da_i = 2 h_i (n_i - p_i) / bs,
    dL/dp_i = 2 h_i (p_i - a_i) / bs, dL/dn_i = 2 h_i (a_i - n_i) / bs.
    This is 2 x TripletLoss(margin 1), whose loss is 1/(2 bs) sum_i max(...)."""
    a, p, n = _check_triplets(a, p, n, "DNNH triplet ranking loss")
    bs = a.shape[0]
    hinge = 1.0 - (((a - n) ** 2).sum(1) - ((a - p) ** 2).sum(1))
    loss = np.maximum(hinge, 0).sum() / bs
    s = (2.0 / bs) * (hinge > 0)[:, None]
    return loss, (s * (n - p), s * (p - a), s * (a - n))
