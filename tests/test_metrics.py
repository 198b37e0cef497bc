"""Tests of tools/hashing/metrics.py against brute force written plainly in this file.

* index order: explicit distances from the bits, Python's stable `sorted`, textbook
  loops in exact fractions;
* tie-aware: the exact expectation, enumerating every ordering of every tie group
  (itertools.permutations), again in exact fractions.
"""
from collections import Counter
from decimal import Decimal, localcontext
from fractions import Fraction
import itertools
import math

import numpy as np
import pytest

from tools.hashing.codes import pack_bits, to_words
from tools.hashing.metrics import (average_precision_index_order, average_precision_tie_aware,
                           euclidean_distances, euclidean_metrics, evaluate_codes, evaluate_features,
                           hamming_histograms, hamming_ranked_relevance,
                           iter_hamming_chunks, map_at_r_index_order, map_at_r_tie_aware,
                           pr_curve_by_radius, precision_at_k_index_order,
                           precision_at_k_tie_aware, precision_within_radius,
                           recall_at_k_index_order, recall_at_k_tie_aware, relative_drop,
                           top_k_hit_rate_index_order, top_k_hit_rate_tie_aware)

TOL = 1e-12
WIDTHS = list(range(1, 71)) + [96, 100, 127, 128, 129, 191, 192, 193, 200, 255, 256]

def assert_matches_brute_force(out, ranked, ks):
    """Per-query metrics `out` (euclidean_metrics) equal brute force over the rankings `ranked`."""
    expected = [bf_metrics(r, ks) for r in ranked]
    assert_close(out["ap"], [e["ap"] for e in expected])
    assert_close(out["map_at_r"], [e["map_at_r"] for e in expected])
    for k in ks:
        assert_close(out[f"precision_at_{k}"], [e[f"p{k}"] for e in expected])
        assert_close(out[f"recall_at_{k}"], [e[f"r{k}"] for e in expected])
        assert_close(out[f"top{k}"], [e[f"hit{k}"] for e in expected])
    assert out["queries_without_relevant"] == sum(1 for r in ranked if not any(r))
    return expected


# ---------------------------------------------------------------------------------------
# brute force
# ---------------------------------------------------------------------------------------


def bf_ap(ranked):
    hits, total = 0, Fraction(0)
    for position, relevant in enumerate(ranked, start=1):
        if relevant:
            hits += 1
            total += Fraction(hits, position)
    return total / hits if hits else Fraction(0)


def bf_map_at_r(ranked):
    n_rel = sum(ranked)
    hits, total = 0, Fraction(0)
    for position, relevant in enumerate(ranked[:n_rel], start=1):
        if relevant:
            hits += 1
            total += Fraction(hits, position)
    return total / n_rel if n_rel else Fraction(0)


def bf_precision_at_k(ranked, k):
    top = ranked[:k]
    return Fraction(sum(top), len(top)) if top else Fraction(0)


def bf_recall_at_k(ranked, k):
    n_rel = sum(ranked)
    return Fraction(sum(ranked[:k]), n_rel) if n_rel else Fraction(0)


def bf_hit(ranked, k):
    return Fraction(int(any(ranked[:k])))


def bf_metrics(ranked, ks):
    out = {"ap": bf_ap(ranked), "map_at_r": bf_map_at_r(ranked)}
    for k in ks:
        out[f"p{k}"] = bf_precision_at_k(ranked, k)
        out[f"r{k}"] = bf_recall_at_k(ranked, k)
        out[f"hit{k}"] = bf_hit(ranked, k)
    return out


def bf_index_order_ranking(dists, rels):
    """Relevance sorted by distance; Python's sort is stable, so ties keep index order."""
    order = sorted(range(len(dists)), key=lambda j: dists[j])
    return [bool(rels[j]) for j in order]


def bf_euclidean_rankings(q, q_labels, db, db_labels, exclude_self):
    """Brute force over integer-valued features: each query's index-order ranking of exact integer
    squared distances (its own row left out with exclude_self)."""
    qi, dbi = q.astype(np.int64), db.astype(np.int64)
    ranked = []
    for i in range(len(q)):
        keep = [j for j in range(len(db)) if not (exclude_self and j == i)]
        d = [int(((qi[i] - dbi[j]) ** 2).sum()) for j in keep]
        ranked.append(bf_index_order_ranking(d, [bool(q_labels[i] == db_labels[j]) for j in keep]))
    return ranked


def bf_expected_metrics(dists, rels, ks):
    """Exact expectation over every ordering inside each group of equal distance."""
    groups = [[bool(rels[j]) for j in range(len(dists)) if dists[j] == d]
              for d in sorted(set(dists))]
    patterns = Counter()
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        patterns[tuple(itertools.chain.from_iterable(orders))] += 1
    n_orders = sum(patterns.values())
    assert n_orders == math.prod(math.factorial(len(g)) for g in groups)
    expected = Counter()
    for ranked, count in patterns.items():
        for key, value in bf_metrics(list(ranked), ks).items():
            expected[key] += value * count
    return {key: Fraction(value, n_orders) for key, value in expected.items()}


