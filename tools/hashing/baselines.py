"""Classical hashing baselines on extracted (or raw-pixel) features: LSH, ITQ, SDH, KSH.

Run on saved blobs by `tools.pipeline.evaluation.run_baseline_on_blobs`, and beside the deep
methods by `python -m tools.compare` and `python -m tools.replicate`. Every method learns from training features (SDH also from their labels), then encodes any
features into codes in this project's format: bool bits ``[n, nbits]`` (codes.py;
``codes.pack_bits`` gives the on-disk bytes, ``metrics.evaluate_codes`` ranks them). A bit is 1 where the real-valued projection is >= 0, i.e. where the method's
{-1, +1} code is +1 (sign(0) = +1, as in Gong's ITQ code).

* ``lsh`` -- sign random projections (Charikar 2002): centre on the training mean, project on
  ``nbits`` i.i.d. N(0, 1) directions (seeded), take the sign. For two centred vectors at
  angle theta, a bit differs with probability theta / pi.
* ``itq`` -- Iterative Quantization (Gong & Lazebnik, PAMI 2013): scikit-learn PCA to
  ``nbits`` dimensions (V, centred), random orthogonal init of R (QR of a Gaussian, seeded),
  then ``n_iter`` = 50 alternations of B = sign(VR) and R = the orthogonal Procrustes
  solution (SVD of B^T V). ``fit_info["losses"]`` holds ||B - VR||_F^2 at each (B_t, R_t),
  t = 0..n_iter, which is non-increasing.
* ``sdh`` -- Supervised Discrete Hashing (Shen et al., CVPR 2015), following the authors'
  released MATLAB code (SDH.m, RRC.m, demo_SDH.m): RBF features phi(x) on m anchors plus a
  constant 1, codes B in {-1, +1}^{n x nbits}, alternating
      G-step  W = argmin ||Y - BW||^2 + lambda ||W||^2                   (lambda = 1)
      F-step  P = argmin ||B - phi P||^2 + f_lambda ||P||^2               (f_lambda = 1e-2)
      B-step  min_B ||BW||^2 - 2 tr(B^T Q),  Q = Y W^T + nu phi P         (nu = 1e-5)
              by discrete cyclic coordinate descent (DCC), one bit (column of B) at a time:
              b_k = sign(q_k - B_{-k} W_{-k} w_k^T), exact given the other bits;
  initial B = sign(randn) (seeded), one G- and F-step, then ``n_iter`` = 5 rounds of
  B, G, F; new data is encoded as sign(phi(x) P). Choices where the paper or the code leave
  room (see `SDH`): anchors are a seeded random sample of the training set (as demo_SDH.m;
  k-means centres optional); sigma is sqrt(mean squared distance training item-anchor), the
  data-dependent width in demo_SDH.m's comments (its active line, sigma = 0.4, is for
  unit-norm GIST only); each B-step restarts DCC from B = 0, as SDH.m does, for at most 10
  sweeps (stop when ||B - B_prev||_F < 1e-6 ||B_prev||_F). ``fit_info["dcc_objectives"]``
  holds, per round, the B-step objective after each sweep (non-increasing: every sweep
  after the first starts from a {-1, +1} B and each bit update is an exact minimisation).
  The restart from 0 means the full objective (``fit_info["losses"]``) can rise between
  rounds; ``dcc_init="warm"`` (DCC from the previous B, not in SDH.m) makes every step a
  block-coordinate descent step, so it never rises.

* ``ksh`` -- Kernel-Based Supervised Hashing (Liu et al., CVPR 2012), after the authors'
  trainKSH.m: RBF kernel on 300 anchors, greedy bit-by-bit fitting of B B^T to r S0 with a
  spectral-relaxation start and gradient descent on the sigmoid-smoothed bit objective (see
  `KSH`). ``fit_info["losses"]`` holds ||r S0 - B_k B_k^T||_F^2 after each bit k.

`make_hasher(name, nbits, seed, **kw)` builds any of them; `run_baseline` fits and encodes
arrays; `raw_pixel_features` turns images into features when no trained net exists.
"""
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import euclidean_distances

__all__ = [
    "LSH",
    "ITQ",
    "SDH",
    "KSH",
    "HASHERS",
    "make_hasher",
    "run_baseline",
    "raw_pixel_features",
    "quantization_loss",
    "random_orthogonal",
    "dcc",
    "dcc_objective",
]


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------


