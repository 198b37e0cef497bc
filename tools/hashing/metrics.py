"""Retrieval metrics for Hamming ranking (exact, tie-aware) and for real-valued ranking.

Relevance. Query i and database item j are relevant when their integer labels are
equal (class ids, or In-shop item ids). With ``exclude_self=True`` the query set is the
database (protocol "dsh": query = database = test set), query i is database item i, and
each query is removed from its own ranking, which then holds N = ndb - 1 items.

Queries without relevant items (R = 0) get AP, MAP@R, recall and hit 0 and stay in every
mean (they are not dropped); `average_precision_*` also return how many there are.

Histograms. Hamming distances take only nbits + 1 values, so for one query everything a
tie-aware metric needs is two histograms over the distance d = 0..nbits:
``tot[d]`` (database items at distance d) and ``rel[d]`` (relevant ones among them).
`hamming_histograms` builds them for a query chunk with one bincount; every tie-aware
metric is then a closed form in O(nbits) per query, vectorized over queries.

Two orderings of the ranking are reported for every rank-based metric:

* tie-aware (primary): the exact expectation of the metric when the items of each group
  of equal distance come in uniformly random order (McSherry & Najork 2008, "Computing
  information retrieval performance measures efficiently in the presence of tied
  scores"). It does not depend on the database order, unlike any tie-breaking rule;
* index order: ties broken by database index, i.e. a stable sort by distance (what a
  plain ``argsort(kind='stable')`` evaluation reports). The `*_index_order` functions take
  the relevance of the ranked list, bool ``[nq, N]``, which `hamming_ranked_relevance`
  builds with a stable argsort of the small-integer distance rows (numpy's radix sort,
  O(N) per query). Precision / hit within a Hamming radius are sets and need neither.

Tie-aware closed forms. For one query, group d holds n_d = tot[d] items, r_d = rel[d] of
them relevant; T_d = sum_{e<d} n_e items and B_d = sum_{e<d} r_e relevant items are ranked
before it; R = sum_d r_d, N = sum_d n_d; H_t = 1 + 1/2 + ... + 1/t (H_0 = 0).

Lemma. In a uniformly random order of a group of n items, r relevant, position j is
relevant with probability r/n; given that, the other r - 1 relevant items fall among the
j - 1 earlier positions hypergeometrically, (j-1)(r-1)/(n-1) of them on average. So, by
linearity of expectation, the expected sum of rel(p) * P(p) (P = precision at rank p)
over the first m positions p = T + j, j = 1..m, of the group is

    S(m) = (r/n) sum_{j=1}^{m} (B + 1 + (j-1) c) / (T + j),   c = (r-1)/(n-1) (0 if n = 1)
         = (r/n) [ (B + 1) dH + c G ],   dH = H_{T+m} - H_T,   G = m - (T + 1) dH,

using j - 1 = (T + j) - (T + 1) (dH = psi(T+m+1) - psi(T+1), psi the digamma function).
R does not depend on the order, so expectations of AP and MAP@R are sums of S terms:

    AP      = (1/R) sum_d S_d(n_d)                                  (full ranking)
    MAP@R   = (1/R) sum_d S_d(m_d),  m_d = clip(R - T_d, 0, n_d)    (first R positions)
    P@k     = sum_d (r_d/n_d) clip(k - T_d, 0, n_d) / min(k, N)
    R@k     = sum_d (r_d/n_d) clip(k - T_d, 0, n_d) / R
    hit@k   = 1 - [B_s = 0] * C(n_s - r_s, m_s) / C(n_s, m_s)

where s is the group straddling rank k (T_s < k < T_s + n_s, m_s = k - T_s): the top k
holds a relevant item surely if one lies in a group fully inside the top k (B_s > 0),
and otherwise misses with the hypergeometric probability of drawing m_s items of group s,
none relevant; the ratio is prod_{i<min(m,r)} (n - max(m,r) - i) / (n - i), 1 when no
group straddles k. P@k divides by min(k, N), the length of the returned list.

Floating point: dH and G = sum_{j=1}^{m} (j-1)/(T+j) are evaluated to
nearly full float64 relative precision (`_harmonic_sums`); a plain digamma difference
would not be enough, since a few items after millions of others make dH tiny next to
H_T and G tiny next to m. All terms of S are then positive, so tie-aware AP and MAP@R
carry relative errors of about 1e-15, even for a query whose only relevant items come
after 10^7 others.

Real-valued features are ranked by squared Euclidean distance with ties broken by
database index. Distances are double sums of squared differences in coordinate order
(`euclidean_distances`, the rule both backends follow bitwise), so equal true distances
compare equal wherever the inputs make the arithmetic exact (e.g. integer-valued features);
exact ties have probability zero for continuous features, so no tie-aware variant is given
(`euclidean_metrics`; C kernel tqn_euclid for float32 features).

Speed and memory (`evaluate_codes`, `hamming_histograms`). With a C compiler the hot
path is one scan of the database per query in C (native.c, built on first use, see
native.py): XOR + popcount of 64-bit words, the histograms, and the index-order
statistics from running counts per distance -- the rank of relevant item j at distance d is
T_d + #{i < j : d_i = d} + 1, a counting sort, O(ndb + nbits) per query and no [nq, ndb]
array at all. Without one, the same numbers come from numpy: distances per chunk of queries,
a stable argsort per row (numpy's radix sort for <= 16-bit integers, O(N), no comparisons),
histograms from the sorted rows, and the index-order sums over the relevant positions only.
Both backends give identical histograms and ranks; index-order sums agree to ~1e-16
(compensated summation in C, pairwise in numpy). Everything loops over chunks of queries, so
memory is bounded by chunk * ndb elements (numpy) or chunk * (nbits + 1) histogram cells
plus O(ndb) per query (C), whatever the number of queries.
"""
import numpy as np
from scipy.special import digamma