def bf_histogram(dists, rels, nbits):
    rel, tot = [0] * (nbits + 1), [0] * (nbits + 1)
    for d, r in zip(dists, rels):
        tot[d] += 1
        rel[d] += int(r)
    return rel, tot


def bf_distances(q_bits, db_bits):
    return (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)


def bf_per_query(q_bits, q_labels, db_bits, db_labels, exclude_self=False):
    """Per query: (distances, relevance) lists over the database, self removed if asked."""
    dist = bf_distances(q_bits, db_bits)
    out = []
    for i in range(len(q_bits)):
        keep = [j for j in range(len(db_bits)) if not (exclude_self and j == i)]
        out.append(([int(dist[i, j]) for j in keep],
                    [bool(q_labels[i] == db_labels[j]) for j in keep]))
    return out


def clustered_codes(rng, n, nbits, prototypes, labels_of_prototypes, flip, relabel=0.2):
    """Codes near a few prototypes (many ties at any width); labels mostly follow them."""
    which = rng.integers(0, len(prototypes), n)
    bits = prototypes[which] ^ (rng.random((n, nbits)) < flip)
    labels = labels_of_prototypes[which].copy()
    noisy = rng.random(n) < relabel
    labels[noisy] = rng.integers(0, 4, noisy.sum())
    return bits, labels


def tied_problem(nbits, nq=10, ndb=36, seed=0):
    rng = np.random.default_rng(seed + 7919 * nbits)
    prototypes = rng.random((4, nbits)) < 0.5
    proto_labels = np.array([0, 1, 2, 3])
    flip = min(0.25, 1.5 / nbits)
    q_bits, q_labels = clustered_codes(rng, nq, nbits, prototypes, proto_labels, flip)
    db_bits, db_labels = clustered_codes(rng, ndb, nbits, prototypes, proto_labels, flip)
    db_bits[:3] = q_bits[:3]          # exact copies of some queries
    db_bits[10:14] = db_bits[4]       # a block of identical database codes
    q_labels[-1] = 99                 # a query without relevant items
    return q_bits, q_labels, db_bits, db_labels