def _check_nbits(nbits):
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits < 1:
        raise ValueError(f"nbits must be an integer >= 1, got {nbits!r}")
    return int(nbits)


def _check_features(features, name="features", dim=None):
    """float64 [n, dim] copy-free view of finite features, or a ValueError saying why not."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        kinds = " and ".join(k for k, m in (("NaN", np.isnan(array)), ("inf", np.isinf(array)))
                             if m.any())
        raise ValueError(f"{name} contain {kinds} values: {int(bad.sum())} non-finite entries "
                         f"in {rows.size} rows (first rows {rows[:5].tolist()})")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} have {array.shape[1]} dimensions, the hasher was fitted on "
                         f"{dim}")
    return array


def _check_labels(labels, n, name="labels"):
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must be 1-D with one label per item ({n}), got shape "
                         f"{labels.shape}")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise ValueError(f"{name} contain NaN or inf")
    return labels


def _bits(projections):
    """bool bits of real projections: bit = projection >= 0 (the +1 of sign, sign(0) = +1)."""
    return projections >= 0


def _pm1(projections):
    """{-1, +1} float codes, sign(0) = +1."""
    return np.where(projections >= 0, 1.0, -1.0)


# ---------------------------------------------------------------------------------------
# Hashers
# ---------------------------------------------------------------------------------------


class _Hasher:
    name = None
    supervised = False

    def __init__(self, nbits, seed=0):
        self.nbits = _check_nbits(nbits)
        self.seed = seed
        self.fit_info = None
        self.dim_ = None

    def fit(self, features, labels=None):
        """Learn from training features [n, dim] (and labels [n] if supervised); returns self."""
        x = _check_features(features, "training features")
        if self.supervised:
            if labels is None:
                raise ValueError(f"{self.name} is supervised: fit needs the training labels")
            labels = _check_labels(labels, len(x), "training labels")
        elif labels is not None:
            _check_labels(labels, len(x), "training labels")
        start = time.perf_counter()
        info = self._fit(x, labels)
        info.update(method=self.name, nbits=self.nbits, seed=self.seed, n_train=len(x),
                    dim=x.shape[1], seconds=time.perf_counter() - start)
        self.dim_ = x.shape[1]
        self.fit_info = info
        return self

    def encode(self, features):
        """Codes of features [n, dim]: bool bits [n, nbits]."""
        if self.dim_ is None:
            raise ValueError(f"{self.name} hasher is not fitted: call fit(features) first")
        x = _check_features(features, "features", dim=self.dim_)
        return _bits(self.project(x))

    def project(self, x):
        """Real-valued projections [n, nbits] whose signs are the codes."""
        raise NotImplementedError

    def _fit(self, x, labels):
        raise NotImplementedError


class LSH(_Hasher):
    """Sign random projections of mean-centred features (Charikar 2002).

    W [dim, nbits] has i.i.d. N(0, 1) entries from ``numpy.random.default_rng(seed)``;
    code = sign((x - mean_train) W). Any nbits is allowed (also nbits > dim).
    """
    name = "lsh"

    def _fit(self, x, labels):
        rng = np.random.default_rng(self.seed)
        self.mean_ = x.mean(axis=0)
        self.projection_ = rng.standard_normal((x.shape[1], self.nbits))
        return dict(iterations=0, losses=[])

    def project(self, x):
        return (x - self.mean_) @ self.projection_


def random_orthogonal(n, rng):
    """A random n x n orthogonal matrix: Q of the QR of a Gaussian, columns' signs fixed so
    that the draw is Haar-distributed."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def quantization_loss(v, rotation):
    """ITQ quantization loss ||sign(VR) - VR||_F^2 (sign(0) = +1)."""
    z = v @ rotation
    return float(np.sum((_pm1(z) - z) ** 2))