from . import native
from .codes import check_words, hamming, to_words

__all__ = [
    "hamming_histograms",
    "hamming_ranked_relevance",
    "iter_hamming_chunks",
    "average_precision_tie_aware",
    "average_precision_index_order",
    "map_at_r_tie_aware",
    "map_at_r_index_order",
    "precision_at_k_tie_aware",
    "precision_at_k_index_order",
    "recall_at_k_tie_aware",
    "recall_at_k_index_order",
    "top_k_hit_rate_tie_aware",
    "top_k_hit_rate_index_order",
    "precision_within_radius",
    "pr_curve_by_radius",
    "euclidean_metrics",
    "euclidean_distances",
    "evaluate_codes",
    "evaluate_features",
    "relative_drop",
    "groups_from_histograms",
    "tie_aware_from_groups",
    "index_order_metrics",
    "index_order_stats",
    "index_order_from_stats",
    "check_labels",
    "check_k",
    "chunk_rows",
]

# Default query-chunk size: about this many (query, database item) pairs per chunk.
CHUNK_ELEMENTS = 1 << 22
# Default query-chunk size of the C scan (no [chunk, ndb] arrays): about this many
# histogram cells (query, distance) per chunk.
HISTOGRAM_CHUNK_CELLS = 1 << 19
DEFAULT_KS = (1, 5, 10, 20, 100)
DEFAULT_RADII = (2,)
# per-query AP is reported as "map" once averaged
_INDEX_ORDER_NAMES = {"ap": "map"}
# _harmonic_sums: direct summation below this x; asymptotic series of the digamma
# function above it, as (p, B_p / p) for psi(z) ~ ln z - 1/(2z) - sum_p B_p / (p z^p)
_DIRECT_TERMS = 64
_PSI_SERIES = ((2, 1 / 12), (4, -1 / 120), (6, 1 / 252), (8, -1 / 240))


# ---------------------------------------------------------------------------------------
# Distances -> histograms and ranked relevance
# ---------------------------------------------------------------------------------------


def iter_hamming_chunks(q_words, q_labels, db_words, db_labels, nbits, exclude_self=False,
                        chunk=None, ranked=True):
    """Yield ``(rows, rel, tot, ranked_rel)`` for consecutive chunks of queries.

    rows: slice of the query chunk; rel, tot: int64 [c, nbits + 1] histograms;
    ranked_rel: bool [c, N], relevance of the database ranked by (distance, index), or
    None when ``ranked=False``. chunk: queries per chunk (default: CHUNK_ELEMENTS / ndb).
    """
    q_words, db_words = check_words(q_words, db_words)
    q_labels, db_labels = check_labels(q_words, q_labels, db_words, db_labels, exclude_self)
    _check_nbits(q_words, nbits)
    relevance = None if ranked else _relevance_index(q_labels, db_labels)
    step = chunk_rows(chunk, len(db_labels))
    for start in range(0, len(q_words), step):
        rows = slice(start, min(start + step, len(q_words)))
        if relevance is not None:
            rel, tot, _ = native.scan(q_words[rows], db_words, _rows_of(relevance, rows),
                                       nbits + 1, start if exclude_self else -1)
            yield rows, rel, tot, None
            continue
        dist, same = _distances(rows, q_words, q_labels, db_words, db_labels, nbits,
                                exclude_self)
        if ranked:
            rel, tot, ranked_rel, _ = _sorted_chunk(dist, same, nbits)
            yield rows, rel, tot, ranked_rel
        else:
            yield rows, *_histograms(dist, same, nbits), None


def hamming_histograms(q_words, q_labels, db_words, db_labels, nbits, exclude_self=False,
                       chunk=None):
    """Per-query histograms ``(rel, tot)``, int64 [nq, nbits + 1], over Hamming distance.

    tot[i, d] counts the database items at distance d from query i, rel[i, d] the
    relevant ones (equal label) among them.
    """
    parts = [(rel, tot) for _, rel, tot, _ in iter_hamming_chunks(
        q_words, q_labels, db_words, db_labels, nbits, exclude_self, chunk, ranked=False)]
    if not parts:
        empty = np.zeros((0, nbits + 1), dtype=np.int64)
        return empty, empty.copy()
    return tuple(np.concatenate(p) for p in zip(*parts))


def hamming_ranked_relevance(q_words, q_labels, db_words, db_labels, nbits,
                             exclude_self=False, chunk=None):
    """Relevance of the Hamming ranking with ties broken by database index, bool [nq, N].

    Holds nq * N booleans; for large sets iterate `iter_hamming_chunks` instead.
    """
    parts = [r for _, _, _, r in iter_hamming_chunks(
        q_words, q_labels, db_words, db_labels, nbits, exclude_self, chunk)]
    n = len(db_labels) - bool(exclude_self)
    return np.concatenate(parts) if parts else np.zeros((0, n), dtype=bool)


# ---------------------------------------------------------------------------------------
# Tie-aware metrics from tie groups: the one implementation of the closed forms
# ---------------------------------------------------------------------------------------


def groups_from_histograms(rel, tot):
    """The tie groups holding relevant items of Hamming histograms rel, tot [c, nbits + 1]:
    ``(groups, n_rel [c], n_items [c])`` for `tie_aware_from_groups` (group d of query i is
    the items at distance d)."""
    rel, tot = check_histograms(rel, tot)
    before, rel_before = _items_before(tot), np.cumsum(rel, axis=1) - rel
    row, d = np.nonzero(rel)
    groups = dict(row=row, before=before[row, d], size=tot[row, d], rel_before=rel_before[row, d],
                  rel=rel[row, d])
    return groups, rel.sum(axis=1), tot.sum(axis=1)


