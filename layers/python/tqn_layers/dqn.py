"""DQN's losses in numpy (what the pycaffe layers in `tqn_layers.dqn_layer` run).

Cao et al., "Deep Quantization Network for Efficient Image Retrieval" (AAAI 2016). Importable
without Caffe. The error messages are the C++ layers' own wording.
"""
import numpy as np

from .losses import check_rows_finite


# ---[ Pairwise cosine loss (C++ type "PairwiseCosineLoss")

def pairwise_cosine_check_params(similar_value, dissimilar_value,
                                 layer_name="PairwiseCosineLoss"):
    """ValueError unless both PairwiseCosineLossParameter values are finite."""
    for field, value in (("similar_value", similar_value), ("dissimilar_value", dissimilar_value)):
        if not np.isfinite(value):
            raise ValueError(f"Layer '{layer_name}': pairwise_cosine_loss_param.{field} is "
                             f"{value:.6g}; it must be a finite number")


def pairwise_cosine_check_shapes(z_shape, label_count, layer_name="PairwiseCosineLoss"):
    """ValueError unless z is (N x ...) with N >= 2 non-empty rows and there are N labels."""
    where = f"Layer '{layer_name}'"
    if len(z_shape) < 1:
        raise ValueError(f"{where}: the feature bottom needs a batch axis (N x D)")
    num = z_shape[0]
    if num < 2:
        raise ValueError(f"{where}: the batch has N = {num}; the pairwise cosine loss needs "
                         f"N >= 2 rows")
    if int(np.prod(z_shape[1:])) == 0:
        raise ValueError(f"{where}: the rows of the feature bottom are empty")
    if label_count != num:
        raise ValueError(f"{where}: the label bottom has {label_count} values but the feature "
                         f"bottom has {num} rows; give one label per row")


def pairwise_cosine_loss(z, labels, similar_value=1.0, dissimilar_value=-1.0, loss_weight=1.0,
                         layer_name="PairwiseCosineLoss"):
    """DQN's pairwise cosine loss over the N (N - 1) ordered pairs of distinct rows:

        L = 1/(N (N - 1)) sum_{i != j} (s_ij - cos(z_i, z_j))^2,
        s_ij = similar_value if labels[i] == labels[j] else dissimilar_value.

    `z` is (N, ...) with trailing axes flattened, `labels` holds N values (compared for exact
    equality). Returns (L, dL/dz) in float64, the gradient multiplied by `loss_weight` (Caffe's
    top diff) and shaped like `z`. With u_i = z_i / |z_i| and c_ij = u_i . u_j,

        dL/dz_i = 4 / (N (N - 1) |z_i|) sum_{j != i} (c_ij - s_ij) (u_j - c_ij u_i).

    A row of zeros has no cosine: ValueError naming the row (no epsilon), as in the C++ layer.
    """
    where = f"Layer '{layer_name}'"
    pairwise_cosine_check_params(similar_value, dissimilar_value, layer_name)
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).ravel()
    pairwise_cosine_check_shapes(z.shape, labels.size, layer_name)
    shape = z.shape
    num = shape[0]
    rows = z.reshape(num, -1)
    check_rows_finite(rows, where, "feature")
    bad = ~np.isfinite(labels)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{where}: the label bottom holds {labels[row]} at row {row}; labels "
                         f"must be finite")
    norms = np.sqrt((rows * rows).sum(1))
    if not np.isfinite(norms).all():
        row = int(np.argmax(~np.isfinite(norms)))
        raise ValueError(f"{where}: row {row} of the feature bottom has a norm too large for its "
                         f"type ({norms[row]})")
    if (norms == 0).any():
        row = int(np.argmax(norms == 0))
        raise ValueError(f"{where}: row {row} of the feature bottom has norm 0 (all its values "
                         f"are 0, or their squares underflow); its cosine with the other rows is "
                         f"undefined")
    unit = rows / norms[:, None]
    cosines = unit @ unit.T
    similarity = np.where(labels[:, None] == labels[None, :], similar_value, dissimilar_value)
    residuals = cosines - similarity
    np.fill_diagonal(residuals, 0.0)
    pairs = num * (num - 1)
    loss = (residuals ** 2).sum() / pairs
    row_dots = (residuals * cosines).sum(1)
    grad = (4.0 * loss_weight / pairs) / norms[:, None] * (residuals @ unit
                                                           - row_dots[:, None] * unit)
    return loss, grad.reshape(shape)