class ITQ(_Hasher):
    """Iterative Quantization (Gong & Lazebnik, PAMI 2013), unsupervised (PCA-ITQ).

    PCA: ``sklearn.decomposition.PCA(n_components=nbits, random_state=seed)`` on the training
    features (it centres them). R: random orthogonal (seeded), then ``n_iter`` iterations of
    B = sign(VR); U S Wt = svd(B^T V); R = Wt^T U^T, the R minimising ||B - VR||_F over
    orthogonal matrices. ``fit_info["losses"][t]`` = ||B_t - V R_t||_F^2 with B_t = sign(V R_t),
    t = 0..n_iter (non-increasing); ``fit_info["loss_pca"]`` is the loss with R = I (plain
    PCA sign codes). Needs nbits <= min(n_train, dim).
    """
    name = "itq"

    def __init__(self, nbits, seed=0, n_iter=50):
        super().__init__(nbits, seed)
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        self.n_iter = int(n_iter)

    def _fit(self, x, labels):
        n, dim = x.shape
        if self.nbits > dim:
            raise ValueError(f"itq: nbits={self.nbits} exceeds the feature dimension {dim} "
                             f"(PCA can give at most {dim} components)")
        if self.nbits > n:
            raise ValueError(f"itq: nbits={self.nbits} exceeds the {n} training items "
                             f"(PCA can give at most {n} components)")
        rng = np.random.default_rng(self.seed)
        self.pca_ = PCA(n_components=self.nbits, random_state=self.seed)
        v = self.pca_.fit_transform(x)
        r = random_orthogonal(self.nbits, rng)
        losses = []
        for _ in range(self.n_iter):
            b = _pm1(v @ r)
            losses.append(float(np.sum((b - v @ r) ** 2)))
            u, _, wt = np.linalg.svd(b.T @ v)
            r = wt.T @ u.T
        losses.append(quantization_loss(v, r))
        self.rotation_ = r
        return dict(iterations=self.n_iter, losses=losses,
                    loss_pca=quantization_loss(v, np.eye(self.nbits)),
                    explained_variance_ratio=float(self.pca_.explained_variance_ratio_.sum()))

    def project(self, x):
        return self.pca_.transform(x) @ self.rotation_


def dcc_objective(b, w, q):
    """SDH B-step objective ||BW||_F^2 - 2 tr(B^T Q) (||Y - BW||^2 + nu ||B - phi P||^2 up to
    a constant, when B is in {-1, +1})."""
    return float(np.sum((b @ w) ** 2) - 2.0 * np.sum(b * q))


def dcc(b, w, q, max_sweeps=10, tol=1e-6):
    """Discrete cyclic coordinate descent for min_B ||BW||^2 - 2 tr(B^T Q), B in {-1, +1}.

    b [n, L] starting codes (SDH.m starts from zeros), w [L, c], q [n, L]. Each sweep updates
    columns k = 0..L-1 in turn: b_k = sign(q_k - B_{-k} W_{-k} w_k^T) (sign(0) = +1), the exact
    minimiser over b_k given the other columns. Stops after `max_sweeps` sweeps or when
    ||B - B_prev||_F < tol ||B_prev||_F. Returns (B, objective after each sweep).
    """
    b = np.array(b, dtype=np.float64)
    gram = w @ w.T  # [L, L]
    objectives = []
    for _ in range(max_sweeps):
        previous = b.copy()
        for k in range(b.shape[1]):
            # B_{-k} W_{-k} w_k^T = B gram[:, k] - b_k gram[k, k]
            cross = b @ gram[:, k] - b[:, k] * gram[k, k]
            b[:, k] = _pm1(q[:, k] - cross)
        objectives.append(dcc_objective(b, w, q))
        if np.linalg.norm(b - previous) < tol * np.linalg.norm(previous):
            break
    return b, objectives


def _ridge(x, y, lam):
    """argmin_W ||Y - XW||_F^2 + lam ||W||_F^2 (RRC.m), via the smaller normal equations."""
    n, d = x.shape
    if n < d:
        return x.T @ np.linalg.solve(x @ x.T + lam * np.eye(n), y)
    return np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)