def tie_aware_from_groups(groups, n_rel, n_items, ks):
    """Tie-aware per-query metrics (the expectation over uniformly random orders within each
    group of equal score) from the tie groups that hold relevant items.

    groups: dict of equal-length int arrays, one entry per group, ordered by query and then by
    rank: ``row`` (its query, 0..c-1), ``before`` (T: items ranked before it), ``size`` (n),
    ``rel_before`` (B: relevant items before it) and ``rel`` (r >= 1: its relevant items);
    n_rel: int [c], R of each query; n_items: N, items ranked per query (scalar or [c]).
    Groups without relevant items add nothing to any metric but items before the others
    (already in T), so they need not be listed. Returns float [c] arrays under the keys
    ``map_tie_aware``, ``map_at_r_tie_aware`` and for each k ``precision_at_{k}_tie_aware``,
    ``recall_at_{k}_tie_aware``, ``top{k}_tie_aware``: the closed forms of the module
    docstring, with S_g(m) = (r/n) [(B + 1) dH + c G] (`_harmonic_sums`); a single-item group
    (r = n = 1) has S = (B + 1) / (T + 1).
    """
    row, before, size = (np.asarray(groups[k], dtype=np.int64) for k in ("row", "before", "size"))
    rel_before, rel = (np.asarray(groups[k], dtype=np.int64) for k in ("rel_before", "rel"))
    n_rel = np.asarray(n_rel, dtype=np.int64)
    c = len(n_rel)
    n_items = np.broadcast_to(np.asarray(n_items, dtype=np.int64), (c,))
    n_rel_g = n_rel[row]
    single = size == 1
    multi = ~single
    x = before[multi] + 1.0
    coef = _safe_divide(rel[multi] - 1.0, size[multi] - 1.0)

    def expected_precision_sum(m):  # sum over each query's groups of S_g(m_g)
        out = np.where(single & (m > 0), (rel_before + 1.0) / (before + 1.0), 0.0)
        dh, g = _harmonic_sums(x, m[multi].astype(np.float64))
        out[multi] = rel[multi] / size[multi] * ((rel_before[multi] + 1.0) * dh + coef * g)
        return np.bincount(row, weights=out, minlength=c).astype(np.float64)

    out = {"map_tie_aware": _safe_divide(expected_precision_sum(size), n_rel),
           "map_at_r_tie_aware": _safe_divide(
               expected_precision_sum(np.clip(n_rel_g - before, 0, size)), n_rel)}
    for k in ks:
        check_k(k)
        near = before < k  # groups reaching into the top k (few, for small k)
        row_k, before_k, size_k, rel_k = row[near], before[near], size[near], rel[near]
        taken = np.minimum(k - before_k, size_k)
        hits = np.bincount(row_k, weights=rel_k / size_k * taken, minlength=c).astype(np.float64)
        out[f"precision_at_{k}_tie_aware"] = _safe_divide(hits, np.minimum(k, n_items))
        out[f"recall_at_{k}_tie_aware"] = _safe_divide(hits, n_rel)
        # hit@k: sure if a relevant group lies entirely in the top k, else the chance that
        # the group straddling rank k (m of its n items in, r relevant) shows one of them:
        # 1 - C(n - r, m) / C(n, m) = 1 - prod_{i < min(m, r)} (n - max(m, r) - i) / (n - i)
        inside = np.bincount(row_k[before_k + size_k <= k], minlength=c) > 0
        straddle = before_k + size_k > k
        n, r, m = size_k[straddle], rel_k[straddle], k - before_k[straddle]
        steps, top = np.minimum(m, r), n - np.maximum(m, r)
        miss = np.ones(len(n))
        for i in range(int(steps.max(initial=0))):
            going = i < steps
            miss[going] *= (top[going] - i) / (n[going] - i)
        hit = inside.astype(np.float64)
        s_row = row_k[straddle]
        hit[s_row] = np.where(inside[s_row], 1.0, 1.0 - miss)
        out[f"top{k}_tie_aware"] = hit
    return out


def _tie_aware_metric(rel, tot, key, k=None):
    groups, n_rel, n_items = groups_from_histograms(rel, tot)
    return tie_aware_from_groups(groups, n_rel, n_items, () if k is None else (k,))[key]


# ---------------------------------------------------------------------------------------
# Tie-aware metrics from histograms
# ---------------------------------------------------------------------------------------


def average_precision_tie_aware(rel, tot):
    """Expected AP over random orders within ties: ``(ap [nq], n_without_relevant)``.

    AP = (1/R) sum_d S_d(n_d) (module docstring). A query with R = 0 gets AP 0, stays
    in the mean, and is counted in n_without_relevant.
    """
    ap = _tie_aware_metric(rel, tot, "map_tie_aware")
    return ap, int(np.count_nonzero(np.asarray(rel).sum(axis=1) == 0))


def map_at_r_tie_aware(rel, tot):
    """Expected MAP@R (Musgrave et al. 2020) over random orders within ties, [nq].

    MAP@R = (1/R) sum_{p<=R} P(p) rel(p), R = the query's number of relevant items;
    tie-aware: (1/R) sum_d S_d(clip(R - T_d, 0, n_d)). R = 0 gives 0.
    """
    return _tie_aware_metric(rel, tot, "map_at_r_tie_aware")


def precision_at_k_tie_aware(rel, tot, k):
    """Expected precision of the top k, [nq]: E[#relevant in top k] / min(k, N)."""
    return _tie_aware_metric(rel, tot, f"precision_at_{k}_tie_aware", k)


def recall_at_k_tie_aware(rel, tot, k):
    """Expected recall of the top k, [nq]: E[#relevant in top k] / R (0 when R = 0)."""
    return _tie_aware_metric(rel, tot, f"recall_at_{k}_tie_aware", k)