def assert_close(actual, expected, tol=TOL):
    np.testing.assert_allclose(np.asarray(actual, dtype=float),
                               np.asarray([float(e) for e in expected]), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------
# tie-aware metrics == enumeration of all orderings within ties
# ---------------------------------------------------------------------------------------


def random_tied_queries(seed, count):
    """Small databases (7-9 items, groups of at most 5) with ties and mixed relevance."""
    rng = np.random.default_rng(seed)
    queries = []
    while len(queries) < count:
        n = int(rng.integers(7, 10))
        dists = sorted(rng.integers(0, 4, n).tolist())
        if max(Counter(dists).values()) > 5:
            continue
        rels = (rng.random(n) < rng.choice([0.2, 0.4, 0.7])).tolist()
        perm = rng.permutation(n)  # database order unrelated to distance
        queries.append(([dists[p] for p in perm], [rels[p] for p in perm]))
    queries += [
        ([0, 0, 1, 1, 1, 2, 2, 3], [1, 0, 1, 1, 0, 0, 1, 0]),
        ([2, 2, 2, 2, 2, 0, 1, 1], [1, 1, 0, 0, 0, 0, 1, 0]),   # relevant only after ties
        ([1, 1, 1, 1, 1, 3, 3, 3, 3], [1, 1, 1, 1, 1, 0, 0, 0, 0]),  # all-relevant group
        ([0, 0, 0, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0, 0, 1]),   # one relevant, last group
        ([0, 1, 1, 2, 2, 2, 3], [0, 0, 0, 0, 0, 0, 0]),          # no relevant item
        ([0, 1, 2, 3, 3, 3, 3], [1, 0, 1, 0, 0, 1, 0]),
    ]
    return queries


TIED = random_tied_queries(seed=11, count=40)
KS = list(range(1, 11))


@pytest.fixture(scope="module")
def tied_reference():
    nbits = 3
    hist = [bf_histogram(d, r, nbits) for d, r in TIED]
    rel = np.array([h[0] for h in hist])
    tot = np.array([h[1] for h in hist])
    expected = [bf_expected_metrics(d, r, KS) for d, r in TIED]
    return rel, tot, expected


def test_average_precision_tie_aware_equals_enumeration(tied_reference):
    rel, tot, expected = tied_reference
    ap, without = average_precision_tie_aware(rel, tot)
    assert_close(ap, [e["ap"] for e in expected])
    assert without == sum(1 for _, r in TIED if not any(r))


def test_map_at_r_tie_aware_equals_enumeration(tied_reference):
    rel, tot, expected = tied_reference
    assert_close(map_at_r_tie_aware(rel, tot), [e["map_at_r"] for e in expected])


@pytest.mark.parametrize("k", KS)
def test_precision_recall_hit_at_k_tie_aware_equal_enumeration(tied_reference, k):
    rel, tot, expected = tied_reference
    assert_close(precision_at_k_tie_aware(rel, tot, k), [e[f"p{k}"] for e in expected])
    assert_close(recall_at_k_tie_aware(rel, tot, k), [e[f"r{k}"] for e in expected])
    assert_close(top_k_hit_rate_tie_aware(rel, tot, k), [e[f"hit{k}"] for e in expected])


def test_tie_aware_hand_example():
    # one tie group of two items, one relevant: orders (1, 0) and (0, 1)
    rel, tot = np.array([[1, 0]]), np.array([[2, 0]])
    assert average_precision_tie_aware(rel, tot)[0][0] == pytest.approx((1 + 1 / 2) / 2)
    assert map_at_r_tie_aware(rel, tot)[0] == pytest.approx(0.5)
    assert precision_at_k_tie_aware(rel, tot, 1)[0] == pytest.approx(0.5)
    assert top_k_hit_rate_tie_aware(rel, tot, 1)[0] == pytest.approx(0.5)
    assert precision_at_k_tie_aware(rel, tot, 5)[0] == pytest.approx(0.5)  # 1 of N=2


def test_tie_aware_equals_index_order_without_ties():
    rng = np.random.default_rng(4)
    ranked = rng.random((30, 12)) < 0.3
    rel, tot = ranked.astype(int), np.ones((30, 12), dtype=int)  # one item per distance
    expected = [bf_metrics(list(r), [1, 3, 12]) for r in ranked]
    assert_close(average_precision_tie_aware(rel, tot)[0], [e["ap"] for e in expected])
    assert_close(map_at_r_tie_aware(rel, tot), [e["map_at_r"] for e in expected])
    for k in (1, 3, 12):
        assert_close(precision_at_k_tie_aware(rel, tot, k), [e[f"p{k}"] for e in expected])
        assert_close(top_k_hit_rate_tie_aware(rel, tot, k), [e[f"hit{k}"] for e in expected])


def decimal_expected_precision_sum(rel, tot, limit):
    """Per-position expectation of the tie-aware AP / MAP@R numerator, in decimals."""
    total, before, rel_before = Decimal(0), 0, 0
    for r, n in zip(rel, tot):
        if r:
            c = Decimal(r - 1) / (n - 1) if n > 1 else Decimal(0)
            for j in range(1, min(n, max(limit - before, 0)) + 1):
                total += Decimal(r) / n * (rel_before + 1 + (j - 1) * c) / (before + j)
        before, rel_before = before + n, rel_before + r
    return total


@pytest.mark.parametrize("before", [0, 3, 40, 63, 64, 65, 200, 12345, 10**6, 10**7])
def test_tie_aware_ap_and_map_at_r_keep_full_precision(before):
    """Relevant items after `before` irrelevant ones, in groups small and large next to it.

    Reference: 50-digit decimals. Relative tolerance 1e-13: the float64 result must not
    lose digits to cancellation even when the relevant items come after millions.
    """
    cases = [([0, 10], [before, 10]), ([0, 1], [before, 1]), ([0, 3, 2], [before, 70, 5]),
             ([0, 1, 60], [before, 64, 100]), ([0, 400, 5], [before, 3000, 7]),
             ([2, 0, 3, 1], [5, before, 9, 1])]
    width = max(len(r) for r, _ in cases)
    rel = np.array([r + [0] * (width - len(r)) for r, _ in cases])
    tot = np.array([t + [0] * (width - len(t)) for _, t in cases])
    ap, _ = average_precision_tie_aware(rel, tot)
    map_r = map_at_r_tie_aware(rel, tot)
    for (r, t), ap_i, map_i in zip(cases, ap, map_r):
        with localcontext() as context:
            context.prec = 50
            ref_ap = decimal_expected_precision_sum(r, t, sum(t)) / sum(r)
            ref_map = decimal_expected_precision_sum(r, t, sum(r)) / sum(r)
        assert ap_i == pytest.approx(float(ref_ap), rel=1e-13, abs=0)
        assert map_i == pytest.approx(float(ref_map), rel=1e-13, abs=1e-300)


def test_top_k_hit_rate_tie_aware_large_group():
    # one group of n = 1000 items, r = 3 relevant, after 10 irrelevant items; k = 60
    rel, tot = np.array([[0, 3]]), np.array([[10, 1000]])
    miss = Fraction(math.comb(997, 50), math.comb(1000, 50))
    assert top_k_hit_rate_tie_aware(rel, tot, 60)[0] == pytest.approx(float(1 - miss),
                                                                      rel=1e-14)
    assert top_k_hit_rate_tie_aware(rel, tot, 10)[0] == 0.0
    assert top_k_hit_rate_tie_aware(rel, tot, 1008)[0] == 1.0  # only 2 items left out


# ---------------------------------------------------------------------------------------
# histograms and index order == brute force, every width
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", WIDTHS)
def test_hamming_histograms_and_index_order_match_brute_force(nbits):
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits)
    q_words, db_words = to_words(q_bits, nbits), to_words(db_bits, nbits)
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels)
    assert any(max(Counter(d).values()) > 1 for d, _ in per_query)  # ties present

    rel, tot = hamming_histograms(q_words, q_labels, db_words, db_labels, nbits, chunk=3)
    expected_hist = [bf_histogram(d, r, nbits) for d, r in per_query]
    np.testing.assert_array_equal(rel, [h[0] for h in expected_hist])
    np.testing.assert_array_equal(tot, [h[1] for h in expected_hist])

    ranked = hamming_ranked_relevance(q_words, q_labels, db_words, db_labels, nbits, chunk=4)
    bf_ranked = [bf_index_order_ranking(d, r) for d, r in per_query]
    np.testing.assert_array_equal(ranked, bf_ranked)

    ks = [1, 5, 20]
    expected = [bf_metrics(r, ks) for r in bf_ranked]
    ap, without = average_precision_index_order(ranked)
    assert_close(ap, [e["ap"] for e in expected])
    assert without == 1
    assert_close(map_at_r_index_order(ranked), [e["map_at_r"] for e in expected])
    for k in ks:
        assert_close(precision_at_k_index_order(ranked, k), [e[f"p{k}"] for e in expected])
        assert_close(recall_at_k_index_order(ranked, k), [e[f"r{k}"] for e in expected])
        assert_close(top_k_hit_rate_index_order(ranked, k), [e[f"hit{k}"] for e in expected])


