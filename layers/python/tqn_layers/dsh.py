"""DSH's pairwise loss and its gradient, in numpy (what `dsh_layer.DSHLossLayer` runs).

Liu et al., "Deep Supervised Hashing for Fast Image Retrieval" (CVPR 2016), Eq. 3 with its
regularizer, averaged over all P = N (N - 1) / 2 unordered pairs i < j of a batch of N codes b_i
(the linear output of the net) with labels l_i:

    L = 1/P sum_{i<j} [ 1/2 (1 - y_ij) D_ij + 1/2 y_ij max(m - D_ij, 0) + alpha (r_i + r_j) ]
      = 1/P sum_{i<j} [ pair terms ] + (2 alpha / N) sum_i r_i

with D_ij = |b_i - b_j|^2, r_i = | |b_i| - 1 |_1, y_ij = 0 if l_i == l_j else 1. The margin m = 0
means DSH's 2k (k the code length). Same parameters, checks and messages as the C++ DSHLoss layer.
"""
import math

import numpy as np

from .losses import check_rows_finite


def effective_margin(margin, k):
    """The margin in use: `margin`, or 2k when it is 0 (DSH's choice)."""
    return float(margin) if margin > 0 else 2.0 * k


def check_params(margin, alpha, layer_name="DSHLoss"):
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"Layer '{layer_name}': dsh_loss_param.margin is {margin:.6g}; it must be a "
                         f"finite number >= 0 (0 means twice the code length, DSH's choice)")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"Layer '{layer_name}': dsh_loss_param.alpha is {alpha:.6g}; it must be a "
                         f"finite number >= 0 (DSH uses 0.01)")


def check_shapes(codes_shape, labels_shape, layer_name="DSHLoss"):
    """The C++ layer's Reshape checks, on shapes (tuples)."""
    if len(codes_shape) < 1:
        raise ValueError(f"Layer '{layer_name}': the codes bottom needs a batch axis (N x k)")
    n = codes_shape[0]
    if n < 2:
        raise ValueError(f"Layer '{layer_name}': the batch has {n} row(s); DSHLoss needs at least "
                         f"2 to form a pair")
    if int(np.prod(codes_shape[1:], dtype=np.int64)) == 0:
        raise ValueError(f"Layer '{layer_name}': the codes bottom has shape {tuple(codes_shape)}; "
                         f"its rows are empty")
    if int(np.prod(labels_shape, dtype=np.int64)) != n:
        raise ValueError(f"Layer '{layer_name}': the label bottom has shape {tuple(labels_shape)} but "
                         f"the codes bottom has {n} rows {tuple(codes_shape)}; give one label per row")


def check_inputs(codes, labels, layer_name="DSHLoss"):
    """Shapes, finite codes and integer labels; returns codes as (N, k) and labels as (N,)."""
    codes, labels = np.asarray(codes), np.asarray(labels)
    check_shapes(codes.shape, labels.shape, layer_name)
    b = codes.reshape(codes.shape[0], -1)
    check_rows_finite(b, f"Layer '{layer_name}'", "codes")
    lab = labels.reshape(-1)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(lab) | (lab != np.floor(lab))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"Layer '{layer_name}': the label bottom holds {lab[row]} at row {row}; "
                         f"labels must be integer class ids (bottom 1 is the labels, bottom 0 the "
                         f"codes)")
    return b, lab


def regularizer_sign(b):
    """The subgradient of | |b| - 1 | elementwise: sign(|b| - 1) sign(b), 0 at b = 0, +-1."""
    return np.sign(np.abs(b) - 1) * np.sign(b)


def dsh_loss(codes, labels, margin=0.0, alpha=0.01, loss_weight=1.0):
    """Returns (L, dL/dcodes * loss_weight); the gradient has the codes' shape.

    At the kinks (b = 0, |b| = 1, m - D_ij = 0) the subgradient 0 is used."""
    check_params(margin, alpha)
    shape = np.shape(codes)
    b, lab = check_inputs(codes, labels)
    b = b.astype(np.float64)
    n, k = b.shape
    m = effective_margin(margin, k)
    pairs = n * (n - 1) / 2
    diff = b[:, None, :] - b[None, :, :]                  # (N, N, k): b_i - b_j
    dist = (diff * diff).sum(2)
    similar = lab[:, None] == lab[None, :]
    hinge = m - dist
    terms = np.where(similar, dist / 2, np.maximum(hinge, 0) / 2)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    r = np.abs(np.abs(b) - 1).sum(1)
    loss = terms[upper].sum() / pairs + 2 * alpha / n * r.sum()
    coef = np.where(similar, 1.0, -(hinge > 0).astype(float))
    np.fill_diagonal(coef, 0)
    grad = (coef[:, :, None] * diff).sum(1) / pairs + 2 * alpha / n * regularizer_sign(b)
    return loss, (loss_weight * grad).reshape(shape)