def top_k_hit_rate_tie_aware(rel, tot, k):
    """Probability that the top k holds a relevant item, per query [nq] (mean = hit rate).

    Exact: 1 if a relevant item lies in a group entirely inside the top k, else
    1 - C(n - r, m) / C(n, m) for the group straddling rank k (m of its n items in the
    top k, r relevant), the hypergeometric probability of missing all its relevant items.
    """
    return _tie_aware_metric(rel, tot, f"top{k}_tie_aware", k)


def precision_within_radius(rel, tot, radius):
    """Precision of the Hamming ball of the given radius: ``(precision [nq], empty_share)``.

    The ball (distance <= radius) is a set, so ties do not matter. A query whose ball is
    empty gets precision 0 and stays in the mean (the DSH/DPSH convention);
    empty_share is the share of such queries.
    """
    rel, tot = check_histograms(rel, tot)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    rel_in, in_ball = rel[:, : radius + 1].sum(axis=1), tot[:, : radius + 1].sum(axis=1)
    empty_share = float(np.mean(in_ball == 0)) if len(in_ball) else 0.0
    return _safe_divide(rel_in, in_ball), empty_share


def pr_curve_by_radius(rel, tot):
    """Mean precision and recall of the Hamming ball at each radius 0..nbits.

    Returns ``(precision, recall, empty_share)``, float [nbits + 1] each, averaged over
    all queries: an empty ball counts precision 0 (as in `precision_within_radius`), a
    query without relevant items counts recall 0; empty_share[r] is the share of
    queries whose ball of radius r is empty.
    """
    rel, tot = check_histograms(rel, tot)
    rel_in, tot_in = np.cumsum(rel, axis=1), np.cumsum(tot, axis=1)
    precision = _safe_divide(rel_in, tot_in)
    recall = _safe_divide(rel_in, rel.sum(axis=1)[:, None])
    return precision.mean(axis=0), recall.mean(axis=0), (tot_in == 0).mean(axis=0)


# ---------------------------------------------------------------------------------------
# Index-order metrics from ranked relevance (bool [nq, N], rank 1 first)
# ---------------------------------------------------------------------------------------


def average_precision_index_order(ranked_rel):
    """AP of a ranked list: ``(ap [nq], n_without_relevant)``; R = 0 gives AP 0.

    ranked_rel: bool [nq, N], relevance at ranks 1..N (ties broken by database index,
    see `hamming_ranked_relevance`). AP = (1/R) sum_p P(p) rel(p).
    """
    ranked_rel = check_ranked(ranked_rel)
    ap_sum, _, _ = index_order_stats(ranked_rel, ())
    n_rel = ranked_rel.sum(axis=1)
    return _safe_divide(ap_sum, n_rel), int(np.count_nonzero(n_rel == 0))


def map_at_r_index_order(ranked_rel):
    """MAP@R of a ranked list, [nq]: (1/R) sum_{p<=R} P(p) rel(p); R = 0 gives 0."""
    ranked_rel = check_ranked(ranked_rel)
    _, mapr_sum, _ = index_order_stats(ranked_rel, ())
    return _safe_divide(mapr_sum, ranked_rel.sum(axis=1))


def precision_at_k_index_order(ranked_rel, k):
    """Precision of the top k of a ranked list, [nq]: #relevant in top k / min(k, N)."""
    ranked_rel = check_ranked(ranked_rel)
    check_k(k)
    found = ranked_rel[:, :k].sum(axis=1)
    return _safe_divide(found, np.full(len(found), min(k, ranked_rel.shape[1])))


def recall_at_k_index_order(ranked_rel, k):
    """Recall of the top k of a ranked list, [nq]: #relevant in top k / R (0 if R = 0)."""
    ranked_rel = check_ranked(ranked_rel)
    check_k(k)
    return _safe_divide(ranked_rel[:, :k].sum(axis=1), ranked_rel.sum(axis=1))


def top_k_hit_rate_index_order(ranked_rel, k):
    """1.0 where the top k of a ranked list holds a relevant item, else 0.0, [nq]."""
    ranked_rel = check_ranked(ranked_rel)
    check_k(k)
    return ranked_rel[:, :k].any(axis=1).astype(np.float64)


# ---------------------------------------------------------------------------------------
# Real-valued features
# ---------------------------------------------------------------------------------------


def euclidean_distances(q_feats, db_feats):
    """Squared Euclidean distances [nq, ndb], float64, by the evaluation's rule (the numpy twin
    of native.c's euclid_block, bitwise equal to it):

        d(q, x) = sum over k = 0, 1, ..., dim - 1, in this order, of (q_k - x_k)^2,

    each difference formed in double from the inputs widened exactly to double (float32
    features), each square and partial sum rounded to double, no fused multiply-add. Not
    |q|^2 - 2 q.x + |x|^2, whose cancellation gives items at the same true distance distances
    differing in their last bits. So d is a fixed function of the two vectors: identical
    database items tie exactly, and d is exact -- equal true distances compare equal -- whenever
    the inputs make every step exact, e.g. integer features (or multiples of a common 2^-s)
    with dim * max (q_k - x_k)^2 < 2^53 units; otherwise each step rounds by at most 2^-53
    relative, the same way for both backends.
    """
    q = np.asarray(q_feats)
    db = np.asarray(db_feats)
    out = np.empty((len(q), len(db)))
    diff = np.empty_like(out)
    for k in range(q.shape[1]):
        np.subtract(q[:, k, None].astype(np.float64), db[None, :, k].astype(np.float64), out=diff)
        if k == 0:
            np.multiply(diff, diff, out=out)
        else:
            out += diff * diff
    if q.shape[1] == 0:
        out[:] = 0.0
    return out