@pytest.mark.parametrize("chunk", [1, 2, 5, None, 1000])
def test_iter_hamming_chunks_cover_queries_in_order(chunk):
    nbits = 20
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, nq=11)
    q_words, db_words = to_words(q_bits, nbits), to_words(db_bits, nbits)
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels)
    seen = []
    for rows, rel, tot, ranked in iter_hamming_chunks(q_words, q_labels, db_words,
                                                      db_labels, nbits, chunk=chunk):
        for offset, i in enumerate(range(rows.start, rows.stop)):
            d, r = per_query[i]
            assert [rel[offset].tolist(), tot[offset].tolist()] == list(
                bf_histogram(d, r, nbits))
            assert ranked[offset].tolist() == bf_index_order_ranking(d, r)
            seen.append(i)
    assert seen == list(range(11))


def test_hamming_histograms_refuse_too_small_nbits():
    bits = np.array([[False] * 10, [True] * 10])  # distance 10
    words = to_words(bits, 10)
    with pytest.raises(ValueError):
        hamming_histograms(words, np.zeros(2), words, np.zeros(2), 5)


# ---------------------------------------------------------------------------------------
# exclude_self, queries without relevant items, radius balls
# ---------------------------------------------------------------------------------------


def test_exclude_self_removes_only_the_query_itself():
    nbits = 9
    rng = np.random.default_rng(21)
    bits = rng.random((15, nbits)) < 0.5
    bits[5] = bits[4]                  # a duplicate of another item stays in the ranking
    labels = rng.integers(0, 3, 15)
    labels[7] = 42                     # its only relevant item is itself
    words = to_words(bits, nbits)
    per_query = bf_per_query(bits, labels, bits, labels, exclude_self=True)
    rel, tot = hamming_histograms(words, labels, words, labels, nbits, exclude_self=True,
                                  chunk=4)
    assert (tot.sum(axis=1) == 14).all()
    assert rel[7].sum() == 0
    assert tot[4, 0] == 1 and rel[4, 0] == int(labels[4] == labels[5])
    for i, (d, r) in enumerate(per_query):
        assert [rel[i].tolist(), tot[i].tolist()] == list(bf_histogram(d, r, nbits))
    ranked = hamming_ranked_relevance(words, labels, words, labels, nbits,
                                      exclude_self=True, chunk=4)
    np.testing.assert_array_equal(ranked, [bf_index_order_ranking(d, r) for d, r in per_query])
    with pytest.raises(ValueError):
        hamming_histograms(words[:3], labels[:3], words, labels, nbits, exclude_self=True)


