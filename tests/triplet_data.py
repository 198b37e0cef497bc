"""Triplet test data kept off the losses' kinks, and central differences (shared by tests)."""
import numpy as np


def off_kink_triplets(rng, bs, dim, alpha_s=0.16, delta=0.64, alpha_d=1.2, t=0.5, margin=0.4,
                      gap=0.02):
    """Uniform sigmoid-range triplets with every hinge and clip at least `gap` from its kink
    (TQN's per-bit hinge, per-bit clip and per-triplet hinge, and the triplet loss's hinge)."""
    a, p, n = (rng.uniform(0, 1, (bs, dim)) for _ in range(3))
    for _ in range(1000):
        bad_s = np.abs(alpha_s - (a - t) * (p - t)) < gap
        p[bad_s] = rng.uniform(0, 1, bad_s.sum())
        bad_c = np.abs((a - n) ** 2 - delta) < gap
        n[bad_c] = rng.uniform(0, 1, bad_c.sum())
        bad_d = np.abs(alpha_d - np.minimum((a - n) ** 2, delta).sum(1)) < gap
        n[bad_d, 0] = rng.uniform(0, 1, bad_d.sum())
        bad_t = np.abs(margin + ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1)) < gap
        n[bad_t, -1] = rng.uniform(0, 1, bad_t.sum())
        if not (bad_s.any() or bad_c.any() or bad_d.any() or bad_t.any()):
            return a, p, n
    raise AssertionError("could not move the test data off the kinks")


def numeric_gradient(f, arrays, k, eps=1e-6):
    """Central differences of scalar f(*arrays) with respect to arrays[k]."""
    grad = np.zeros_like(arrays[k])
    for idx in np.ndindex(arrays[k].shape):
        plus = [x.copy() for x in arrays]
        minus = [x.copy() for x in arrays]
        plus[k][idx] += eps
        minus[k][idx] -= eps
        grad[idx] = (f(*plus) - f(*minus)) / (2 * eps)
    return grad
