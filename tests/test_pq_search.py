"""Tests of tools/hashing/pq.py (DQN's ADC search and its exact metrics) against brute force written
plainly here: decode-then-score with explicit loops, Python's stable `sorted`, textbook AP in
exact fractions, and the tie-aware expectation by enumerating every ordering of every tie
group (itertools.permutations).

Exact ties need exact scores: most cases use small-integer codebooks and queries, whose
products and sums are exact in float32 (so brute-force scores equal the ADC scores bitwise
and ties between different codes happen too); random float data checks the tolerance."""
from fractions import Fraction
import itertools

import numpy as np
import pytest

from tools.hashing import native as _native
from tools.hashing import metrics as MT
from tools.hashing import pq

# ---------------------------------------------------------------------------------------
# data and brute force
# ---------------------------------------------------------------------------------------


def int_case(seed, n_sub=3, k=4, d=2, nq=6, ndb=40, classes=3, span=2, dup=None):
    """Integer-valued codebooks and queries (exact float32 arithmetic), random codes and
    labels; dup: draw the codes from only this many distinct ones (many ties)."""
    rng = np.random.default_rng(seed)
    codebooks = rng.integers(-span, span + 1, (n_sub, k, d)).astype(np.float32)
    z = rng.integers(-span, span + 1, (nq, n_sub * d)).astype(np.float32)
    codes = rng.integers(0, k, (ndb if dup is None else dup, n_sub))
    if dup is not None:
        codes = codes[rng.integers(0, dup, ndb)]
    return (z, rng.integers(0, classes, nq), codes.astype(pq.code_dtype(k)),
            rng.integers(0, classes, ndb), codebooks)


def float_case(seed, n_sub=4, k=16, d=3, nq=20, ndb=200, classes=4):
    rng = np.random.default_rng(seed)
    codebooks = rng.standard_normal((n_sub, k, d)).astype(np.float32)
    z = rng.standard_normal((nq, n_sub * d)).astype(np.float32)
    codes = rng.integers(0, k, (ndb, n_sub)).astype(pq.code_dtype(k))
    return (z, rng.integers(0, classes, nq), codes, rng.integers(0, classes, ndb), codebooks)


def bf_decode(codes, codebooks):
    return np.array([np.concatenate([codebooks[m][int(h[m])] for m in range(len(h))])
                     for h in codes], dtype=np.float64).reshape(len(codes), -1)


def bf_scores(z, codes, codebooks, metric):
    """Decode-then-score in float64 with loops: <z, x> or ||z - x||^2."""
    x = bf_decode(codes, codebooks)
    out = np.empty((len(z), len(x)))
    for i, q in enumerate(np.asarray(z, dtype=np.float64)):
        for j, v in enumerate(x):
            out[i, j] = sum(a * b for a, b in zip(q, v)) if metric == "ip" else \
                sum((a - b) ** 2 for a, b in zip(q, v))
    return out


def bf_ranking(scores_row, metric, skip=None):
    """Database ids best first, ties by id (Python's stable sort)."""
    ids = [j for j in range(len(scores_row)) if j != skip]
    return sorted(ids, key=lambda j: -scores_row[j] if metric == "ip" else scores_row[j])


def bf_ap(ranked):
    hits, total = 0, Fraction(0)
    for position, relevant in enumerate(ranked, start=1):
        if relevant:
            hits += 1
            total += Fraction(hits, position)
    return total / hits if hits else Fraction(0)


def bf_map_at_r(ranked):
    r = sum(ranked)
    return bf_ap(ranked[:r]) * sum(ranked[:r]) / r if r else Fraction(0)


def bf_at_k(ranked, k):
    found = sum(ranked[:k])
    r = sum(ranked)
    return (Fraction(found, min(k, len(ranked))), Fraction(found, r) if r else Fraction(0),
            Fraction(int(found > 0)))


def bf_metrics(ranked, ks):
    out = {"map": bf_ap(ranked), "map_at_r": bf_map_at_r(ranked)}
    for k in ks:
        out[f"precision_at_{k}"], out[f"recall_at_{k}"], out[f"top{k}"] = bf_at_k(ranked, k)
    return out