class SDH(_Hasher):
    """Supervised Discrete Hashing (Shen, Shen, Liu & Shen, CVPR 2015), L2 loss (SDH.m).

    Parameters (defaults = the authors' demo_SDH.m unless said):
      n_anchors  1000, capped by the number of training items;
      anchors    "random" (a seeded sample of training items, as demo_SDH.m) or "kmeans"
                 (scikit-learn KMeans centres, random_state=seed, n_init=1);
      sigma      "rms": sqrt(mean squared distance training item-anchor), demo_SDH.m's
                 commented `sigma = mean(mean(Dis)).^0.5` (its active `sigma = 0.4` assumes
                 unit-norm GIST); "nearest": mean distance to the nearest anchor (the other
                 commented line); or a positive number;
      lam        1     (gmap.lambda, ridge of the G-step W);
      nu         1e-5  (Fmap.nu, weight of the F term in the B-step);
      f_lam      1e-2  (Fmap.lambda, ridge of the F-step P; the paper's P has no ridge);
      n_iter     5     (maxItr, rounds of B-, G-, F-step after the initial G-, F-step);
      dcc_sweeps 10, dcc_tol 1e-6 (SDH.m's inner loop); tol 1e-5 (SDH.m's default early stop:
                 ||B - phi P|| < tol ||B|| or ||P - P_prev|| < tol ||P_prev||, Frobenius;
                 SDH.m uses the spectral norm of P_prev);
      dcc_init   "zeros" (SDH.m: each B-step starts DCC from B = 0) or "warm" (from the
                 previous B: the full objective then never increases).
    Labels are any hashable class ids, made one-hot over their distinct values. The initial
    B is sign(randn) from numpy.random.default_rng(seed) (after the anchor draw).
    """
    name = "sdh"
    supervised = True

    def __init__(self, nbits, seed=0, n_anchors=1000, anchors="random", sigma="rms", lam=1.0,
                 nu=1e-5, f_lam=1e-2, n_iter=5, dcc_sweeps=10, dcc_tol=1e-6, tol=1e-5,
                 dcc_init="zeros"):
        super().__init__(nbits, seed)
        if dcc_init not in ("zeros", "warm"):
            raise ValueError(f"dcc_init must be 'zeros' or 'warm', got {dcc_init!r}")
        self.dcc_init = dcc_init
        if anchors not in ("random", "kmeans"):
            raise ValueError(f"anchors must be 'random' or 'kmeans', got {anchors!r}")
        if isinstance(sigma, str):
            valid = sigma in ("rms", "nearest")
        else:
            valid = np.isscalar(sigma) and np.isreal(sigma) and np.isfinite(sigma) and sigma > 0
        if not valid:
            raise ValueError(f"sigma must be 'rms', 'nearest' or a positive number, got "
                             f"{sigma!r}")
        if int(n_anchors) < 1 or int(n_iter) < 0 or int(dcc_sweeps) < 1:
            raise ValueError("need n_anchors >= 1, n_iter >= 0, dcc_sweeps >= 1")
        if lam < 0 or nu < 0 or f_lam < 0:
            raise ValueError("lam, nu and f_lam must be >= 0")
        self.n_anchors, self.anchors, self.sigma = int(n_anchors), anchors, sigma
        self.lam, self.nu, self.f_lam = float(lam), float(nu), float(f_lam)
        self.n_iter, self.dcc_sweeps = int(n_iter), int(dcc_sweeps)
        self.dcc_tol, self.tol = float(dcc_tol), float(tol)

    def kernel_features(self, x):
        """phi(x) = [exp(-||x - a_j||^2 / (2 sigma^2)) for each anchor a_j, 1], [n, m + 1]."""
        sq = euclidean_distances(x, self.anchors_, squared=True)
        return np.hstack([np.exp(-sq / (2.0 * self.sigma_ ** 2)), np.ones((len(x), 1))])

    def objective(self, phi, y, b):
        """Full SDH objective of SDH.m's steps at the current W, P and codes b."""
        return float(np.sum((y - b @ self.w_) ** 2) + self.lam * np.sum(self.w_ ** 2)
                     + self.nu * (np.sum((b - phi @ self.p_) ** 2)
                                  + self.f_lam * np.sum(self.p_ ** 2)))

    def _fit(self, x, labels):
        n = len(x)
        classes, y_index = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"sdh needs at least 2 classes in the training labels, got "
                             f"{len(classes)}")
        y = np.zeros((n, len(classes)))
        y[np.arange(n), y_index] = 1.0
        rng = np.random.default_rng(self.seed)
        m = min(self.n_anchors, n)
        if self.anchors == "random":
            self.anchors_ = x[np.sort(rng.choice(n, size=m, replace=False))]
        else:
            km = KMeans(n_clusters=m, n_init=1, random_state=self.seed).fit(x)
            self.anchors_ = km.cluster_centers_
        sq = euclidean_distances(x, self.anchors_, squared=True)
        if self.sigma == "rms":
            sigma = float(np.sqrt(sq.mean()))
        elif self.sigma == "nearest":
            sigma = float(np.sqrt(sq.min(axis=1)).mean())
        else:
            sigma = float(self.sigma)
        if not sigma > 0:
            raise ValueError(f"sdh: RBF width sigma is {sigma} (all training items coincide "
                             f"with the anchors?); pass a positive sigma")
        self.sigma_ = sigma
        phi = np.hstack([np.exp(-sq / (2.0 * sigma ** 2)), np.ones((n, 1))])
        b = _pm1(rng.standard_normal((n, self.nbits)))
        self.w_ = _ridge(b, y, self.lam)     # G-step
        self.p_ = _ridge(phi, b, self.f_lam)  # F-step
        objectives, dcc_objectives, stop = [self.objective(phi, y, b)], [], "n_iter"
        rounds = 0
        for _ in range(self.n_iter):
            rounds += 1
            q = y @ self.w_.T + self.nu * (phi @ self.p_)
            start = np.zeros_like(b) if self.dcc_init == "zeros" else b
            b, sweeps = dcc(start, self.w_, q, self.dcc_sweeps, self.dcc_tol)
            dcc_objectives.append(sweeps)
            self.w_ = _ridge(b, y, self.lam)
            p_previous = self.p_
            self.p_ = _ridge(phi, b, self.f_lam)
            objectives.append(self.objective(phi, y, b))
            if np.linalg.norm(b - phi @ self.p_) < self.tol * np.linalg.norm(b):
                stop = "bias below tol"
                break
            if np.linalg.norm(self.p_ - p_previous) < self.tol * np.linalg.norm(p_previous):
                stop = "P change below tol"
                break
        return dict(iterations=rounds, losses=objectives, dcc_objectives=dcc_objectives,
                    stop=stop, sigma=sigma, n_anchors=m, anchors=self.anchors,
                    n_classes=int(len(classes)),
                    train_bit_agreement=float(np.mean(_bits(phi @ self.p_) == (b > 0))))

    def project(self, x):
        return self.kernel_features(x) @ self.p_