def euclidean_metrics(q_feats, q_labels, db_feats, db_labels, exclude_self=False, chunk=None,
                      ks=DEFAULT_KS):
    """Per-query metrics of the ranking by squared Euclidean distance, ties by index.

    Distances follow the rule of `euclidean_distances` (double sums of squared differences
    in coordinate order), so equal true distances compare equal where the inputs make them
    exact, and such ties are broken by database index (a stable sort); no tie-aware variant is
    given, as exact ties have probability zero for continuous features. With the C kernels and
    float32 features (the saved blobs) the ranking runs in native.c (tqn_euclid: register-
    blocked distances, then per query the ranks of the relevant items only: every item's place
    among them is counted from a bucket table of their distances, O(ndb) expected, no sort
    of the database); else in numpy (the same distances, a
    stable argsort): identical ranks, sums agreeing to ~1e-16. Returns a dict of float [nq]
    arrays: ``ap``, ``map_at_r`` and, for each k, ``precision_at_{k}``, ``recall_at_{k}``,
    ``top{k}`` (hit), plus the int ``queries_without_relevant``.
    """
    q_feats, db_feats = np.asarray(q_feats), np.asarray(db_feats)
    if q_feats.ndim != 2 or db_feats.ndim != 2 or q_feats.shape[1] != db_feats.shape[1]:
        raise ValueError(f"features must be [n, dim] alike, got {q_feats.shape}, "
                         f"{db_feats.shape}")
    if q_feats.dtype.kind != "f" or db_feats.dtype.kind != "f":
        q_feats, db_feats = q_feats.astype(np.float64), db_feats.astype(np.float64)
    q_labels, db_labels = check_labels(q_feats, q_labels, db_feats, db_labels, exclude_self)
    for k in ks:
        check_k(k)
    relevance = None
    if q_feats.dtype == np.float32 and db_feats.dtype == np.float32 and len(db_feats):
        relevance = _relevance_index(q_labels, db_labels)
    if relevance is not None:
        return _euclidean_native(q_feats, db_feats, q_labels, relevance, exclude_self, chunk, ks)
    parts = []
    step = chunk_rows(chunk, len(db_labels))
    for start in range(0, len(q_feats), step):
        rows = slice(start, min(start + step, len(q_feats)))
        dist = euclidean_distances(q_feats[rows], db_feats)
        same = q_labels[rows, None] == db_labels[None, :]
        if exclude_self:
            dist, same = _drop_self(rows, dist, same)
        parts.append(index_order_metrics(_ranked_relevance(dist, same), ks))
    out = {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)
           for key in _index_order_keys(ks)}
    out["queries_without_relevant"] = sum(p["queries_without_relevant"] for p in parts)
    return out


def _euclidean_native(q_feats, db_feats, q_labels, relevance, exclude_self, chunk, ks):
    db_t = np.ascontiguousarray(db_feats.T)
    unique_ks = np.unique(np.asarray(ks, dtype=np.int64))
    where = np.searchsorted(unique_ks, np.asarray(ks, dtype=np.int64))
    rel_idx, lo, hi = relevance
    n_rel = hi - lo - (1 if exclude_self else 0)
    n_items = len(db_feats) - bool(exclude_self)
    step = chunk_rows(chunk, 1, 4096)
    ap, mapr, hits = [], [], []
    for start in range(0, len(q_feats), step):
        rows = slice(start, min(start + step, len(q_feats)))
        a, m, h = native.euclid(q_feats[rows], db_t, _rows_of(relevance, rows),
                                start if exclude_self else -1, unique_ks)
        ap.append(a), mapr.append(m), hits.append(h[:, where])
    cat = (lambda x: np.concatenate(x)) if ap else (lambda x: np.zeros(0))
    hits_k = np.concatenate(hits) if hits else np.zeros((0, len(ks)), dtype=np.int64)
    return index_order_from_stats(cat(ap), cat(mapr), hits_k, n_rel, n_items, ks)


# ---------------------------------------------------------------------------------------
# Convenience wrappers
# ---------------------------------------------------------------------------------------


def evaluate_codes(q_codes, q_labels, db_codes, db_labels, nbits, exclude_self=False,
                   ks=DEFAULT_KS, radii=DEFAULT_RADII, chunk=None, threads=1):
    """Mean metrics of Hamming ranking with binary codes, as a flat dict of scalars.

    Codes are bool bits [n, nbits] or packed uint8 (see `tools.hashing.codes.to_words`).
    Keys: ``map_tie_aware``, ``map_index_order``, ``map_at_r_tie_aware``,
    ``map_at_r_index_order``; for each k in ks ``precision_at_{k}_*``, ``recall_at_{k}_*``,
    ``top{k}_*`` (hit rate) with both suffixes; for each radius r in radii
    ``precision_radius{r}`` and ``empty_radius{r}_share``; and ``queries_without_relevant``,
    ``n_queries``, ``n_database`` (items ranked per query).

    threads: the C scan splits each chunk of queries over this many threads (the results
    do not depend on it; the numpy fallback ignores it).
    """
    q_words, db_words = to_words(q_codes, nbits), to_words(db_codes, nbits)
    sums, n_queries, without = {}, 0, 0
    for _, rel, tot, stats in _scan_chunks(q_words, q_labels, db_words, db_labels, nbits,
                                           exclude_self, chunk, ks, threads):
        groups, n_rel, n_items = groups_from_histograms(rel, tot)
        metrics = tie_aware_from_groups(groups, n_rel, n_items, ks)
        index_order = index_order_from_stats(*stats, n_rel, n_items, ks)
        for key, values in index_order.items():
            if key != "queries_without_relevant":
                metrics[_INDEX_ORDER_NAMES.get(key, key) + "_index_order"] = values
        for radius in radii:
            precision, empty_share = precision_within_radius(rel, tot, radius)
            metrics[f"precision_radius{radius}"] = precision
            metrics[f"empty_radius{radius}_share"] = np.full(len(rel), empty_share)
        for key, values in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(np.sum(values))
        n_queries += len(rel)
        without += int(np.count_nonzero(n_rel == 0))
    out = {key: value / n_queries for key, value in sums.items()}
    out.update(queries_without_relevant=without, n_queries=n_queries,
               n_database=len(db_labels) - bool(exclude_self))
    return out


