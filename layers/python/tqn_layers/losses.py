"""The TQN paper's two losses and their exact gradients, in numpy.

Zhou et al., "Deep Hashing with Triplet Quantization Loss" (VCIP 2017). `a`, `p`, `n` are
(bs, N) arrays of the anchors', positives' and negatives' latent features, one triplet a row.
These functions are what the pycaffe Python layers (`tqn_layers.caffe_layers`) run, and the
reference the C++ layers are tested against. Gradients are of the loss as written (Eqs. 1-4),
not the paper's printed Eq. 5: see `paper_eq5_gradients` and the README's erratum.
"""
import numpy as np


def check_rows_finite(rows, where, bottom=None):
    """ValueError naming the first non-finite value of `rows` (N x M) by row and column, in the
    C++ layers' wording; `where` names the layer, `bottom` the blob ("the <bottom> bottom")."""
    bad = ~np.isfinite(rows)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        blob = f"the {bottom} bottom" if bottom else "the bottom"
        raise ValueError(f"{where}: {blob} holds {rows[row, col]} at row {row}, column {col}; the "
                         f"net upstream diverged or the data holds non-finite values (lower the "
                         f"learning rate or check the input)")


def _check_triplets(a, p, n, where="triplet loss"):
    a, p, n = (np.asarray(x) for x in (a, p, n))
    if not (a.shape == p.shape == n.shape) or a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{where}: anchor, positive and negative must be non-empty arrays of one "
                         f"shape (bs x N), got {a.shape}, {p.shape}, {n.shape}")
    flat = [x.reshape(x.shape[0], -1) for x in (a, p, n)]
    for name, x in zip(("anchor", "positive", "negative"), flat):
        check_rows_finite(x, where, name)
    return flat


def triplet_loss(a, p, n, margin=1.6, loss_weight=1.0):
    """Eq. 1: L_t = 1/(2 bs) sum_i max(margin + |a_i - p_i|^2 - |a_i - n_i|^2, 0).

    Returns (L_t, (dL/da, dL/dp, dL/dn)), the gradients multiplied by `loss_weight`
    (Caffe's top diff). At the kink (argument exactly 0) the subgradient 0 is used."""
    a, p, n = _check_triplets(a, p, n, "TripletLoss")
    bs = a.shape[0]
    hinge = margin + ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1)
    loss = np.maximum(hinge, 0).sum() / (2 * bs)
    s = (loss_weight / bs) * (hinge > 0)[:, None]
    return loss, (s * (n - p), s * (p - a), s * (a - n))


def tqn_terms(a, p, n, alpha_d, threshold=0.5, alpha_s=0.16, delta=0.64):
    """L_s, L_d and their gradients per unit weight, (dL_s/da, dL_s/dp) and dL_d/dn
    (dL_d/da = -dL_d/dn, and L_s does not depend on n): the pieces Eqs. 2-3 need."""
    a, p, n = _check_triplets(a, p, n, "TripletQuantizationLoss")
    bs = a.shape[0]
    t = threshold
    hinge_s = alpha_s - (a - t) * (p - t)                    # (bs, N): one hinge per bit
    diff = a - n
    sq = diff * diff
    hinge_d = alpha_d - np.minimum(sq, delta).sum(1)          # (bs,): one hinge per triplet
    loss_s = np.maximum(hinge_s, 0).sum() / bs
    loss_d = np.maximum(hinge_d, 0).sum() / (2 * bs)
    active_s = (hinge_s > 0) / bs
    grad_s = (active_s * (t - p), active_s * (t - a))
    grad_d_n = (((hinge_d > 0)[:, None] & (sq < delta)) / bs) * diff
    return loss_s, loss_d, grad_s, grad_d_n


def combine_tqn_gradients(grad_s, grad_d_n, scale_s, scale_d):
    """(dE/da, dE/dp, dE/dn) for E = scale_s L_s + scale_d L_d."""
    gd = scale_d * grad_d_n
    return scale_s * grad_s[0] - gd, scale_s * grad_s[1], gd


def triplet_quantization_loss(a, p, n, alpha_d, threshold=0.5, alpha_s=0.16, delta=0.64,
                              beta=8.0, gamma=1.0, loss_weights=(1.0, 0.0, 0.0)):
    """Eqs. 2-4.

        L_s = 1/bs     sum_i sum_j max(alpha_s - (a_ij - t)(p_ij - t), 0)
        L_d = 1/(2 bs) sum_i max(alpha_d - sum_j min((a_ij - n_ij)^2, delta), 0)
        L   = beta L_s + gamma L_d

    Returns (L, L_s, L_d, (dE/da, dE/dp, dE/dn)) where E = w0 L + w1 L_s + w2 L_d for
    `loss_weights` (w0, w1, w2), Caffe's diffs of the layer's three tops. L_s's hinge is
    per (triplet, bit); L_d's gradient on the anchor is -(a - n), on the negative +(a - n)."""
    loss_s, loss_d, grad_s, grad_d_n = tqn_terms(a, p, n, alpha_d, threshold, alpha_s, delta)
    w0, w1, w2 = loss_weights
    grads = combine_tqn_gradients(grad_s, grad_d_n, beta * w0 + w1, gamma * w0 + w2)
    return beta * loss_s + gamma * loss_d, loss_s, loss_d, grads


def paper_eq5_gradients(a, p, n, alpha_d, threshold=0.5, alpha_s=0.16, delta=0.64, beta=8.0,
                        gamma=1.0):
    """The gradients exactly as printed in the paper (Eqs. 5-7), for comparison only.

    They differ from the loss's true gradient in two places: Eq. 5's L_d term has the
    wrong sign (+(a - n) instead of -(a - n)), and Eqs. 5-6 gate L_s's term with the
    per-triplet indicator 1[L_{s,i} > 0] although the hinge sits inside the sum over bits
    (the true indicator is per triplet and bit). Do not train with these."""
    a, p, n = _check_triplets(a, p, n, "paper Eq. 5")
    bs = a.shape[0]
    t = threshold
    loss_s_i = np.maximum(alpha_s - (a - t) * (p - t), 0).sum(1)
    sq = (a - n) ** 2
    loss_d_i = np.maximum(alpha_d - np.minimum(sq, delta).sum(1), 0)
    ind_s = (loss_s_i > 0)[:, None]
    ind_d = (loss_d_i > 0)[:, None] & (delta - sq > 0)
    da = beta / bs * (t - p) * ind_s + gamma / bs * (a - n) * ind_d
    dp = beta / bs * (t - a) * ind_s
    dn = gamma / bs * (a - n) * ind_d
    return da, dp, dn