# ---------------------------------------------------------------------------------------
# KSH
# ---------------------------------------------------------------------------------------


def ksh_phi(z):
    """KSH's smooth sign: phi(z) = 2 / (1 + exp(-z)) - 1 (= tanh(z / 2))."""
    return np.tanh(0.5 * z)


def ksh_smooth_cost(a, kk, s):
    """KSH's smoothed bit objective f(a) = -phi(K a)^T S phi(K a) and its gradient in a."""
    y = ksh_phi(kk @ a)
    sy = s @ y
    return float(-(y @ sy)), -(kk.T @ (sy * (1.0 - y * y)))


def ksh_objective(codes_pm1, s0):
    """KSH's objective Q = || B B^T - r S0 ||_F^2 (codes B in {-1, +1}^{l x r}, S0 in {-1, +1})."""
    b = np.asarray(codes_pm1, dtype=float)
    return float(np.sum((b @ b.T - b.shape[1] * np.asarray(s0, dtype=float)) ** 2))


class KSHResidual:
    """The residual S_k = r S0 - Y_k Y_k^T of KSH's greedy fit, kept low-rank: S0 = 2 C C^T - 1 1^T
    (C the one-hot labels), so S v costs O(l (classes + bits)) instead of O(l^2). Supports
    `s @ v`, `v @ s` (S is symmetric), `dense()` and `frobenius2()`."""
    __array_ufunc__ = None  # makes `ndarray @ s` defer to __rmatmul__

    def __init__(self, onehot, r):
        self.c, self.r = np.asarray(onehot, dtype=float), float(r)
        self.ys = np.zeros((len(self.c), 0))

    def __matmul__(self, v):
        v = np.asarray(v, dtype=float)
        s0v = 2.0 * (self.c @ (self.c.T @ v)) - np.sum(v, axis=0, keepdims=v.ndim > 1)
        return self.r * s0v - self.ys @ (self.ys.T @ v)

    def __rmatmul__(self, v):
        return (self @ np.asarray(v, dtype=float).T).T

    def subtract(self, y):
        self.ys = np.hstack([self.ys, np.asarray(y, dtype=float)[:, None]])

    def dense(self):
        return self @ np.eye(len(self.c))

    def frobenius2(self):
        """||S||_F^2 without forming S: tr(S S) through the l x (classes + bits) factors."""
        u = np.hstack([self.c, np.ones((len(self.c), 1)), self.ys])
        w = np.diag(np.concatenate([np.full(self.c.shape[1], 2.0 * self.r), [-self.r],
                                    -np.ones(self.ys.shape[1])]))
        g = u.T @ u
        return float(np.trace(w @ g @ w @ g))


