"""Product-quantized retrieval: DQN's asymmetric quantizer distance (ADC), exact metrics, top-k.

Searched from the command line by `python -m tools.retrieval` (DQN runs), evaluated by
`python -m tools.evaluate`.

A product quantizer splits a D-dim vector into M subvectors of d = D / M dims; codebook m holds
K centroids C_m [K, d], and a database item is stored as its code h [M] (integers < K, uint8
when K <= 256, else uint16): the ids of its nearest centroids (`encode`; `decode` gives back
the concatenated centroids). Queries z stay real-valued (asymmetric). DQN (Cao et al., AAAI
2016) ranks by its asymmetric quantizer similarity

    AQD(z, h) = sum_m <z_m, C_m[h_m]>                 metric="ip", higher = closer

and ``metric="l2"`` is the squared Euclidean ADC ||z - decode(h)||^2 = sum_m ||z_m -
C_m[h_m]||^2 (lower = closer). Both are sums of per-subspace terms, so a query's M x K lookup
table T[m, k] (`lookup_tables`, computed in float64 from float32 inputs, stored as float32)
gives every score with M lookups: score[j] = sum_m T[m, h_jm] (`adc_scores`, float32 sums in
m order). With a C compiler the lookups run in native.c (tqn_adc, built on first use, see
native.py), else in numpy; both give bitwise-equal scores.

Ranking. Internally each score becomes a uint32 key that sorts best first (the IEEE bits of
the score, negated for "ip", mapped to an order-preserving unsigned integer; -0.0 and +0.0 map
to one key), and (key << 32 | database index) a unique uint64 key. Items with EXACTLY equal
scores form a tie group: with PQ, database items with the same code always tie (their sums
add the same table entries in the same order). Per query, one sort of the uint64 keys gives
the ranking with ties broken by database index, and the tie groups are its runs of equal
scores. Two orderings are reported, as in tools/hashing/metrics.py:

* tie-aware (primary): the expectation over uniformly random orders within tie groups: the
  closed forms of metrics.py (AP, MAP@R, P@k, R@k, hit@k) over the groups holding relevant
  items (T items and B relevant items before the group, n items and r relevant ones in it),
  `metrics.tie_aware_from_groups`;
* index order: ties broken by database index, from the relevance of the sorted ranking
  (`metrics.index_order_metrics`).

Top-k (`search`): np.partition of the unique uint64 keys, so the k best are exactly those of a
stable sort by (score, index), then a sort of those k.

Everything loops over chunks of queries (default: about CHUNK_ELEMENTS scores, and as many
table entries, per chunk), so memory stays bounded whatever the number of
queries. `evaluate_adc` returns the keys of tools.hashing.metrics.evaluate_codes (without the Hamming
radius ones, which PQ codes do not have).
"""
import sys

import numpy as np

from . import metrics as M
from . import native

__all__ = ["METRICS", "code_dtype", "encode", "decode", "lookup_tables", "adc_scores",
           "search", "iter_adc_chunks", "evaluate_adc"]

METRICS = ("ip", "l2")
# Default query-chunk size: about this many (query, database item) scores per chunk (and as
# many lookup-table entries). Smaller than tools.hashing.metrics.CHUNK_ELEMENTS: the ranking makes
# several passes over [chunk, ndb] arrays of 8-byte keys, which then stay in the caches
# (10 queries x 50,000 items: 2.9 ms per query against 3.6 ms with 83 queries per chunk).
CHUNK_ELEMENTS = 1 << 19
_SELF_KEY = np.uint32(0xFFFFFFFF)  # above every key of a non-NaN score
_LOW32 = np.uint64(0xFFFFFFFF)


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def code_dtype(K):
    """uint8 for K <= 256 centroids per codebook, uint16 for K <= 65536."""
    if K < 1 or K > 65536:
        raise ValueError(f"K must be in 1..65536 centroids per codebook, got {K}")
    return np.dtype(np.uint8 if K <= 256 else np.uint16)