# ---[ Product quantization loss (C++ type "ProductQuantizationLoss")
#
# The math of layers/include/caffe/layers/product_quantization_loss_layer.hpp: the loss and
# gradient of fixed codebooks, and the k-means codebook update, with the same starting rows (a
# splitmix64 draw) and the same order of floating-point operations as the C++ layer.

PQ_NAME = "ProductQuantizationLoss"
_PQ_FIELD = "product_quantization_loss_param"


def pq_check_params(num_subspaces, num_centroids, codebook_update_interval, buffer_size=10000,
                    kmeans_iterations=20, dim=None, layer_name=PQ_NAME):
    """ValueError unless the ProductQuantizationLossParameter values are usable (None: a
    required field was not given); `dim` (D, the row length) must be divisible by M."""
    where = f"Layer '{layer_name}': {_PQ_FIELD}"
    if num_subspaces is None:
        raise ValueError(f"{where}.num_subspaces (M) is required")
    if num_subspaces < 1:
        raise ValueError(f"{where}.num_subspaces is {num_subspaces}; it must be >= 1")
    if not 1 <= num_centroids <= 1 << 24:
        raise ValueError(f"{where}.num_centroids is {num_centroids}; it must be between 1 and "
                         f"16777216")
    if codebook_update_interval is None:
        raise ValueError(f"{where}.codebook_update_interval is required (forward passes between "
                         f"codebook updates; DQN: 2 epochs)")
    if codebook_update_interval <= 0:
        raise ValueError(f"{where}.codebook_update_interval is {codebook_update_interval}; it "
                         f"must be > 0")
    if buffer_size < num_centroids:
        raise ValueError(f"{where}.buffer_size is {buffer_size}; it must be >= num_centroids "
                         f"({num_centroids}): k-means needs at least K rows")
    if kmeans_iterations < 1:
        raise ValueError(f"{where}.kmeans_iterations is {kmeans_iterations}; it must be >= 1")
    if dim is not None and dim % num_subspaces:
        raise ValueError(f"{where}.num_subspaces is {num_subspaces} but the bottom's rows have "
                         f"D = {dim} values; M must divide D")


def _pq_rows(z, layer_name):
    """z as (N, D) float64 rows; ValueError naming the first non-finite value."""
    z = np.asarray(z)
    if z.ndim < 1 or z.shape[0] == 0:
        raise ValueError(f"Layer '{layer_name}': the batch is empty")
    rows = z.reshape(z.shape[0], -1).astype(np.float64)
    check_rows_finite(rows, f"Layer '{layer_name}'", "z")
    return rows


def _pq_books(codebooks, dim, layer_name):
    books = np.asarray(codebooks, dtype=np.float64)
    if books.ndim != 3 or books.shape[0] * books.shape[2] != dim or books.shape[1] < 1:
        raise ValueError(f"Layer '{layer_name}': codebooks of shape {books.shape} do not fit rows "
                         f"of D = {dim} values; they must be M x K x D/M")
    return books