def ksh_optimize_bit(kk, s, a0, max_iter=500, tol=1e-5):
    """Gradient descent with Armijo backtracking on the smoothed bit objective from a0.

    Returns (a, costs): every accepted step lowers f (costs is non-increasing)."""
    a = np.array(a0, dtype=float)
    cost, grad = ksh_smooth_cost(a, kk, s)
    costs = [cost]
    step = 1.0 / max(1.0, float(np.linalg.norm(kk, 2)) ** 2 * len(kk) * len(kk))  # grows x2 a step
    for _ in range(max_iter):
        g2 = float(grad @ grad)
        if g2 == 0.0:
            break
        while True:
            trial = a - step * grad
            c_trial, g_trial = ksh_smooth_cost(trial, kk, s)
            if c_trial <= cost - 0.5 * step * g2 or step < 1e-20:
                break
            step *= 0.5
        if c_trial > cost:
            break
        done = cost - c_trial <= tol * abs(cost)
        a, cost, grad = trial, c_trial, g_trial
        costs.append(cost)
        step *= 2.0
        if done:
            break
    return a, costs


class KSH(_Hasher):
    """Kernel-Based Supervised Hashing (Liu, Wang, Ji, Jiang & Chang, CVPR 2012), after the
    authors' released trainKSH.m.

    Kernel features k(x) = [exp(-||x - a_j||^2 / (2 sigma^2))]_j on m anchors, centred on
    their training mean; bit k is sign((k(x) - mean) a_k). With S0 in {-1, +1}^{l x l}
    (+1 = same label) over l labelled training items and S_0 = r S0, bits are learned one at a
    time, greedily on the residual S_k = S_{k-1} - y_k y_k^T (so after r bits S_r = r S0 - B B^T
    and ||S_r||_F^2 is the paper's objective || B B^T - r S0 ||_F^2):
      spectral init  a = the top generalized eigenvector of (K^T S K, K^T K), scaled so that
                     a^T K^T K a = l (trainKSH.m);
      smoothing      minimise -phi(K a)^T S phi(K a), phi(z) = 2 / (1 + e^{-z}) - 1, from the
                     spectral a by gradient descent (at most 500 iterations, as trainKSH.m's
                     OptProjectionFast; ours uses Armijo backtracking, the released code an
                     accelerated variant);
      choice         keep the descent's a when its binary y' S y beats the spectral a's
                     (trainKSH.m).
    Parameters: n_anchors 300 and n_labeled 2000 (the paper's CIFAR-10 setting; capped by n),
    anchors and labelled items seeded random draws from the training set; sigma^2 = the mean
    squared distance item-anchor (trainKSH.m); ridge 1e-8 * trace(K^T K) / m added to K^T K
    (OURS: keeps the generalized eigenproblem defined when anchors coincide).
    """
    name = "ksh"
    supervised = True

    def __init__(self, nbits, seed=0, n_anchors=300, n_labeled=2000, max_iter=500, ridge=1e-8):
        super().__init__(nbits, seed)
        if int(n_anchors) < 1 or int(n_labeled) < 2 or int(max_iter) < 0 or ridge < 0:
            raise ValueError("need n_anchors >= 1, n_labeled >= 2, max_iter >= 0, ridge >= 0")
        self.n_anchors, self.n_labeled = int(n_anchors), int(n_labeled)
        self.max_iter, self.ridge = int(max_iter), float(ridge)

    def kernel_features(self, x):
        sq = euclidean_distances(x, self.anchors_, squared=True)
        return np.exp(-sq / (2.0 * self.sigma2_)) - self.kernel_mean_

    def _fit(self, x, labels):
        from scipy.linalg import eigh
        n = len(x)
        rng = np.random.default_rng(self.seed)
        m = min(self.n_anchors, n)
        self.anchors_ = x[np.sort(rng.choice(n, size=m, replace=False))]
        labeled = np.sort(rng.choice(n, size=min(self.n_labeled, n), replace=False))
        sq = euclidean_distances(x, self.anchors_, squared=True)
        self.sigma2_ = float(sq.mean())
        if not self.sigma2_ > 0:
            raise ValueError("ksh: every training item coincides with every anchor (sigma = 0)")
        k = np.exp(-sq / (2.0 * self.sigma2_))
        self.kernel_mean_ = k.mean(axis=0)
        kk = (k - self.kernel_mean_)[labeled]
        classes, lab = np.unique(np.asarray(labels)[labeled], return_inverse=True)
        if len(classes) < 2:
            raise ValueError("ksh needs at least 2 classes among the labelled training items")
        onehot = np.zeros((len(lab), len(classes)))
        onehot[np.arange(len(lab)), lab] = 1.0
        l, r = len(labeled), self.nbits
        rm = kk.T @ kk
        rm += self.ridge * max(np.trace(rm), 1e-300) / m * np.eye(m)
        s = KSHResidual(onehot, r)
        a_all = np.zeros((m, r))
        bits, residuals, chosen, smooth_costs = np.zeros((l, r)), [], [], []
        for b in range(r):
            lm = kk.T @ s @ kk
            lm = 0.5 * (lm + lm.T)
            _, vecs = eigh(lm, rm, subset_by_index=[m - 1, m - 1])
            a = vecs[:, 0]
            a *= np.sqrt(l / float(a @ rm @ a))
            a_gd, costs = ksh_optimize_bit(kk, s, a, self.max_iter)
            y, y_gd = _pm1(kk @ a), _pm1(kk @ a_gd)
            if y_gd @ s @ y_gd > y @ s @ y:
                a, y = a_gd, y_gd
                chosen.append("descent")
            else:
                chosen.append("spectral")
            a_all[:, b], bits[:, b] = a, y
            smooth_costs.append(costs)
            s.subtract(y)
            residuals.append(s.frobenius2())
        self.a_ = a_all
        return dict(iterations=r, losses=residuals, chosen=chosen, smooth_costs=smooth_costs,
                    n_anchors=m, n_labeled=l, sigma=float(np.sqrt(self.sigma2_)),
                    objective=ksh_objective(bits, 2.0 * onehot @ onehot.T - 1.0), labeled_rows=labeled.tolist())

    def project(self, x):
        return self.kernel_features(x) @ self.a_