def bf_tie_aware(scores_row, relevant, metric, ks, skip=None):
    """Exact expectation over every ordering of every tie group (score value)."""
    ids = [j for j in range(len(scores_row)) if j != skip]
    values = sorted({scores_row[j] for j in ids}, reverse=(metric == "ip"))
    groups = [[relevant[j] for j in ids if scores_row[j] == v] for v in values]
    per_group = [sorted(set(itertools.permutations(g))) for g in groups]
    total, count = None, 0
    for combo in itertools.product(*per_group):
        ranked = [x for part in combo for x in part]
        m = bf_metrics(ranked, ks)
        total = m if total is None else {key: total[key] + m[key] for key in m}
        count += 1
    return {key: value / count for key, value in total.items()}


def per_query(z, ql, codes, dl, codebooks, metric="ip", exclude_self=False, chunk=None,
              ks=(1, 3, 10)):
    parts = list(pq.iter_adc_chunks(z, ql, codes, dl, codebooks, metric, exclude_self, chunk,
                                    ks))
    keys = [k for k in parts[0][1] if k != "queries_without_relevant"]
    return {k: np.concatenate([p[1][k] for p in parts]) for k in keys}


# ---------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", pq.METRICS)
@pytest.mark.parametrize("shape", [(1, 2, 1), (3, 4, 2), (5, 7, 3), (2, 300, 1)])
def test_scores_equal_decode_then_score_exactly_on_integers(metric, shape):
    n_sub, k, d = shape
    z, _, codes, _, cb = int_case(sum(shape), n_sub, k, d, nq=5, ndb=33)
    assert codes.dtype == (np.uint8 if k <= 256 else np.uint16)
    got = pq.adc_scores(z, codes, cb, metric)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, bf_scores(z, codes, cb, metric))