def _check_codebooks(codebooks):
    codebooks = np.asarray(codebooks)
    if codebooks.ndim != 3 or 0 in codebooks.shape:
        raise ValueError(f"codebooks must be [M, K, d] (M codebooks of K centroids of d dims), "
                         f"got shape {codebooks.shape}")
    if codebooks.dtype.kind not in "fiu":
        raise TypeError(f"codebooks must be real numbers, got {codebooks.dtype}")
    codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
    code_dtype(codebooks.shape[1])
    if not np.all(np.isfinite(codebooks)):
        m, k, c = np.argwhere(~np.isfinite(codebooks))[0]
        raise ValueError(f"codebooks hold a non-finite value (codebook {m}, centroid {k}, "
                         f"dim {c})")
    return codebooks


def _check_vectors(z, codebooks, name="queries"):
    z = np.asarray(z)
    n_sub, _, d = codebooks.shape
    if z.ndim != 2 or z.shape[1] != n_sub * d:
        raise ValueError(f"{name} must be [n, {n_sub * d}] (M={n_sub} subspaces of d={d} "
                         f"dims), got shape {z.shape}")
    if z.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be real numbers, got {z.dtype}")
    z = np.ascontiguousarray(z, dtype=np.float32)
    if not np.all(np.isfinite(z)):
        row, col = np.argwhere(~np.isfinite(z))[0]
        raise ValueError(f"{name} hold a non-finite value (row {row}, column {col})")
    return z


def _check_codes(codes, codebooks):
    """Codes as uint8 / uint16 [n, M] (code_dtype(K)), every value checked in 0..K-1."""
    codes = np.asarray(codes)
    n_sub, k = codebooks.shape[:2]
    if codes.ndim != 2 or codes.shape[1] != n_sub:
        raise ValueError(f"codes must be [n, M={n_sub}], got shape {codes.shape}")
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers (centroid ids), got {codes.dtype}")
    if codes.size:
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= k:
            bad = low if low < 0 else high
            row, m = np.argwhere(codes == bad)[0]
            raise ValueError(f"code {bad} at row {row}, subspace {m} is out of range: "
                             f"codebooks hold K={k} centroids (ids 0..{k - 1})")
    return np.ascontiguousarray(codes, dtype=code_dtype(k))