HASHERS = {"lsh": LSH, "itq": ITQ, "sdh": SDH, "ksh": KSH}


def make_hasher(name, nbits, seed=0, **kw):
    """A hasher by name ('lsh', 'itq', 'sdh', 'ksh'; case-insensitive) with fit/encode/fit_info."""
    key = str(name).lower()
    if key not in HASHERS:
        raise ValueError(f"unknown hashing baseline {name!r}; known: {sorted(HASHERS)}")
    return HASHERS[key](nbits, seed=seed, **kw)


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------


def run_baseline(name, nbits, train_feats, train_labels, query_feats, database_feats, seed=0,
                 **kw):
    """Fit baseline `name` on the training set, encode query and database.

    Returns (query_bits, database_bits, info): bool [nq, nbits], bool [ndb, nbits] and the
    hasher's fit_info plus encode seconds. train_labels may be None for unsupervised methods.
    """
    hasher = make_hasher(name, nbits, seed, **kw)
    hasher.fit(train_feats, train_labels)
    start = time.perf_counter()
    query_bits = hasher.encode(query_feats)
    database_bits = hasher.encode(database_feats)
    info = dict(hasher.fit_info, encode_seconds=time.perf_counter() - start)
    return query_bits, database_bits, info


def raw_pixel_features(images, max_value=None):
    """Raw-pixel features when no trained net exists: images [n, ...] flattened to float32
    [n, prod(...)] and divided by `max_value` (default: 255 for uint8 images; required
    otherwise, e.g. 16 for scikit-learn's digits), so pixels lie in [0, 1]."""
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"images must be [n, ...] with at least 2 dimensions, got shape "
                         f"{images.shape}")
    if max_value is None:
        if images.dtype != np.uint8:
            raise ValueError(f"pass max_value for {images.dtype} images (only uint8 implies 255)")
        max_value = 255
    if not max_value > 0:
        raise ValueError(f"max_value must be > 0, got {max_value}")
    features = images.reshape(len(images), -1).astype(np.float32) / np.float32(max_value)
    return _check_features(features, "pixel features").astype(np.float32)