def test_queries_without_relevant_items_score_zero_and_are_counted():
    rel = np.array([[0, 0, 0], [1, 0, 1], [0, 0, 0]])
    tot = np.array([[2, 1, 3], [2, 1, 3], [0, 0, 0]])
    ap, without = average_precision_tie_aware(rel, tot)
    assert without == 2 and ap[0] == 0 and ap[2] == 0 and ap[1] > 0
    assert map_at_r_tie_aware(rel, tot)[[0, 2]].tolist() == [0, 0]
    for k in (1, 4, 10):
        assert recall_at_k_tie_aware(rel, tot, k)[[0, 2]].tolist() == [0, 0]
        assert precision_at_k_tie_aware(rel, tot, k)[[0, 2]].tolist() == [0, 0]
        assert top_k_hit_rate_tie_aware(rel, tot, k)[[0, 2]].tolist() == [0, 0]
    ranked = np.array([[False] * 4, [False, True, False, False]])
    ap_io, without_io = average_precision_index_order(ranked)
    assert without_io == 1 and ap_io.tolist() == [0.0, 0.5]
    assert map_at_r_index_order(ranked).tolist() == [0.0, 0.0]
    assert recall_at_k_index_order(ranked, 2).tolist() == [0.0, 1.0]


def test_precision_within_radius_and_empty_balls():
    nbits = 8
    rng = np.random.default_rng(3)
    q_bits = rng.random((25, nbits)) < 0.5
    db_bits = rng.random((12, nbits)) < 0.5
    q_labels, db_labels = rng.integers(0, 3, 25), rng.integers(0, 3, 12)
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels)
    rel, tot = hamming_histograms(to_words(q_bits, nbits), q_labels,
                                  to_words(db_bits, nbits), db_labels, nbits)
    for radius in range(nbits + 1):
        expected, empty = [], 0
        for d, r in per_query:
            ball = [rj for dj, rj in zip(d, r) if dj <= radius]
            expected.append(Fraction(sum(ball), len(ball)) if ball else Fraction(0))
            empty += not ball
        precision, empty_share = precision_within_radius(rel, tot, radius)
        assert_close(precision, expected)
        assert empty_share == pytest.approx(empty / 25)
        if radius == 0:
            assert empty_share > 0  # the test covers empty balls
    assert precision_within_radius(np.array([[0, 0]]), np.array([[0, 3]]), 0) == (
        pytest.approx([0.0]), 1.0)


def test_pr_curve_by_radius_matches_brute_force():
    nbits = 10
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, nq=14, ndb=30, seed=5)
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels)
    rel, tot = hamming_histograms(to_words(q_bits, nbits), q_labels,
                                  to_words(db_bits, nbits), db_labels, nbits)
    precision, recall, empty_share = pr_curve_by_radius(rel, tot)
    for radius in range(nbits + 1):
        p, r, e = [], [], 0
        for d, rels in per_query:
            ball = [rj for dj, rj in zip(d, rels) if dj <= radius]
            p.append(Fraction(sum(ball), len(ball)) if ball else Fraction(0))
            r.append(Fraction(sum(ball), sum(rels)) if sum(rels) else Fraction(0))
            e += not ball
        assert precision[radius] == pytest.approx(float(sum(p) / len(p)), abs=TOL)
        assert recall[radius] == pytest.approx(float(sum(r) / len(r)), abs=TOL)
        assert empty_share[radius] == pytest.approx(e / len(per_query))
    assert recall[-1] == pytest.approx(13 / 14)  # one query has no relevant item


# ---------------------------------------------------------------------------------------
# real-valued features
# ---------------------------------------------------------------------------------------


def bf_euclidean_per_query(q, q_labels, db, db_labels, exclude_self):
    out = []
    for i in range(len(q)):
        keep = [j for j in range(len(db)) if not (exclude_self and j == i)]
        dists = [sum((a - b) ** 2 for a, b in zip(q[i], db[j])) for j in keep]
        rels = [q_labels[i] == db_labels[j] for j in keep]
        out.append(bf_index_order_ranking(dists, rels))
    return out


@pytest.mark.parametrize("exclude_self", [False, True])
def test_euclidean_metrics_match_brute_force(exclude_self):
    rng = np.random.default_rng(17)
    db = rng.normal(size=(40, 5))
    db_labels = rng.integers(0, 4, 40)
    if exclude_self:
        q, q_labels = db, db_labels
    else:
        q, q_labels = rng.normal(size=(13, 5)), rng.integers(0, 5, 13)
    ks = (1, 5, 10, 50)
    ranked = bf_euclidean_per_query(q, q_labels, db, db_labels, exclude_self)
    expected = [bf_metrics(r, ks) for r in ranked]
    for chunk in (1, 6, None):
        out = euclidean_metrics(q, q_labels, db, db_labels, exclude_self, chunk, ks)
        assert_matches_brute_force(out, ranked, ks)
    means = evaluate_features(q, q_labels, db, db_labels, exclude_self, ks)
    assert means["map"] == pytest.approx(float(np.mean([e["ap"] for e in expected])))
    assert means["top5"] == pytest.approx(float(np.mean([e["hit5"] for e in expected])))
    assert means["n_database"] == 40 - exclude_self and means["n_queries"] == len(q)