def _check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _chunk(chunk, ndb, table_size):
    """Queries per chunk: about CHUNK_ELEMENTS scores and as many table entries."""
    if chunk is not None:
        return M.chunk_rows(chunk, ndb)
    return max(1, min(CHUNK_ELEMENTS // max(ndb, 1), CHUNK_ELEMENTS // table_size))


# ---------------------------------------------------------------------------------------
# Quantizer
# ---------------------------------------------------------------------------------------


def encode(z, codebooks, chunk=None):
    """Codes [n, M] (code_dtype(K)): in each subspace the id of the nearest centroid (ties go to
    the lowest id) -- the assignment the ProductQuantizationLoss layer trains with
    (tqn_layers.dqn.pq_encode, the one implementation), in chunks of rows."""
    from tqn_layers import dqn
    codebooks = _check_codebooks(codebooks)
    z = _check_vectors(z, codebooks, "vectors")
    n_sub, k, _ = codebooks.shape
    out = np.empty((len(z), n_sub), dtype=code_dtype(k))
    step = _chunk(chunk, k * n_sub, k * n_sub)
    for start in range(0, len(z), step):
        out[start:start + step] = dqn.pq_encode(z[start:start + step], codebooks)
    return out


def decode(codes, codebooks):
    """The quantized vectors, float32 [n, M * d]: the centroids of each code, concatenated
    (tqn_layers.dqn.pq_decode)."""
    from tqn_layers import dqn
    codebooks = _check_codebooks(codebooks)
    codes = _check_codes(codes, codebooks)
    return dqn.pq_decode(codes, codebooks).astype(np.float32)


def lookup_tables(z, codebooks, metric="ip"):
    """Per-query tables float32 [q, M, K]: ``<z_m, C_m[k]>`` ("ip") or ``||z_m - C_m[k]||^2``
    ("l2", clipped at 0), computed in float64."""
    _check_metric(metric)
    codebooks = _check_codebooks(codebooks)
    z = _check_vectors(z, codebooks)
    return _tables(z, codebooks, metric)


def _tables(z, codebooks, metric):
    n_sub, k, d = codebooks.shape
    zc = z.astype(np.float64).reshape(len(z), n_sub, d)
    cb = codebooks.astype(np.float64)
    dots = np.einsum("qmd,mkd->qmk", zc, cb, optimize=True)
    if metric == "l2":
        dots *= -2.0
        dots += np.einsum("qmd,qmd->qm", zc, zc)[:, :, None]
        dots += np.einsum("mkd,mkd->mk", cb, cb)[None]
        np.maximum(dots, 0.0, out=dots)
    return dots.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------


def adc_scores(z, codes, codebooks, metric="ip", chunk=None):
    """ADC scores float32 [q, n]: AQD ("ip", higher = closer) or squared distances ("l2",
    lower = closer) between each query and each code. Holds q * n floats; for large sets use
    `search` or `evaluate_adc`."""
    _check_metric(metric)
    codebooks = _check_codebooks(codebooks)
    z, codes = _check_vectors(z, codebooks), _check_codes(codes, codebooks)
    out = np.empty((len(z), len(codes)), dtype=np.float32)
    step = _chunk(chunk, len(codes), codebooks.shape[0] * codebooks.shape[1])
    for start in range(0, len(z), step):
        rows = slice(start, min(start + step, len(z)))
        _scores(_tables(z[rows], codebooks, metric), codes, out[rows])
    return out


def _scores(tables, codes, out):
    """out[i, j] = sum_m tables[i, m, codes[j, m]], in C (tqn_adc) or numpy: both add the
    float32 terms in m order starting from the first, so they agree bitwise."""
    if out.size == 0:
        return out
    if native.lib() is not None:
        return native.adc(tables, codes, out)
    for m in range(tables.shape[1]):
        if m == 0:
            np.take(tables[:, 0], codes[:, 0], axis=1, out=out)
        else:
            out += np.take(tables[:, m], codes[:, m], axis=1)
    return out


def _order_keys(scores, metric):
    """uint32 keys, ascending = better first; equal keys exactly for equal scores."""
    s = -scores if metric == "ip" else scores.copy()
    s += np.float32(0.0)  # -0.0 -> +0.0, so that the two zeros share one key
    u = s.view(np.uint32)
    mask = u >> np.uint32(31)  # 1 for negative scores
    mask *= np.uint32(0x7FFFFFFF)
    mask |= np.uint32(0x80000000)  # negative: flip all bits; positive: set the sign bit
    u ^= mask
    return u


def _keys64(keys):
    """(key << 32 | database index), uint64: unique, ordered by (score, index)."""
    out = keys.astype(np.uint64)
    out <<= np.uint64(32)
    out |= np.arange(keys.shape[1], dtype=np.uint64)
    return out


def _prepare(z, q_labels, codes, db_labels, codebooks, metric, exclude_self):
    _check_metric(metric)
    codebooks = _check_codebooks(codebooks)
    z, codes = _check_vectors(z, codebooks), _check_codes(codes, codebooks)
    if len(codes) >= 1 << 32:
        raise ValueError("at most 2**32 - 1 database items")
    if exclude_self and len(z) != len(codes):
        raise ValueError("exclude_self needs the query set to be the database")
    if q_labels is not None:
        q_labels, db_labels = M.check_labels(z, q_labels, codes, db_labels, exclude_self)
    return z, q_labels, codes, db_labels, codebooks


def _chunk_keys(z, codes, codebooks, metric, rows, exclude_self):
    scores = np.empty((rows.stop - rows.start, len(codes)), dtype=np.float32)
    _scores(_tables(z[rows], codebooks, metric), codes, scores)
    keys = _order_keys(scores, metric)
    if exclude_self:
        c = rows.stop - rows.start
        keys[np.arange(c), np.arange(rows.start, rows.stop)] = _SELF_KEY
    return scores, keys


# ---------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------


def search(z, codes, codebooks, k, metric="ip", exclude_self=False, chunk=None):
    """The k best database items of each query: ``(scores float32 [q, k'], ids int64 [q, k'])``,
    best first, ties broken by database index (as a stable sort by score would); k' =
    min(k, N), N = database size (minus the query itself with exclude_self, where query i is
    database item i and is left out of its own answer)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    z, _, codes, _, codebooks = _prepare(z, None, codes, None, codebooks, metric, exclude_self)
    kk = min(k, len(codes) - bool(exclude_self))
    scores_out = np.empty((len(z), max(kk, 0)), dtype=np.float32)
    ids_out = np.empty((len(z), max(kk, 0)), dtype=np.int64)
    if kk <= 0:
        return scores_out, ids_out
    step = _chunk(chunk, len(codes), codebooks.shape[0] * codebooks.shape[1])
    for start in range(0, len(z), step):
        rows = slice(start, min(start + step, len(z)))
        scores, keys = _chunk_keys(z, codes, codebooks, metric, rows, exclude_self)
        keys = _keys64(keys)
        best = keys if kk == keys.shape[1] else np.partition(keys, kk - 1, axis=1)[:, :kk]
        best.sort(axis=1)
        ids = (best & _LOW32).astype(np.int64)
        ids_out[rows] = ids
        scores_out[rows] = np.take_along_axis(scores, ids, axis=1)
    return scores_out, ids_out


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def iter_adc_chunks(z, q_labels, codes, db_labels, codebooks, metric="ip", exclude_self=False,
                    chunk=None, ks=M.DEFAULT_KS):
    """Yield ``(rows, metrics)`` per chunk of queries: per-query metrics of the ADC ranking,
    float [c] arrays under the keys of `evaluate_adc` (``map_tie_aware``, ...), plus the int
    ``queries_without_relevant`` of the chunk."""
    z, q_labels, codes, db_labels, codebooks = _prepare(z, q_labels, codes, db_labels,
                                                        codebooks, metric, exclude_self)
    for k in ks:
        M.check_k(k)
    q_lab, db_lab = _label_codes(q_labels, db_labels)
    ndb = len(codes)
    n_items = ndb - bool(exclude_self)
    step = _chunk(chunk, ndb, codebooks.shape[0] * codebooks.shape[1])
    for start in range(0, len(z), step):
        rows = slice(start, min(start + step, len(z)))
        _, keys = _chunk_keys(z, codes, codebooks, metric, rows, exclude_self)
        yield rows, _chunk_metrics(keys, q_lab[rows], db_lab, n_items, ks)


def _label_codes(q_labels, db_labels):
    """Labels as small integer codes (equal codes = equal labels), for fast gathers."""
    _, inverse = np.unique(np.concatenate([q_labels, db_labels]), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int32)
    return inverse[:len(q_labels)], inverse[len(q_labels):]


def _chunk_metrics(keys, q_lab, db_lab, n_items, ks):
    """Per-query metrics of one chunk: keys uint32 [c, ndb] (`_order_keys`, each query itself
    at _SELF_KEY if excluded), label codes of the chunk's queries and of the database, and
    n_items ranked items per query (the query itself, last, is cut off).

    One sort of the unique (key << 32 | index) keys per query gives the index-order ranking;
    its relevance goes to `metrics.index_order_metrics`. Tie groups are the runs of
    equal keys in that ranking; for each group holding relevant items, T (items before it),
    n (its size), B (relevant items before it) and r (its relevant items) feed the tie-aware
    closed forms (`metrics.tie_aware_from_groups`).
    """
    c = keys.shape[0]
    order = np.sort(_keys64(keys), axis=1)
    halves = order.view(np.uint32).reshape(c, -1, 2)[:, :n_items]
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    ranked_rel = np.take(db_lab, halves[:, :, low]) == q_lab[:, None]
    key = halves[:, :, high]  # the uint32 score keys in rank order
    is_start = np.ones((c, n_items + 1), dtype=bool)  # a tie group starts here (+ sentinel)
    np.not_equal(key[:, 1:], key[:, :-1], out=is_start[:, 1:n_items])
    del order, halves, key
    rel_rows, rel_cols = np.nonzero(ranked_rel)  # row-major: per query in rank order
    n_rel = np.bincount(rel_rows, minlength=c)
    out = M.index_order_metrics(ranked_rel, ks, (rel_rows, rel_cols))
    out = {("map" if key == "ap" else key) + "_index_order": v for key, v in out.items()
           if key != "queries_without_relevant"}
    # the tie group of each relevant item: [T, T + n) in its query's ranking
    before = rel_cols.astype(np.int64)  # T
    end = before + 1  # T + n
    tied = ~(is_start[rel_rows, rel_cols] & is_start[rel_rows, rel_cols + 1])
    if tied.any():  # group bounds from the queries that have such items
        t_rows = np.unique(rel_rows[tied])
        sub = np.zeros(c, dtype=np.int64)
        sub[t_rows] = np.arange(len(t_rows))
        width = n_items + 1
        flat_start = is_start[t_rows].ravel()
        group_of = np.cumsum(flat_start, dtype=np.int64) - 1
        starts = np.flatnonzero(flat_start)  # the sentinel closes each query's last group
        pos = sub[rel_rows[tied]] * width + rel_cols[tied]
        g = group_of[pos]
        before[tied] = rel_cols[tied] - (pos - starts[g])
        end[tied] = before[tied] + (starts[g + 1] - starts[g])
    # groups holding relevant items: runs of equal (row, T) in the relevant list
    first = np.ones(len(rel_rows), dtype=bool)
    first[1:] = (before[1:] != before[:-1]) | (rel_rows[1:] != rel_rows[:-1])
    g_first = np.flatnonzero(first)
    g_row = rel_rows[g_first]
    groups = dict(row=g_row, before=before[g_first], size=end[g_first] - before[g_first],
                  rel_before=g_first - (np.cumsum(n_rel) - n_rel)[g_row],
                  rel=np.diff(np.append(g_first, len(rel_rows))))
    out.update(M.tie_aware_from_groups(groups, n_rel, n_items, ks))
    out["queries_without_relevant"] = int(np.count_nonzero(n_rel == 0))
    return out


def evaluate_adc(q_feats, q_labels, db_codes, db_labels, codebooks, metric="ip",
                 exclude_self=False, ks=M.DEFAULT_KS, chunk=None):
    """Mean metrics of the ADC ranking of PQ codes for real-valued queries, a flat dict.

    Keys as tools.hashing.metrics.evaluate_codes (without the Hamming-radius ones): ``map_tie_aware``,
    ``map_index_order``, ``map_at_r_tie_aware``, ``map_at_r_index_order``; for each k in ks
    ``precision_at_{k}_*``, ``recall_at_{k}_*``, ``top{k}_*`` with both suffixes; and
    ``queries_without_relevant``, ``n_queries``, ``n_database`` (items ranked per query).
    metric: "ip" (DQN's AQD, higher = closer) or "l2" (squared Euclidean ADC).
    """
    sums, n_queries, without = {}, 0, 0
    for rows, metrics in iter_adc_chunks(q_feats, q_labels, db_codes, db_labels, codebooks,
                                         metric, exclude_self, chunk, ks):
        without += metrics.pop("queries_without_relevant")
        for key, values in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(np.sum(values))
        n_queries += rows.stop - rows.start
    if n_queries == 0:
        raise ValueError("no queries to evaluate")
    out = {key: value / n_queries for key, value in sums.items()}
    out.update(queries_without_relevant=without, n_queries=n_queries,
               n_database=len(db_codes) - bool(exclude_self))
    return out