def evaluate_features(q_feats, q_labels, db_feats, db_labels, exclude_self=False,
                      ks=DEFAULT_KS, chunk=None):
    """Mean metrics of Euclidean ranking with real-valued features, as a flat dict.

    Keys: ``map``, ``map_at_r``, ``precision_at_{k}``, ``recall_at_{k}``, ``top{k}``,
    ``queries_without_relevant``, ``n_queries``, ``n_database`` (see `euclidean_metrics`).
    """
    per_query = euclidean_metrics(q_feats, q_labels, db_feats, db_labels, exclude_self,
                                  chunk, ks)
    out = {_INDEX_ORDER_NAMES.get(key, key): float(np.mean(per_query[key]))
           for key in _index_order_keys(ks)}
    out.update(queries_without_relevant=per_query["queries_without_relevant"],
               n_queries=len(per_query["ap"]),
               n_database=len(db_labels) - bool(exclude_self))
    return out


def relative_drop(real, binary):
    """Relative drop from real-valued features (RF) to binary codes (BC): (RF - BC) / RF.

    E.g. MAP 0.80 with features and 0.76 with codes gives 0.05 (codes lose 5%). Works
    on scalars and elementwise on arrays.
    """
    real = np.asarray(real, dtype=np.float64)
    if np.any(real == 0):
        raise ValueError("relative drop is undefined for a real-valued metric of 0")
    drop = (real - np.asarray(binary, dtype=np.float64)) / real
    return float(drop) if drop.ndim == 0 else drop


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _index_order_keys(ks):
    keys = ["ap", "map_at_r"]
    for k in ks:
        keys += [f"precision_at_{k}", f"recall_at_{k}", f"top{k}"]
    return keys


def index_order_metrics(ranked_rel, ks, relevant=None):
    """Per-query index-order metrics (the `_index_order_keys`, plus the int
    ``queries_without_relevant``) of ranked relevance bool [c, N]; relevant:
    ``np.nonzero(ranked_rel)`` if already computed."""
    if relevant is None:
        relevant = np.nonzero(ranked_rel)
    n_rel = np.bincount(relevant[0], minlength=ranked_rel.shape[0])
    return index_order_from_stats(*index_order_stats(ranked_rel, ks, relevant), n_rel,
                                  ranked_rel.shape[1], ks)


def index_order_stats(ranked_rel, ks, relevant=None):
    """``(ap_sum, mapr_sum, hits_k)`` of ranked relevance bool [c, N]: per query the sums of
    P(p) = hits(p) / p over relevant ranks p (all, and p <= R), and int [c, len(ks)], the
    number of relevant items in the top k. The same statistics as the C scan
    (`tools.hashing.native.scan`), from the relevant positions only: P(p) of the j-th relevant
    item of a row is j / p; the terms are laid out in a [c, max R] array so that each row
    is summed pairwise, as a plain ``sum(axis=1)`` would. relevant: ``np.nonzero(ranked_rel)``
    if already computed.
    """
    c = ranked_rel.shape[0]
    rows, cols = np.nonzero(ranked_rel) if relevant is None else relevant
    n_rel = np.bincount(rows, minlength=c)
    nth = np.arange(len(rows)) - (np.cumsum(n_rel) - n_rel)[rows]  # 0-based among relevant
    rank = cols + 1.0
    precision = (nth + 1.0) / rank
    terms = np.zeros((c, int(n_rel.max(initial=0))))
    terms[rows, nth] = precision
    ap_sum = terms.sum(axis=1)
    terms[rows, nth] = np.where(rank <= n_rel[rows], precision, 0.0)
    mapr_sum = terms.sum(axis=1)
    hits_k = np.zeros((c, len(ks)), dtype=np.int64)
    for t, k in enumerate(ks):
        check_k(k)
        hits_k[:, t] = ranked_rel[:, :k].sum(axis=1)
    return ap_sum, mapr_sum, hits_k


def index_order_from_stats(ap_sum, mapr_sum, hits_k, n_rel, n_items, ks):
    """Per-query index-order metrics (the `_index_order_keys`) from `index_order_stats`;
    n_items: ranked items per query (N)."""
    n_rel = np.asarray(n_rel)
    out = {"ap": _safe_divide(ap_sum, n_rel), "map_at_r": _safe_divide(mapr_sum, n_rel),
           "queries_without_relevant": int(np.count_nonzero(n_rel == 0))}
    for t, k in enumerate(ks):
        found = hits_k[:, t]
        out[f"precision_at_{k}"] = _safe_divide(found, np.minimum(k, n_items))
        out[f"recall_at_{k}"] = _safe_divide(found, n_rel)
        out[f"top{k}"] = (found > 0).astype(np.float64)
    return out