def _pq_nearest(x, book):
    """Per row of x (n, S): the nearest row of book (K, S) (ties: the smallest k) and its
    squared distance, summed over s in order as the C++ layer does."""
    n, S = x.shape
    codes = np.empty(n, np.int64)
    dist = np.empty(n, np.float64)
    step = max(1, (1 << 20) // book.shape[0])
    for a in range(0, n, step):
        chunk = x[a:a + step]
        d = np.zeros((chunk.shape[0], book.shape[0]))
        for s in range(S):
            t = chunk[:, s, None] - book[None, :, s]
            d += t * t
        k = d.argmin(1)  # the first minimum
        codes[a:a + step] = k
        dist[a:a + step] = d[np.arange(len(k)), k]
    return codes, dist


def _pq_assign(rows, books):
    n, M, S = rows.shape[0], books.shape[0], books.shape[2]
    codes = np.empty((n, M), np.int64)
    dist = np.empty((n, M), np.float64)
    for m in range(M):
        codes[:, m], dist[:, m] = _pq_nearest(rows[:, m * S:(m + 1) * S], books[m])
    return codes, dist


def pq_encode(z, codebooks):
    """The PQ code of each row of z (N x D, trailing axes flattened): (N, M) int64 indices of
    the nearest centroid of each subspace (ties: the smallest index)."""
    rows = _pq_rows(z, "pq_encode")
    return _pq_assign(rows, _pq_books(codebooks, rows.shape[1], "pq_encode"))[0]


def pq_decode(codes, codebooks):
    """The reconstruction of PQ codes (N, M): (N, D) rows of the chosen centroids, concatenated
    over the subspaces, in the codebooks' dtype."""
    books = np.asarray(codebooks)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != books.shape[0]:
        raise ValueError(f"pq_decode: codes of shape {codes.shape} do not fit {books.shape[0]} "
                         f"subspaces")
    if codes.size and (codes.min() < 0 or codes.max() >= books.shape[1]):
        raise ValueError(f"pq_decode: codes must lie in [0, {books.shape[1]})")
    picked = books[np.arange(books.shape[0])[None, :], codes]  # (N, M, S)
    return picked.reshape(codes.shape[0], -1)


def pq_loss(z, codebooks, loss_weight=1.0, layer_name=PQ_NAME):
    """L = 1/N sum_i sum_m |z_im - C_m[h_im]|^2 with h_im the nearest centroid (ties: the
    smallest k), for fixed codebooks (M, K, D/M). Returns (L, dL/dz, codes) in float64, the
    gradient 2 w/N (z_i - C h_i) (codebooks and codes held fixed) with w = `loss_weight` (the
    top diff), shaped like z; codes (N, M)."""
    shape = np.shape(z)
    rows = _pq_rows(z, layer_name)
    books = _pq_books(codebooks, rows.shape[1], layer_name)
    codes, dist = _pq_assign(rows, books)
    n = rows.shape[0]
    grad = (2.0 * loss_weight / n) * (rows - pq_decode(codes, books))
    return dist.sum() / n, grad.reshape(shape), codes


_MIX1, _MIX2, _GAMMA = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def splitmix64(seed, count):
    """The first `count` outputs of splitmix64 seeded with `seed` (uint64): output t (1-based)
    mixes seed + t * 0x9E3779B97F4A7C15 (mod 2^64) as the C++ layer's SplitMix64::Next."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed % (1 << 64)) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(
            _GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        return z ^ (z >> np.uint64(31))


def pq_initial_rows(n, num_centroids, num_subspaces, seed):
    """The buffer rows (numbered oldest first) the first codebook update starts from: (M, K)
    indices. For m = 0 .. M-1 in turn, a Fisher-Yates permutation p of range(n) (for j = n-1
    down to 1 swap p[j] and p[next() % (j + 1)], next() the splitmix64 stream of `seed`); the
    starting centroid k of subspace m is row p[floor(k n / K)]."""
    if n < num_centroids:
        raise ValueError(f"pq_initial_rows: {n} rows are fewer than K = {num_centroids}")
    draws = splitmix64(seed, num_subspaces * (n - 1))
    bounds = np.arange(n, 1, -1, dtype=np.uint64)  # j + 1 for j = n-1 .. 1
    positions = np.arange(num_centroids, dtype=np.int64) * n // num_centroids
    rows = np.empty((num_subspaces, num_centroids), np.int64)
    for m in range(num_subspaces):
        picks = (draws[m * (n - 1):(m + 1) * (n - 1)] % bounds).tolist()
        p = list(range(n))
        for j, r in zip(range(n - 1, 0, -1), picks):
            p[j], p[r] = p[r], p[j]
        rows[m] = np.asarray(p, np.int64)[positions]
    return rows


def pq_kmeans(rows, codebooks, iterations, first, seed=0):
    """The codebook update of the C++ layer: per subspace, up to `iterations` Lloyd iterations
    (in float64) on the sub-vectors of `rows` (n x D, the buffer oldest first), starting from
    the rows of `pq_initial_rows` when `first`, else from `codebooks` (M, K, D/M). Returns the
    new (M, K, D/M) float64 codebooks. An empty cluster keeps its centroid, except in the first
    update, where (in order of k) each takes a different row, the farthest from its assigned
    centroid (ties: the oldest). Stops early once the assignments repeat (exact: the centroids
    are then already their means)."""
    x_all = np.asarray(rows, dtype=np.float64)
    books = np.asarray(codebooks, dtype=np.float64)
    n = x_all.shape[0]
    M, K, S = books.shape
    if n < K:
        raise ValueError(f"pq_kmeans: {n} rows are fewer than K = {K}")
    start = pq_initial_rows(n, K, M, seed) if first else None
    out = np.empty_like(books)
    for m in range(M):
        x = np.ascontiguousarray(x_all[:, m * S:(m + 1) * S])
        cent = x[start[m]].copy() if first else books[m].copy()
        assign, relocated = None, False
        for _ in range(iterations):
            codes, dist = _pq_nearest(x, cent)
            changed = assign is None or bool((codes != assign).any())
            assign = codes
            if not changed and not relocated:
                break
            counts = np.bincount(codes, minlength=K)
            sums = np.stack([np.bincount(codes, weights=x[:, s], minlength=K) for s in range(S)],
                            axis=1)
            full = counts > 0
            cent[full] = sums[full] / counts[full, None]
            relocated = False
            if first and not full.all():
                taken = np.zeros(n, bool)
                for k in np.flatnonzero(~full):
                    far = int(np.argmax(np.where(taken, -np.inf, dist)))
                    taken[far] = True
                    cent[k] = x[far]
                    relocated = True
        out[m] = cent
    return out


def pq_read_state(state, layer_name=PQ_NAME):
    """(forward passes, codebook updates) from the layer's state blob (2 values), rounded."""
    v = [float(x) for x in np.ravel(state)]
    if len(v) != 2 or not all(np.isfinite(v)) or any(np.floor(x + 0.5) < 0 or x >= 9e18
                                                     for x in v):
        held = ", ".join(f"{x:g}" for x in v)
        raise ValueError(f"Layer '{layer_name}': the state blob holds ({held}); "
                         f"it must hold whole numbers >= 0 (forward passes, codebook updates): "
                         f"was it changed by the solver? Give both blobs "
                         f"`param {{ lr_mult: 0 decay_mult: 0 }}`")
    return int(np.floor(v[0] + 0.5)), int(np.floor(v[1] + 0.5))


class PQRingBuffer:
    """The most recent `capacity` rows seen (float32, as the C++ layer's float buffer)."""

    def __init__(self, capacity, dim, dtype=np.float32):
        self.capacity, self.dim = int(capacity), int(dim)
        self._data = np.empty((0, self.dim), dtype)
        self._next = 0
        self.count = 0

    def append(self, rows):
        rows = np.asarray(rows).reshape(-1, self.dim)
        for row in rows:
            if self._next >= len(self._data):  # grows until full
                grown = min(self.capacity, max(2 * len(self._data), self._next + 1))
                self._data = np.concatenate(
                    [self._data, np.empty((grown - len(self._data), self.dim), self._data.dtype)])
            self._data[self._next] = row
            self._next = (self._next + 1) % self.capacity
            self.count = min(self.count + 1, self.capacity)

    def rows(self):
        """The rows held, oldest first."""
        if self.count < self.capacity:
            return self._data[:self.count].copy()
        return np.concatenate([self._data[self._next:], self._data[:self._next]])


def pq_update_due_check(passes, rows_held, num_centroids, layer_name=PQ_NAME):
    """ValueError when a codebook update is due with fewer than K buffered rows."""
    if rows_held < num_centroids:
        raise ValueError(f"Layer '{layer_name}': a codebook update is due at forward pass {passes} "
                         f"but the buffer holds only {rows_held} rows, fewer than {_PQ_FIELD}"
                         f".num_centroids ({num_centroids}); raise codebook_update_interval or "
                         f"lower num_centroids")