@pytest.mark.parametrize("metric", pq.METRICS)
def test_scores_match_dense_decode_then_score_on_floats(metric):
    z, _, codes, _, cb = float_case(1)
    x = pq.decode(codes, cb).astype(np.float64)
    zz = z.astype(np.float64)
    dense = zz @ x.T if metric == "ip" else ((zz[:, None, :] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(pq.adc_scores(z, codes, cb, metric), dense, rtol=1e-5,
                               atol=1e-5)


def test_decode_and_encode():
    z, _, codes, _, cb = float_case(2)
    x = pq.decode(codes, cb)
    np.testing.assert_array_equal(x, bf_decode(codes, cb).astype(np.float32))
    np.testing.assert_array_equal(pq.encode(x, cb), codes)  # centroids encode to themselves
    # encode = nearest centroid per subspace, by brute force
    y = np.random.default_rng(3).standard_normal((30, cb.shape[0] * cb.shape[2]))
    for chunk in (None, 7):
        h = pq.encode(y, cb, chunk=chunk)
        for i in range(len(y)):
            for m in range(cb.shape[0]):
                sub = y[i, m * cb.shape[2]:(m + 1) * cb.shape[2]]
                dist = [((sub - c.astype(np.float64)) ** 2).sum() for c in cb[m]]
                assert h[i, m] == int(np.argmin(dist))
    assert pq.encode(y, np.zeros((4, 300, 3))).dtype == np.uint16


def test_encode_decode_agree_with_dqn_module_if_present():
    dqn = pytest.importorskip("tqn_layers.dqn")
    if not hasattr(dqn, "pq_encode"):
        pytest.skip("tqn_layers.dqn has no pq_encode")
    z, _, codes, _, cb = float_case(4)
    np.testing.assert_array_equal(np.asarray(dqn.pq_encode(z, cb)).astype(np.int64),
                                  pq.encode(z, cb).astype(np.int64))
    if hasattr(dqn, "pq_decode"):
        np.testing.assert_array_equal(np.asarray(dqn.pq_decode(codes, cb), dtype=np.float32),
                                      pq.decode(codes, cb))


@pytest.mark.parametrize("metric", pq.METRICS)
@pytest.mark.parametrize("k", [3, 300, 70000])
def test_native_equals_numpy_fallback_bitwise(metric, k):
    if _native.lib() is None:
        pytest.skip("no C compiler: only the numpy path exists")
    rng = np.random.default_rng(k)
    n_sub = 5
    cb = rng.standard_normal((n_sub, k if k < 70000 else 65536, 2)).astype(np.float32)
    z = rng.standard_normal((9, n_sub * 2)).astype(np.float32)  # 9: two blocks of 4 + 1
    codes = rng.integers(0, cb.shape[1], (1001, n_sub)).astype(pq.code_dtype(cb.shape[1]))
    native = pq.adc_scores(z, codes, cb, metric)
    with _native.disabled():
        fallback = pq.adc_scores(z, codes, cb, metric)
    assert np.array_equal(native.view(np.uint32), fallback.view(np.uint32))


def test_lookup_tables():
    z, _, _, _, cb = int_case(5)
    t = pq.lookup_tables(z, cb, "ip")
    d = cb.shape[2]
    for i in range(len(z)):
        for m in range(cb.shape[0]):
            for k in range(cb.shape[1]):
                q = z[i, m * d:(m + 1) * d]
                assert t[i, m, k] == float(np.dot(q, cb[m, k]))
    t2 = pq.lookup_tables(z, cb, "l2")
    assert t2[0, 1, 2] == float(((z[0, d:2 * d] - cb[1, 2]) ** 2).sum())


# ---------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", pq.METRICS)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_search_equals_brute_force_ranking_with_ties_by_index(metric, exclude_self):
    z, _, codes, _, cb = int_case(6, nq=40, ndb=40, dup=12)  # many ties
    if exclude_self:
        z = pq.decode(codes, cb) + np.float32(1)  # query i is database item i
    ref = bf_scores(z, codes, cb, metric)
    for k in (1, 5, 17, 39, 40, 100):
        for chunk in (None, 3):
            scores, ids = pq.search(z, codes, cb, k, metric, exclude_self, chunk)
            n = len(codes) - exclude_self
            assert ids.shape == scores.shape == (len(z), min(k, n))
            for i in range(len(z)):
                want = bf_ranking(ref[i], metric, i if exclude_self else None)[:k]
                assert ids[i].tolist() == want
                np.testing.assert_array_equal(scores[i], ref[i][want].astype(np.float32))


def test_search_float_data_matches_argsort():
    z, _, codes, _, cb = float_case(7)
    s = pq.adc_scores(z, codes, cb)
    _, ids = pq.search(z, codes, cb, 25)
    np.testing.assert_array_equal(ids, np.argsort(-s, axis=1, kind="stable")[:, :25])


@pytest.mark.parametrize("metric", pq.METRICS)
def test_order_keys_sort_scores_and_tie_the_two_zeros(metric):
    values = np.array([[-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7e10, np.inf]],
                      dtype=np.float32)
    keys = pq._order_keys(values.copy(), metric)[0]
    assert keys[3] == keys[4]  # -0.0 == +0.0
    expect = np.argsort(-values[0] if metric == "ip" else values[0], kind="stable")
    np.testing.assert_array_equal(np.argsort(keys, kind="stable"), expect)
    assert keys.max() < pq._SELF_KEY


def test_zero_scores_tie():
    cb = np.array([[[0.0], [-0.0], [1.0]]], dtype=np.float32)
    codes = np.array([[2], [1], [0], [1]], dtype=np.uint8)
    z = np.array([[1.0]], dtype=np.float32)
    s, ids = pq.search(z, codes, cb, 4)
    assert ids[0].tolist() == [0, 1, 2, 3]  # 1, then -0 / 0 / -0 tied, by index
    m = per_query(z, [1], codes, np.array([1, 1, 0, 1]), cb, ks=(1,))
    # item 0 (relevant) first; the tie group {1, 2, 3} holds 2 relevant of 3
    assert m["map_index_order"][0] == pytest.approx(float((1 + Fraction(2, 2) + Fraction(3, 4))
                                                           / 3))
    # tie-aware: ranks 2..4 in random order, 2 relevant of 3: E[AP] by enumeration
    want = np.mean([float(bf_ap([True, *p])) for p in itertools.permutations([1, 0, 1])])
    assert m["map_tie_aware"][0] == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------


def _check_case(z, ql, codes, dl, cb, metric, exclude_self, ks=(1, 3, 10), chunk=None,
                tie_aware=True):
    got = per_query(z, ql, codes, dl, cb, metric, exclude_self, chunk, ks)
    ref = bf_scores(z, codes, cb, metric)
    assert np.array_equal(pq.adc_scores(z, codes, cb, metric), ref.astype(np.float32))
    for i in range(len(z)):
        skip = i if exclude_self else None
        ranked = [bool(dl[j] == ql[i]) for j in bf_ranking(ref[i], metric, skip)]
        for key, value in bf_metrics(ranked, ks).items():
            assert got[f"{key}_index_order"][i] == pytest.approx(float(value), abs=1e-12), key
        if tie_aware:
            relevant = [bool(dl[j] == ql[i]) for j in range(len(dl))]
            for key, value in bf_tie_aware(ref[i], relevant, metric, ks, skip).items():
                assert got[f"{key}_tie_aware"][i] == pytest.approx(float(value), abs=1e-12), \
                    key
    return got


@pytest.mark.parametrize("metric", pq.METRICS)
@pytest.mark.parametrize("seed", range(4))
def test_tie_aware_and_index_order_equal_brute_force_on_tiny_cases(metric, seed):
    # 10 items drawn from 4 codes (plus coincidental ties of different codes): the
    # permutation enumeration stays small
    z, ql, codes, dl, cb = int_case(10 + seed, n_sub=2, k=3, d=1, nq=5, ndb=9, dup=4,
                                    span=1)
    _check_case(z, ql, codes, dl, cb, metric, False)


@pytest.mark.parametrize("metric", pq.METRICS)
def test_metrics_with_exclude_self(metric):
    z, ql, codes, dl, cb = int_case(20, n_sub=2, k=3, d=1, nq=8, ndb=8, dup=4, span=1)
    z = pq.decode(codes, cb)  # query i = database item i, exactly
    _check_case(z, dl, codes, dl, cb, metric, True)


def test_tie_aware_equals_metrics_module_on_score_histograms():
    """Larger case: the tie-aware values equal tools.hashing.metrics' closed forms applied to
    histograms over the distinct scores (a different route to the same numbers)."""
    ks = (1, 5, 20)
    z, ql, codes, dl, cb = int_case(30, n_sub=3, k=4, d=2, nq=25, ndb=300, dup=30)
    got = per_query(z, ql, codes, dl, cb, "ip", ks=ks)
    s = pq.adc_scores(z, codes, cb)
    for i in range(len(z)):
        _, inv = np.unique(-s[i], return_inverse=True)
        tot = np.bincount(inv)[None]
        rel = np.bincount(inv, weights=dl == ql[i], minlength=tot.shape[1]).astype(int)[None]
        assert got["map_tie_aware"][i] == pytest.approx(
            MT.average_precision_tie_aware(rel, tot)[0][0], abs=1e-12)
        assert got["map_at_r_tie_aware"][i] == pytest.approx(MT.map_at_r_tie_aware(rel, tot)[0],
                                                             abs=1e-12)
        for k in ks:
            for name, fn in (("precision_at_", MT.precision_at_k_tie_aware),
                             ("recall_at_", MT.recall_at_k_tie_aware)):
                assert got[f"{name}{k}_tie_aware"][i] == pytest.approx(fn(rel, tot, k)[0],
                                                                       abs=1e-12)
            assert got[f"top{k}_tie_aware"][i] == pytest.approx(
                MT.top_k_hit_rate_tie_aware(rel, tot, k)[0], abs=1e-12)
        order = np.argsort(-s[i], kind="stable")
        ranked = (dl[order] == ql[i])[None]
        assert got["map_index_order"][i] == pytest.approx(
            MT.average_precision_index_order(ranked)[0][0], abs=1e-12)


@pytest.mark.parametrize("metric", pq.METRICS)
def test_float_data_index_order_equals_argsort_reference(metric):
    z, ql, codes, dl, cb = float_case(8, k=64, nq=30, ndb=500)
    assert len(np.unique(codes, axis=0)) == len(codes)
    s = pq.adc_scores(z, codes, cb, metric)
    order = np.argsort(-s if metric == "ip" else s, axis=1, kind="stable")
    ranked = dl[order] == ql[:, None]
    got = pq.evaluate_adc(z, ql, codes, dl, cb, metric, ks=(10,))
    assert got["map_index_order"] == pytest.approx(
        float(np.mean(MT.average_precision_index_order(ranked)[0])), abs=1e-12)
    assert got["precision_at_10_index_order"] == pytest.approx(
        float(np.mean(MT.precision_at_k_index_order(ranked, 10))), abs=1e-12)
    # float scores of distinct random codes: no ties, so both orderings agree
    assert got["map_tie_aware"] == pytest.approx(got["map_index_order"], abs=1e-12)


def test_chunking_invariance_and_evaluate_keys():
    z, ql, codes, dl, cb = int_case(40, nq=23, ndb=120, dup=25)
    ref = pq.evaluate_adc(z, ql, codes, dl, cb, ks=(1, 5))
    for chunk in (1, 4, 22, 1000):
        got = pq.evaluate_adc(z, ql, codes, dl, cb, ks=(1, 5), chunk=chunk)
        assert got.keys() == ref.keys()
        for key in ref:
            assert got[key] == pytest.approx(ref[key], abs=1e-14), key
    s, i = pq.search(z, codes, cb, 7)
    for chunk in (1, 5):
        s2, i2 = pq.search(z, codes, cb, 7, chunk=chunk)
        assert np.array_equal(i, i2) and np.array_equal(s, s2)
    # the keys of tools.hashing.metrics.evaluate_codes, without the Hamming-radius ones
    q_bits = np.random.default_rng(0).random((4, 8)) < 0.5
    hamming = MT.evaluate_codes(q_bits, ql[:4], q_bits, ql[:4], 8, ks=(1, 5), radii=())
    assert set(ref) == set(hamming)
    assert ref["n_queries"] == 23 and ref["n_database"] == 120


def test_native_and_numpy_metrics_agree():
    z, ql, codes, dl, cb = float_case(9, nq=15, ndb=300)
    a = pq.evaluate_adc(z, ql, codes, dl, cb)
    with _native.disabled():
        b = pq.evaluate_adc(z, ql, codes, dl, cb)
    assert a == b


def test_queries_without_relevant_and_all_tied():
    cb = np.zeros((2, 2, 1), dtype=np.float32)  # every score 0: one tie group
    codes = np.array([[0, 1], [1, 0], [0, 0], [1, 1]], dtype=np.uint8)
    z = np.ones((2, 2), dtype=np.float32)
    out = pq.evaluate_adc(z, [5, 0], codes, np.array([0, 0, 1, 0]), cb, ks=(1, 2))
    assert out["queries_without_relevant"] == 1
    # query 2 (label 0): 3 relevant of 4 all tied; query 1: no relevant -> 0
    assert out["precision_at_1_tie_aware"] == pytest.approx(0.75 / 2)
    assert out["top2_tie_aware"] == pytest.approx(1.0 / 2)  # 2 of 4, only 1 non-relevant
    assert out["map_index_order"] == pytest.approx(float(bf_ap([True, True, False, True])) / 2)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    z, ql, codes, dl, cb = int_case(50)
    with pytest.raises(ValueError, match=r"code 4 at row \d+, subspace \d+ is out of range.*K=4"):
        bad = codes.copy()
        bad[3, 1] = 4
        pq.evaluate_adc(z, ql, bad, dl, cb)
    with pytest.raises(ValueError, match="code -1 .* out of range"):
        bad = codes.astype(np.int64)
        bad[0, 0] = -1
        pq.search(z, bad, cb, 3)
    with pytest.raises(ValueError, match=r"codes must be \[n, M=3\]"):
        pq.adc_scores(z, codes[:, :2], cb)
    with pytest.raises(ValueError, match=r"queries must be \[n, 6\]"):
        pq.search(z[:, :5], codes, cb, 3)
    with pytest.raises(ValueError, match=r"codebooks must be \[M, K, d\]"):
        pq.decode(codes, cb[0])
    with pytest.raises(TypeError, match="codes must be integers"):
        pq.decode(codes.astype(np.float32), cb)
    with pytest.raises(ValueError, match="non-finite value \\(row 1, column 2\\)"):
        bad = z.copy()
        bad[1, 2] = np.nan
        pq.adc_scores(bad, codes, cb)
    with pytest.raises(ValueError, match="codebooks hold a non-finite value"):
        bad = cb.copy()
        bad[0, 1, 0] = np.inf
        pq.encode(z, bad)
    with pytest.raises(ValueError, match="metric must be one of"):
        pq.evaluate_adc(z, ql, codes, dl, cb, metric="cosine")
    with pytest.raises(ValueError, match="labels must be 1-D"):
        pq.evaluate_adc(z, ql[:2], codes, dl, cb)
    with pytest.raises(ValueError, match="exclude_self needs"):
        pq.evaluate_adc(z, ql, codes, dl, cb, exclude_self=True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pq.search(z, codes, cb, 0)
    with pytest.raises(ValueError, match="K must be in 1..65536"):
        pq.code_dtype(65537)