# ---------------------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclude_self", [False, True])
def test_evaluate_codes_matches_brute_force(exclude_self):
    nbits, ks = 3, (1, 2, 5)
    rng = np.random.default_rng(9)
    db_bits = rng.random((8, nbits)) < 0.5
    db_labels = rng.integers(0, 2, 8)
    if exclude_self:
        q_bits, q_labels = db_bits, db_labels
    else:
        q_bits, q_labels = rng.random((6, nbits)) < 0.5, rng.integers(0, 3, 6)
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels, exclude_self)
    tie = [bf_expected_metrics(d, r, ks) for d, r in per_query]
    index = [bf_metrics(bf_index_order_ranking(d, r), ks) for d, r in per_query]

    def mean(rows, key):
        return float(sum(row[key] for row in rows) / len(rows))

    for codes in ((q_bits, db_bits), (pack_bits(q_bits), pack_bits(db_bits))):
        out = evaluate_codes(codes[0], q_labels, codes[1], db_labels, nbits, exclude_self,
                             ks=ks, radii=(0, 1), chunk=4)
        assert out["map_tie_aware"] == pytest.approx(mean(tie, "ap"), abs=TOL)
        assert out["map_index_order"] == pytest.approx(mean(index, "ap"), abs=TOL)
        assert out["map_at_r_tie_aware"] == pytest.approx(mean(tie, "map_at_r"), abs=TOL)
        assert out["map_at_r_index_order"] == pytest.approx(mean(index, "map_at_r"), abs=TOL)
        for k in ks:
            for suffix, rows in (("tie_aware", tie), ("index_order", index)):
                assert out[f"precision_at_{k}_{suffix}"] == pytest.approx(
                    mean(rows, f"p{k}"), abs=TOL)
                assert out[f"recall_at_{k}_{suffix}"] == pytest.approx(
                    mean(rows, f"r{k}"), abs=TOL)
                assert out[f"top{k}_{suffix}"] == pytest.approx(mean(rows, f"hit{k}"),
                                                               abs=TOL)
        for radius in (0, 1):
            balls = [[r for d, r in zip(*q) if d <= radius] for q in per_query]
            assert out[f"precision_radius{radius}"] == pytest.approx(
                np.mean([sum(b) / len(b) if b else 0 for b in balls]), abs=TOL)
            assert out[f"empty_radius{radius}_share"] == pytest.approx(
                np.mean([not b for b in balls]))
        assert out["queries_without_relevant"] == sum(not any(r) for _, r in per_query)
        assert (out["n_queries"], out["n_database"]) == (len(q_bits), 8 - exclude_self)


def test_relative_drop():
    assert relative_drop(0.8, 0.76) == pytest.approx(0.05)
    assert relative_drop(0.5, 0.6) == pytest.approx(-0.2)
    np.testing.assert_allclose(relative_drop([0.8, 0.4], [0.4, 0.4]), [0.5, 0.0])
    with pytest.raises(ValueError):
        relative_drop(0.0, 0.1)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_euclidean_exact_ties_by_index_match_brute_force(exclude_self, backend):
    """Integer-valued float32 features (every distance exact, many exact ties, including
    mirror images q + e and q - e that |q|^2 - 2q.x + |x|^2 would split): both backends rank
    by (exact distance, database index), as brute force in integers does."""
    from tools.hashing import native
    if backend == "native" and native.lib() is None:
        pytest.skip("C kernels unavailable")
    rng = np.random.default_rng(5)
    db = rng.integers(-3, 4, (60, 4)).astype(np.float32)
    db[20:25] = db[3]                     # identical items
    db_labels = rng.integers(0, 3, 60)
    if exclude_self:
        q, q_labels = db, db_labels
    else:
        q = rng.integers(-3, 4, (11, 4)).astype(np.float32)
        db[30], db[31] = q[0] + [1, 2, 0, 0], q[0] - [1, 2, 0, 0]  # mirror images
        q_labels = rng.integers(0, 4, 11)
    ks = (1, 3, 10, 59)
    ranked = bf_euclidean_rankings(q, q_labels, db, db_labels, exclude_self)
    from contextlib import nullcontext
    with (native.disabled() if backend == "numpy" else nullcontext()):
        out = euclidean_metrics(q, q_labels, db, db_labels, exclude_self, None, ks)
    assert_matches_brute_force(out, ranked, ks)