def _scan_chunks(q_words, q_labels, db_words, db_labels, nbits, exclude_self, chunk, ks,
                 threads=1):
    """Yield ``(rows, rel, tot, (ap_sum, mapr_sum, hits_k))`` per chunk of queries: the
    histograms and the index-order statistics of `index_order_stats`.

    With the C kernels: one scan of the database per query, O(ndb + nbits) time and
    O(ndb) memory, no distance matrix (default chunk: HISTOGRAM_CHUNK_CELLS / (nbits + 1)
    queries), each chunk split over `threads` threads (ctypes releases the GIL; queries
    are independent, so the results do not depend on the split). Without: distances and
    `_sorted_chunk` (a stable radix argsort) per chunk of CHUNK_ELEMENTS / ndb queries.
    """
    q_words, db_words = check_words(q_words, db_words)
    q_labels, db_labels = check_labels(q_words, q_labels, db_words, db_labels, exclude_self)
    _check_nbits(q_words, nbits)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for k in ks:
        check_k(k)
    relevance = _relevance_index(q_labels, db_labels) if nbits < 65536 else None
    if relevance is None:
        step = chunk_rows(chunk, len(db_labels))
    else:
        step = chunk_rows(chunk, 1, max(1, HISTOGRAM_CHUNK_CELLS // (nbits + 1)))
        unique_ks = np.unique(np.asarray(ks, dtype=np.int64))
        where = np.searchsorted(unique_ks, np.asarray(ks, dtype=np.int64))
    pool = None
    if relevance is not None and threads > 1:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(threads)

    def scan(lo, hi):
        return native.scan(q_words[lo:hi], db_words, _rows_of(relevance, slice(lo, hi)),
                            nbits + 1, lo if exclude_self else -1, unique_ks)

    try:
        for start in range(0, len(q_words), step):
            rows = slice(start, min(start + step, len(q_words)))
            if relevance is None:
                dist, same = _distances(rows, q_words, q_labels, db_words, db_labels, nbits,
                                        exclude_self)
                rel, tot, ranked_rel, relevant = _sorted_chunk(dist, same, nbits)
                yield rows, rel, tot, index_order_stats(ranked_rel, ks, relevant)
                continue
            if pool is None:
                parts = [scan(rows.start, rows.stop)]
            else:
                bounds = np.linspace(rows.start, rows.stop, threads + 1).astype(int)
                parts = list(pool.map(scan, bounds[:-1], bounds[1:]))
            rel, tot = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
            ap_sum, mapr_sum, hits_k = (np.concatenate([p[2][i] for p in parts])
                                        for i in range(3))
            yield rows, rel, tot, (ap_sum, mapr_sum, hits_k[:, where])
    finally:
        if pool is not None:
            pool.shutdown()


def _distances(rows, q_words, q_labels, db_words, db_labels, nbits, exclude_self):
    """Distances and relevance of a query chunk, [c, N] each (self removed if asked)."""
    dist = hamming(q_words[rows], db_words)
    if dist.size and int(dist.max()) > nbits:
        raise ValueError(f"a distance exceeds nbits={nbits}: codes are wider than nbits")
    same = q_labels[rows, None] == db_labels[None, :]
    if exclude_self:
        dist, same = _drop_self(rows, dist, same)
    return dist, same


def _relevance_index(q_labels, db_labels):
    """The database grouped by label for the C scan (`tools.hashing.native.relevance_index`), or
    None when the C kernels are unavailable or the labels cannot be sorted."""
    if native.lib() is None:
        return None
    if q_labels.dtype.kind in "biu" and db_labels.dtype.kind in "biu":
        codes = q_labels.astype(np.int64), db_labels.astype(np.int64)
        if q_labels.dtype == np.uint64 or db_labels.dtype == np.uint64:
            codes = None  # int64 could not hold them all
    else:
        codes = None
    if codes is None:
        try:
            _, inverse = np.unique(np.concatenate([q_labels, db_labels]), return_inverse=True,
                                   equal_nan=False)
        except TypeError:
            return None
        inverse = inverse.reshape(-1)
        codes = inverse[: len(q_labels)], inverse[len(q_labels):]
    return native.relevance_index(*codes)


def _rows_of(relevance, rows):
    rel_idx, lo, hi = relevance
    return rel_idx, lo[rows], hi[rows]


def _harmonic_sums(x, m):
    """dH = sum_{i<m} 1 / (x + i) and G = sum_{i<m} i / (x + i) = m - x dH, elementwise.

    x >= 1 and m >= 0 are integer-valued float arrays (x = T + 1, so dH = H_{T+m} - H_T).
    Both are computed to nearly full float64 relative precision: the plain digamma
    difference would lose it when m << x (dH is then tiny next to H_T, and G next to m),
    e.g. a few items after millions. Three regimes:
      m >= x       psi(x + m) - psi(x), and G = m - x dH (both sums are large);
      m < x <= 64  direct summation of fewer than 64 terms;
      m < x, x > 64  the asymptotic series psi(z) ~ ln z - 1/(2z) - sum_k B_2k / (2k z^2k),
                   differenced term by term without cancellation:
                   dH = log1p(t) + m / (2xy) + sum_p c_p (x^-p - y^-p),  t = m/x, y = x + m,
                   G  = x (t - log1p(t)) - m / (2y) - x sum_p c_p (x^-p - y^-p),
                   with x^-p - y^-p = -x^-p expm1(-p log1p(t)); the series is truncated
                   after x^-8, whose successor is below 1e-20 for x > 64.
    """
    dh, g = np.zeros(x.shape), np.zeros(x.shape)
    wide = m >= x
    xw, mw = x[wide], m[wide]
    dh[wide] = digamma(xw + mw) - digamma(xw)
    g[wide] = mw - xw * dh[wide]
    direct = ~wide & (x <= _DIRECT_TERMS)
    xd, md = x[direct], m[direct]
    dh_d, g_d = np.zeros(xd.shape), np.zeros(xd.shape)
    for i in range(int(md.max(initial=0))):
        term = np.where(i < md, 1.0 / (xd + i), 0.0)
        dh_d += term
        g_d += i * term
    dh[direct], g[direct] = dh_d, g_d
    tail = ~wide & ~direct
    xt, mt = x[tail], m[tail]
    log_ratio = np.log1p(mt / xt)  # ln(y / x)
    corr = sum(coef * xt ** -p * -np.expm1(-p * log_ratio) for p, coef in _PSI_SERIES)
    dh[tail] = log_ratio + mt / (2.0 * xt * (xt + mt)) + corr
    g[tail] = xt * _t_minus_log1p(mt / xt) - mt / (2.0 * (xt + mt)) - xt * corr
    return dh, g


def _t_minus_log1p(t):
    """t - log1p(t) for 0 <= t < 1 without cancellation.

    With u = t / (2 + t) <= 1/3: t = 2u / (1 - u) = 2 sum_{k>=1} u^k and
    log1p(t) = 2 atanh(u) = 2 sum_{k odd} u^k / k, so t - log1p(t) =
    2 sum_{k>=2} (1 - [k odd] / k) u^k, positive terms; 40 terms reach u^40 < 1e-19 u^2.
    """
    u = t / (2.0 + t)
    total, power = np.zeros(u.shape), u * u
    for k in range(2, 42):
        total += (1.0 - (k % 2) / k) * power
        power = power * u
    return 2.0 * total


def _items_before(tot):
    """T_d: items ranked before group d."""
    return np.cumsum(tot, axis=1) - tot


def _histograms(dist, same, nbits):
    """rel, tot [c, nbits + 1] with one bincount over dist + (nbits + 1) * same, offset by
    2 (nbits + 1) per row."""
    nbins = nbits + 1
    c = len(dist)
    keys = dist.astype(np.intp)
    keys += same * nbins  # same is bool: 0 or nbins
    keys += (2 * nbins) * np.arange(c, dtype=np.intp)[:, None]
    counts = np.bincount(keys.ravel(), minlength=2 * nbins * c).reshape(c, 2, nbins)
    rel = counts[:, 1]
    return rel, counts[:, 0] + rel


def _sorted_chunk(dist, same, nbits):
    """``(rel, tot, ranked_rel, np.nonzero(ranked_rel))`` of a chunk [c, N], numpy path.

    One stable argsort per row (numpy's radix sort for these <= 16-bit distances: O(N),
    no comparisons) orders the items by (distance, index); the histograms then come from
    the sorted rows: tot by searchsorted of the group boundaries, rel by a bincount over
    the relevant items only.
    """
    nbins = nbits + 1
    c = len(dist)
    order = np.argsort(dist, axis=1, kind="stable")
    ranked_rel = np.take_along_axis(same, order, axis=1)
    sorted_dist = np.take_along_axis(dist, order, axis=1)
    edges = np.arange(nbins + 1)
    tot = np.empty((c, nbins), dtype=np.int64)
    for i in range(c):
        tot[i] = np.diff(np.searchsorted(sorted_dist[i], edges))
    relevant = np.nonzero(ranked_rel)
    keys = relevant[0] * nbins + sorted_dist[relevant]
    rel = np.bincount(keys, minlength=c * nbins).reshape(c, nbins)
    return rel, tot, ranked_rel, relevant


def _ranked_relevance(dist, same):
    """Relevance in order of (distance, database index): a stable sort of each row."""
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(same, order, axis=1)


def _drop_self(rows, *arrays):
    """Remove column i from row i (query i is database item i) of [c, ndb] arrays."""
    count = rows.stop - rows.start
    keep = np.ones(arrays[0].shape, dtype=bool)
    keep[np.arange(count), np.arange(rows.start, rows.stop)] = False
    return tuple(a[keep].reshape(count, -1) for a in arrays)


def chunk_rows(chunk, ndb, default=None):
    if chunk is None:
        return default if default is not None else max(1, CHUNK_ELEMENTS // max(ndb, 1))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return int(chunk)


def _check_nbits(q_words, nbits):
    if q_words.shape[1] != -(-nbits // 64):
        raise ValueError(f"{q_words.shape[1]} words cannot hold nbits={nbits}")


def check_labels(q_items, q_labels, db_items, db_labels, exclude_self):
    q_labels, db_labels = np.asarray(q_labels), np.asarray(db_labels)
    if q_labels.shape != (len(q_items),) or db_labels.shape != (len(db_items),):
        raise ValueError(f"labels must be 1-D, one per item: got {q_labels.shape} for "
                         f"{len(q_items)} queries, {db_labels.shape} for {len(db_items)} items")
    if exclude_self and len(q_items) != len(db_items):
        raise ValueError("exclude_self needs the query set to be the database")
    return q_labels, db_labels


def check_histograms(rel, tot):
    rel, tot = np.asarray(rel), np.asarray(tot)
    if rel.ndim != 2 or rel.shape != tot.shape:
        raise ValueError(f"rel and tot must be [nq, nbits + 1] alike, got {rel.shape}, "
                         f"{tot.shape}")
    if np.any(rel < 0) or np.any(rel > tot):
        raise ValueError("histograms need 0 <= rel <= tot")
    return rel.astype(np.int64), tot.astype(np.int64)


def check_ranked(ranked_rel):
    ranked_rel = np.asarray(ranked_rel)
    if ranked_rel.ndim != 2 or ranked_rel.dtype != np.bool_:
        raise ValueError(f"ranked relevance must be bool [nq, N], got {ranked_rel.dtype} "
                         f"{ranked_rel.shape}")
    return ranked_rel


def check_k(k):
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _safe_divide(num, den, where=None):
    """num / den, 0 where den == 0 (or where `where` is False)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64),
                                   np.asarray(den, dtype=np.float64))
    ok = den != 0 if where is None else where & (den != 0)
    return np.divide(num, den, out=np.zeros(num.shape), where=ok)