def test_euclidean_native_equals_numpy_on_float_features():
    from tools.hashing import native
    if native.lib() is None:
        pytest.skip("C kernels unavailable")
    rng = np.random.default_rng(8)
    db = rng.random((700, 12)).astype(np.float32)
    db[100:110] = db[5]
    q, ql, dbl = rng.random((37, 12)).astype(np.float32), rng.integers(0, 5, 37), rng.integers(0, 5, 700)
    fast = euclidean_metrics(q, ql, db, dbl, ks=(1, 10, 700))
    with native.disabled():
        plain = euclidean_metrics(q, ql, db, dbl, ks=(1, 10, 700))
    for key in fast:
        np.testing.assert_allclose(fast[key], plain[key], rtol=0, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("ndb,nq,dim", [(1, 1, 1), (2, 3, 2), (17, 9, 3), (33, 8, 48),
                                        (100, 17, 5)])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("case", ["mixed", "all_relevant", "no_relevant", "all_tied"])
def test_euclidean_native_edge_cases_match_brute_force(ndb, nq, dim, exclude_self, case):
    """The C kernel's paths: database tails (ndb not a multiple of the 16-item tile), query
    blocks (nq not a multiple of 8), every item relevant, queries without relevant items,
    all distances tied (one bucket: the qsort path beyond 32 items), self-exclusion down to
    a database of one, k beyond the database."""
    from tools.hashing import native
    if native.lib() is None:
        pytest.skip("C kernels unavailable")
    rng = np.random.default_rng([ndb, nq, dim])
    db = rng.integers(-2, 3, (ndb, dim)).astype(np.float32)
    db_labels = rng.integers(0, 3, ndb)
    if case == "all_tied":
        db[:] = db[0]
    if case == "all_relevant":
        db_labels[:] = 1
    if case == "no_relevant" and exclude_self:  # alone in their class: only themselves
        db_labels[::2] = 100 + np.arange(0, ndb, 2)
    if exclude_self:
        q, q_labels = db, db_labels.copy()
    else:
        q = rng.integers(-2, 3, (nq, dim)).astype(np.float32)
        q_labels = rng.integers(0, 3, nq) if case != "all_relevant" else np.ones(nq, int)
    if case == "no_relevant" and not exclude_self:
        q_labels = q_labels.copy()
        q_labels[::2] = 7  # no database item has label 7
    ks = (1, 3, 16, 200)
    ranked = bf_euclidean_rankings(q, q_labels, db, db_labels, exclude_self)
    out = euclidean_metrics(q, q_labels, db, db_labels, exclude_self, None, ks)
    assert_matches_brute_force(out, ranked, ks)
    with native.disabled():
        plain = euclidean_metrics(q, q_labels, db, db_labels, exclude_self, None, ks)
    for key in out:
        np.testing.assert_allclose(out[key], plain[key], rtol=0, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("kernel", ["best", "generic"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("case", ["one_relevant", "zero_distances", "big_tied_bucket",
                                  "far_outlier", "tiny", "many_ties"])
def test_euclidean_native_ranking_paths_match_brute_force(kernel, exclude_self, case):
    """tqn_euclid's ranking (a bucket table of the relevant items' range, one float
    comparison per item, exact comparisons with the bucket's list of relevant keys where it
    holds several or the float coordinates tie; sorted keys and binary searches for a bucket
    of more than TQN_ELIST = 16), with the AVX-512 slot pass ("best" where
    the CPU has it) and the portable one ("generic"): one relevant item per query; many
    distances of +0.0 (copies of the queries); one bucket holding far more than 16 relevant
    and non-relevant items (the qsort and binary-search paths); a far outlier squeezing every
    other relevant item into a few buckets; databases of 1..3 items with k beyond them; many
    exact ties across labels. Against integer brute force and the numpy twin."""
    from contextlib import nullcontext
    from tools.hashing import native
    if native.lib() is None:
        pytest.skip("C kernels unavailable")
    rng = np.random.default_rng([len(case), exclude_self])
    ndb, nq, dim = (3, 3, 2) if case == "tiny" else (300, 23, 4)
    db = rng.integers(-3, 4, (ndb, dim)).astype(np.float32)
    db_labels = rng.integers(0, 3, ndb)
    q = rng.integers(-3, 4, (nq, dim)).astype(np.float32)
    q_labels = rng.integers(0, 3, nq)
    if case == "one_relevant":
        db_labels = np.arange(ndb) + 10
        q_labels = rng.choice(db_labels, nq)
        if exclude_self:  # each item's only relevant item is its twin
            db_labels = np.arange(ndb) // 2
    if case == "zero_distances":
        db[: 4 * nq] = np.repeat(q, 4, axis=0)  # four copies of every query
    if case == "big_tied_bucket":
        db[50:250] = db[7]
        q[::2] = db[7]
    if case == "far_outlier":
        db[11] = 1000
    if case == "many_ties":
        db = rng.integers(0, 2, (ndb, dim)).astype(np.float32)
        q = rng.integers(0, 2, (nq, dim)).astype(np.float32)
    if exclude_self:
        q, q_labels = db, db_labels.copy()
    ks = (1, 2, 5, 40, 1000)
    ranked = bf_euclidean_rankings(q, q_labels, db, db_labels, exclude_self)
    with native.generic_kernels() if kernel == "generic" else nullcontext():
        out = euclidean_metrics(q, q_labels, db, db_labels, exclude_self, None, ks)
    assert_matches_brute_force(out, ranked, ks)
    with native.disabled():
        plain = euclidean_metrics(q, q_labels, db, db_labels, exclude_self, None, ks)
    for key in out:
        np.testing.assert_allclose(out[key], plain[key], rtol=0, atol=1e-14, err_msg=key)


def test_euclidean_native_generic_equals_best_bitwise():
    """The AVX-512 slot pass and the portable one give the same statistics bit for bit, on
    continuous features (float coordinates rarely tie) and with infinite distances (an
    infinite coordinate: beyond every finite relevant item, or the whole relevant range)."""
    from tools.hashing import native
    if native.lib() is None:
        pytest.skip("C kernels unavailable")
    rng = np.random.default_rng(21)
    db = rng.normal(size=(3000, 8)).astype(np.float32)
    db[100:140] = db[3]
    db_labels = rng.integers(0, 4, 3000)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    q_labels = rng.integers(0, 4, 30)
    rel = native.relevance_index(q_labels, db_labels)
    ks = np.array([1, 10, 100, 5000])
    for variant in ("finite", "inf"):
        if variant == "inf":
            db[::7, 2] = np.inf
        db_t = np.ascontiguousarray(db.T)
        best = native.euclid(q, db_t, rel, -1, ks)
        with native.generic_kernels():
            generic = native.euclid(q, db_t, rel, -1, ks)
        for a, b in zip(best, generic):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), variant
        with native.disabled():
            plain = euclidean_metrics(q, q_labels, db, db_labels, ks=tuple(ks))
        fast = euclidean_metrics(q, q_labels, db, db_labels, ks=tuple(ks))
        for key in fast:
            np.testing.assert_allclose(fast[key], plain[key], rtol=0, atol=1e-14,
                                       err_msg=f"{variant} {key}")


@pytest.mark.parametrize("ndb,dim", [(1999, 48), (23, 48), (7, 5), (1000, 3)])
def test_euclidean_native_rounding_order_of_distances(ndb, dim):
    """The distance kernels (the AVX-512 one and the portable one) round exactly as the rule of
    euclidean_distances (sum over k in order, no fused multiply-add): with a constant query,
    an item and its coordinate permutations are at the same true distance, so their order --
    hence AP, mAP@R and hits, with the permutations relevant and the originals not -- is
    decided by the last bits of the rounded sums alone. Database sizes leave partial 16-item
    tiles."""
    from tools.hashing import native
    if native.lib() is None:
        pytest.skip("C kernels unavailable")
    rng = np.random.default_rng([ndb, dim])
    base = (rng.normal(size=(ndb, dim)) * 10.0 ** rng.uniform(-2, 2, (ndb, dim)))
    db = base.astype(np.float32)
    db[1::2] = db[0:ndb - 1:2][:, ::-1]  # odd items: the previous item reversed
    db[2::4] = np.roll(db[2::4], 1, axis=1)  # some: rotated
    db_labels = np.arange(ndb) % 2
    q = np.repeat(rng.normal(size=(9, 1)) * 3, dim, axis=1).astype(np.float32)
    q_labels = np.ones(9, dtype=np.int64)
    d = euclidean_distances(q, db)
    if ndb > 100:  # the test is only sharp if rounding breaks many of the true ties
        pairs = d[:, 1::2] != d[:, 0:ndb - 1:2]
        assert pairs.mean() > 0.1
    ks = (1, 10, 100)
    with native.disabled():
        plain = euclidean_metrics(q, q_labels, db, db_labels, ks=ks)
    fast = euclidean_metrics(q, q_labels, db, db_labels, ks=ks)
    with native.generic_kernels():
        generic = euclidean_metrics(q, q_labels, db, db_labels, ks=ks)
    for key in fast:  # one pair swapped moves AP by ~1e-4
        np.testing.assert_allclose(fast[key], plain[key], rtol=0, atol=1e-14, err_msg=key)
        assert np.asarray(fast[key]).tobytes() == np.asarray(generic[key]).tobytes(), key
