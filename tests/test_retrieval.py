"""Tests of the fast evaluation paths (tools/hashing/native.c + metrics.py) and of the faiss
export (tools/retrieval.py) against brute force written plainly in this file.

* every evaluation path -- the C scan and the numpy fallback, any chunking -- gives the
  histograms of brute force exactly, and index-order metrics equal to textbook loops in
  exact fractions (ties broken by Python's stable sort), at every width 1..256 bits;
* faiss's bit order is checked against faiss's own bit readers, and faiss's answers against
  this project's ranking: IndexBinaryFlat gives the same ids and distances (ties by id),
  the hash indexes the same distances and, below the k-th distance, the same ids.
"""
from fractions import Fraction
import json
import os

import numpy as np
import pytest

from test_metrics import bf_per_query  # the brute-force reference, in one place
from tools.hashing import native as _native
from tools.hashing import binary_index as RT
from tools import retrieval as RT_CLI
from tools.hashing.codes import hamming, pack_bits, to_words, unpack_bits
from tools.hashing.metrics import (_scan_chunks, average_precision_tie_aware, evaluate_codes,
                           hamming_histograms, hamming_ranked_relevance, map_at_r_tie_aware,
                           precision_at_k_tie_aware, recall_at_k_tie_aware,
                           top_k_hit_rate_tie_aware)

TOL = 1e-12
ALL_WIDTHS = list(range(1, 257))
KS = (1, 3, 10)


# ---------------------------------------------------------------------------------------
# brute force
# ---------------------------------------------------------------------------------------


def bf_histogram(dists, rels, nbits):
    rel, tot = [0] * (nbits + 1), [0] * (nbits + 1)
    for d, r in zip(dists, rels):
        tot[d] += 1
        rel[d] += r
    return rel, tot


def bf_index_order(dists, rels, ks):
    """AP, MAP@R and #relevant in the top k of the ranking by (distance, index)."""
    ranked = [rels[j] for j in sorted(range(len(dists)), key=lambda j: dists[j])]
    n_rel = sum(ranked)
    hits, ap, map_r = 0, Fraction(0), Fraction(0)
    for position, relevant in enumerate(ranked, start=1):
        if relevant:
            hits += 1
            ap += Fraction(hits, position)
            if position <= n_rel:
                map_r += Fraction(hits, position)
    return dict(ap=ap / n_rel if n_rel else 0, map_at_r=map_r / n_rel if n_rel else 0,
                found={k: sum(ranked[:k]) for k in ks}, n=len(ranked), n_rel=n_rel)


def tied_problem(nbits, nq, ndb, seed, n_labels=4):
    """Codes around a few prototypes (many ties at any width), labels mostly following
    them, exact copies of queries in the database and one query without relevant items."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((4, nbits)) < 0.5
    flip = min(0.25, 1.5 / nbits)

    def draw(n):
        which = rng.integers(0, 4, n)
        bits = prototypes[which] ^ (rng.random((n, nbits)) < flip)
        labels = which % n_labels
        noisy = rng.random(n) < 0.2
        labels[noisy] = rng.integers(0, n_labels, noisy.sum())
        return bits, labels

    q_bits, q_labels = draw(nq)
    db_bits, db_labels = draw(ndb)
    db_bits[: min(3, nq, ndb)] = q_bits[: min(3, nq, ndb)]
    q_labels[-1] = 99
    return q_bits, q_labels, db_bits, db_labels


@pytest.fixture(params=["native", "numpy", "numpy-1.26", "generic"])
def backend(request):
    """Runs a test with the C kernels, with the pure-numpy fallback (also as on numpy 1.26,
    which has no np.bitwise_count: the byte lookup table of tools.hashing.codes.popcount),
    and with the portable C variant (no POPCNT instruction, as on non-x86 machines)."""
    if request.param.startswith("numpy"):
        if request.param == "numpy-1.26":
            request.getfixturevalue("monkeypatch").delattr(np, "bitwise_count", raising=False)
        with _native.disabled():
            yield request.param
        return
    if _native.lib() is None:
        pytest.skip(f"C kernels unavailable: {_native.status()['reason']}")
    if request.param == "generic":
        with _native.generic_kernels():
            yield "generic"
    else:
        yield "native"


def check_scan_against_brute_force(q_bits, q_labels, db_bits, db_labels, nbits, exclude_self,
                                   chunk, ks=KS):
    """Every chunk of `_scan_chunks` (the evaluation's hot path) equals brute force."""
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels, exclude_self)
    seen = []
    for rows, rel, tot, (ap_sum, mapr_sum, hits_k) in _scan_chunks(
            to_words(q_bits, nbits), q_labels, to_words(db_bits, nbits), db_labels, nbits,
            exclude_self, chunk, ks):
        if chunk is not None:
            assert rows.stop - rows.start <= chunk
        for offset, i in enumerate(range(rows.start, rows.stop)):
            d, r = per_query[i]
            assert [rel[offset].tolist(), tot[offset].tolist()] == list(bf_histogram(d, r, nbits))
            ref = bf_index_order(d, r, ks)
            n_rel = ref["n_rel"]
            assert (ap_sum[offset] / n_rel if n_rel else 0) == pytest.approx(float(ref["ap"]),
                                                                            abs=TOL)
            assert (mapr_sum[offset] / n_rel if n_rel else 0) == pytest.approx(
                float(ref["map_at_r"]), abs=TOL)
            assert hits_k[offset].tolist() == [ref["found"][k] for k in ks]
            seen.append(i)
    assert seen == list(range(len(q_bits)))


# ---------------------------------------------------------------------------------------
# fast evaluation == brute force
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", ALL_WIDTHS)
def test_scan_matches_brute_force_at_every_width(nbits, backend):
    exclude_self = nbits % 2 == 0
    nq, ndb = (9, 9) if exclude_self else (7, 31)
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, nq, ndb, seed=nbits)
    if exclude_self:
        q_bits, q_labels = db_bits, db_labels
    check_scan_against_brute_force(q_bits, q_labels, db_bits, db_labels, nbits, exclude_self,
                                   chunk=1 + nbits % 4)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 8, None])
def test_scan_chunk_boundaries_on_a_large_database(chunk, backend):
    """3000 items, tiny chunks: ties in groups of hundreds, duplicates of queries."""
    nbits = 10
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, 7, 3000, seed=5)
    check_scan_against_brute_force(q_bits, q_labels, db_bits, db_labels, nbits, False,
                                   chunk, ks=(1, 50, 400, 3000, 5000))


def test_scan_exclude_self_large_database_first_queries(backend):
    """exclude_self with a 2000-item database: the first 12 queries, in chunks of 5."""
    nbits = 9
    _, _, bits, labels = tied_problem(nbits, 1, 2000, seed=8)
    per_query = bf_per_query(bits[:12], labels, bits, labels, exclude_self=True)
    q_words = to_words(bits, nbits)
    for rows, rel, tot, (ap_sum, _, hits_k) in _scan_chunks(
            q_words, labels, q_words, labels, nbits, True, 5, (1, 10)):
        for offset, i in enumerate(range(rows.start, min(rows.stop, 12))):
            d, r = per_query[i]
            assert [rel[offset].tolist(), tot[offset].tolist()] == list(bf_histogram(d, r, nbits))
            ref = bf_index_order(d, r, (1, 10))
            assert ap_sum[offset] / ref["n_rel"] == pytest.approx(float(ref["ap"]), abs=TOL)
            assert hits_k[offset].tolist() == [ref["found"][1], ref["found"][10]]
        if rows.stop >= 12:
            break


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_exclude_self_with_other_query_labels(chunk, backend):
    """exclude_self drops item i from query i's ranking whatever the labels: here half the
    queries carry another label than their own database item, which is then irrelevant."""
    nbits = 11
    _, _, bits, labels = tied_problem(nbits, 1, 120, seed=13)
    q_labels = labels.copy()
    q_labels[::2] = (labels[::2] + 1) % 4
    check_scan_against_brute_force(bits, q_labels, bits, labels, nbits, True, chunk,
                                   ks=(1, 7, 119))
    rel, tot = hamming_histograms(to_words(bits, nbits), q_labels, to_words(bits, nbits),
                                  labels, nbits, exclude_self=True, chunk=chunk)
    for i, (d, r) in enumerate(bf_per_query(bits, q_labels, bits, labels, exclude_self=True)):
        assert [rel[i].tolist(), tot[i].tolist()] == list(bf_histogram(d, r, nbits))


@pytest.mark.parametrize("nbits", [1, 7, 12, 48, 64, 65, 129, 256])
def test_evaluate_codes_means_match_brute_force(nbits, backend):
    """The wrapper's means: index order from brute force, tie-aware from the closed forms
    (tested against enumeration in test_metrics.py) on brute-force histograms."""
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, 11, 60, seed=100 + nbits)
    per_query = bf_per_query(q_bits, q_labels, db_bits, db_labels)
    rel = np.array([bf_histogram(d, r, nbits)[0] for d, r in per_query])
    tot = np.array([bf_histogram(d, r, nbits)[1] for d, r in per_query])
    refs = [bf_index_order(d, r, KS) for d, r in per_query]
    out = evaluate_codes(pack_bits(q_bits), q_labels, pack_bits(db_bits), db_labels, nbits,
                         ks=KS, radii=(0, 2), chunk=4)
    mean = lambda values: float(np.mean([float(v) for v in values]))  # noqa: E731
    assert out["map_index_order"] == pytest.approx(mean(r["ap"] for r in refs), abs=TOL)
    assert out["map_at_r_index_order"] == pytest.approx(mean(r["map_at_r"] for r in refs),
                                                        abs=TOL)
    assert out["map_tie_aware"] == pytest.approx(
        float(np.mean(average_precision_tie_aware(rel, tot)[0])), abs=TOL)
    assert out["map_at_r_tie_aware"] == pytest.approx(float(np.mean(map_at_r_tie_aware(rel, tot))),
                                                      abs=TOL)
    for k in KS:
        assert out[f"precision_at_{k}_index_order"] == pytest.approx(
            mean(Fraction(r["found"][k], min(k, r["n"])) for r in refs), abs=TOL)
        assert out[f"recall_at_{k}_index_order"] == pytest.approx(
            mean(Fraction(r["found"][k], r["n_rel"]) if r["n_rel"] else 0 for r in refs), abs=TOL)
        assert out[f"top{k}_index_order"] == pytest.approx(
            mean(r["found"][k] > 0 for r in refs), abs=TOL)
        assert out[f"precision_at_{k}_tie_aware"] == pytest.approx(
            float(np.mean(precision_at_k_tie_aware(rel, tot, k))), abs=TOL)
        assert out[f"recall_at_{k}_tie_aware"] == pytest.approx(
            float(np.mean(recall_at_k_tie_aware(rel, tot, k))), abs=TOL)
        assert out[f"top{k}_tie_aware"] == pytest.approx(
            float(np.mean(top_k_hit_rate_tie_aware(rel, tot, k))), abs=TOL)
    assert out["queries_without_relevant"] == 1


@pytest.mark.parametrize("nbits", [12, 48, 64, 100, 256])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_native_and_numpy_agree_on_a_larger_problem(nbits, exclude_self):
    if _native.lib() is None:
        pytest.skip(f"C kernels unavailable: {_native.status()['reason']}")
    rng = np.random.default_rng(nbits)
    n = 3000
    db_bits = rng.random((n, nbits)) < 0.5
    db_bits[100:400] = db_bits[0]  # a large tie group
    db_labels = rng.integers(0, 10, n)
    q_bits, q_labels = (db_bits, db_labels) if exclude_self else (db_bits[:150] ^ (
        rng.random((150, nbits)) < 0.1), rng.integers(0, 10, 150))
    args = (to_words(q_bits, nbits), q_labels, to_words(db_bits, nbits), db_labels, nbits,
            exclude_self)
    ks = (1, 10, 100, 1000)
    native = list(_scan_chunks(*args, None, ks))
    with _native.disabled():
        plain = list(_scan_chunks(*args, 97, ks))
    cat = lambda parts, i: np.concatenate([p[i] for p in parts])  # noqa: E731
    np.testing.assert_array_equal(cat(native, 1), cat(plain, 1))
    np.testing.assert_array_equal(cat(native, 2), cat(plain, 2))
    stats_n = [np.concatenate([p[3][j] for p in native]) for j in range(3)]
    stats_p = [np.concatenate([p[3][j] for p in plain]) for j in range(3)]
    np.testing.assert_allclose(stats_n[0], stats_p[0], rtol=1e-13, atol=0)
    np.testing.assert_allclose(stats_n[1], stats_p[1], rtol=1e-13, atol=0)
    np.testing.assert_array_equal(stats_n[2], stats_p[2])
    hist_native = hamming_histograms(*args, chunk=333)
    with _native.disabled():
        hist_plain = hamming_histograms(*args)
    np.testing.assert_array_equal(hist_native[0], hist_plain[0])
    np.testing.assert_array_equal(hist_native[1], hist_plain[1])


@pytest.mark.parametrize("labels", [
    lambda rng, n: rng.integers(0, 4, n).astype(np.int64) * (2**40) - 2**41,  # beyond int32
    lambda rng, n: np.array(["cat", "dog", "eel", "fox"])[rng.integers(0, 4, n)],
    lambda rng, n: rng.integers(0, 4, n) / 2.0,
    lambda rng, n: rng.integers(0, 3, n).astype(np.uint8),
])
def test_label_types_give_the_same_results(labels):
    rng = np.random.default_rng(3)
    nbits = 16
    q_bits, _, db_bits, _ = tied_problem(nbits, 10, 80, seed=3)
    q_labels, db_labels = labels(rng, 10), labels(rng, 80)
    results = []
    for disable in (False, True):
        if disable:
            with _native.disabled():
                results.append(evaluate_codes(q_bits, q_labels, db_bits, db_labels, nbits))
        else:
            results.append(evaluate_codes(q_bits, q_labels, db_bits, db_labels, nbits))
    for key, value in results[0].items():
        assert value == pytest.approx(results[1][key], abs=TOL), key


def test_scan_refuses_codes_wider_than_nbits(backend):
    bits = np.zeros((3, 10), dtype=bool)
    bits[1] = True  # distance 10 from the others
    words = to_words(bits, 10)
    with pytest.raises(ValueError, match="exceeds nbits"):
        hamming_histograms(words, np.zeros(3), words, np.zeros(3), 5)
    with pytest.raises(ValueError, match="exceeds nbits"):
        list(_scan_chunks(words, np.zeros(3), words, np.zeros(3), 5, False, None, (1,)))


@pytest.mark.parametrize("threads", [2, 3, 16])
def test_threads_do_not_change_results(threads):
    nbits = 24
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, 40, 700, seed=24)
    one = evaluate_codes(q_bits, q_labels, db_bits, db_labels, nbits, chunk=13)
    many = evaluate_codes(q_bits, q_labels, db_bits, db_labels, nbits, chunk=13,
                          threads=threads)
    assert one == many  # bitwise: each query is computed alike
    same = evaluate_codes(db_bits, db_labels, db_bits, db_labels, nbits, exclude_self=True,
                          chunk=50, threads=threads)
    assert same == evaluate_codes(db_bits, db_labels, db_bits, db_labels, nbits,
                                  exclude_self=True, chunk=50)


def test_tqn_native_0_runs_the_numpy_fallback_without_bitwise_count(monkeypatch):
    """TQN_NATIVE=0 with numpy 1.26 (no np.bitwise_count; taken away here): evaluate_codes runs
    the numpy path and gives what the C scan (or numpy's bitwise_count) gives."""
    nbits = 37
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, 9, 300, seed=5)
    reference = evaluate_codes(q_bits, q_labels, db_bits, db_labels, nbits, chunk=4)
    dist = hamming(to_words(q_bits, nbits), to_words(db_bits, nbits))
    monkeypatch.setenv("TQN_NATIVE", "0")
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert _native.lib() is None and _native.status()["reason"] == "disabled by TQN_NATIVE=0"
    assert not hasattr(np, "bitwise_count")
    fallback = evaluate_codes(q_bits, q_labels, db_bits, db_labels, nbits, chunk=4)
    assert fallback.keys() == reference.keys()
    for key, value in reference.items():
        assert fallback[key] == pytest.approx(value, abs=1e-14), key
    np.testing.assert_array_equal(hamming(to_words(q_bits, nbits), to_words(db_bits, nbits)),
                                  dist)


def test_native_status_and_disabled_switch():
    status = _native.status()
    assert status["backend"] in ("native", "numpy")
    with _native.disabled():
        assert _native.lib() is None and _native.status()["backend"] == "numpy"
        assert "disabled" in _native.status()["reason"]


def test_hamming_ranked_relevance_unchanged_by_backend():
    nbits = 33
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, 6, 500, seed=33)
    args = (to_words(q_bits, nbits), q_labels, to_words(db_bits, nbits), db_labels, nbits)
    fast = hamming_ranked_relevance(*args, chunk=4)
    with _native.disabled():
        plain = hamming_ranked_relevance(*args, chunk=5)
    np.testing.assert_array_equal(fast, plain)
    d = hamming(args[0], args[2])
    with _native.disabled():
        np.testing.assert_array_equal(d, hamming(args[0], args[2]))


# ---------------------------------------------------------------------------------------
# exact top-k (this project's ranking) == brute force
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [1, 5, 12, 48, 64, 70, 128, 200])
@pytest.mark.parametrize("k", [1, 4, 37, 80])
def test_exact_search_is_the_index_order_top_k(nbits, k, backend):
    q_bits, _, db_bits, _ = tied_problem(nbits, 9, 60, seed=nbits + k)
    dist, ids = RT.exact_search(pack_bits(q_bits), pack_bits(db_bits), nbits, k, chunk=4)
    full = (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    for i in range(len(q_bits)):
        order = sorted(range(60), key=lambda j: full[i, j])[:k]
        assert ids[i, : len(order)].tolist() == order
        assert dist[i, : len(order)].tolist() == [int(full[i, j]) for j in order]
        assert (ids[i, len(order):] == -1).all()


def test_exact_search_exclude_self():
    nbits = 8
    _, _, bits, _ = tied_problem(nbits, 1, 40, seed=2)
    dist, ids = RT.exact_search(bits, bits, nbits, 39, exclude_self=True, chunk=7)
    full = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    for i in range(40):
        order = sorted((j for j in range(40) if j != i), key=lambda j: full[i, j])
        assert ids[i].tolist() == order


# ---------------------------------------------------------------------------------------
# faiss: bit order, neighbours, ties
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faiss():
    try:
        import faiss as module
    except ImportError:
        pytest.fail("faiss-cpu is missing: pip install -r tools/requirements.txt")
    return module


@pytest.mark.parametrize("nbits", list(range(1, 71)) + [96, 127, 128, 129, 200, 255, 256])
def test_faiss_bit_j_is_our_bit_j(nbits, faiss):
    rng = np.random.default_rng(nbits)
    features = rng.random((6, nbits)).astype(np.float32)
    bits = features > 0.5
    codes = RT.to_faiss_codes(pack_bits(bits), nbits)
    nbytes = codes.shape[1]
    # faiss's own bit reader: element j of faiss.unpack_bitstrings(codes, 8 * bytes, 1)
    unpacked = faiss.unpack_bitstrings(codes, 8 * nbytes, 1)
    np.testing.assert_array_equal(unpacked[:, :nbits], bits.astype(unpacked.dtype))
    assert not unpacked[:, nbits:].any()  # pad bits are zero
    # faiss's own binarization (dimension j -> bit j, set when x >= 0)
    theirs = np.zeros_like(codes)
    shifted = np.ascontiguousarray(features - 0.5)
    faiss.fvecs2bitvecs(faiss.swig_ptr(shifted), faiss.swig_ptr(theirs), nbits, len(features))
    np.testing.assert_array_equal(theirs, codes)
    np.testing.assert_array_equal(unpack_bits(RT.from_faiss_codes(codes, nbits), nbits), bits)
    if nbits % 8 == 0 and nbits > 8:  # the raw on-disk bytes are NOT faiss's bit order
        assert not np.array_equal(faiss.unpack_bitstrings(pack_bits(bits), nbits, 1), bits)


def test_hash_index_keys_on_our_first_bits(faiss):
    """IndexBinaryHash hashes faiss's first b bits. After to_faiss_codes these are our bits
    0..b-1: an item differing from the query in bit 11 only lies in another bucket
    (nflip = 0 misses it). With the raw big-bit-order bytes, b = 12 would hash byte 1's
    low nibble -- our pad bits 12..15 -- and not bit 11."""
    nbits = 12
    q = np.zeros((1, nbits), dtype=bool)
    db = np.zeros((3, nbits), dtype=bool)
    db[1, 11] = True    # differs in bit 11 (inside the b = 12 key)
    db[2, 0] = True     # differs in bit 0
    index = RT.build_index(pack_bits(db), nbits, "hash", hash_bits=12)
    dist, ids = RT.search(index, pack_bits(q), nbits, 3, nflip=0)
    assert ids[0].tolist() == [0, -1, -1]
    dist, ids = RT.search(index, pack_bits(q), nbits, 3, nflip=1)
    assert ids[0].tolist() == [0, 1, 2] and dist[0].tolist() == [0, 1, 1]
    raw = faiss.IndexBinaryHash(16, 12)
    raw.add(pack_bits(db))   # without the conversion
    raw.nflip = 0
    _, raw_ids = raw.search(pack_bits(q), 3)
    assert sorted(raw_ids[0].tolist()) == [-1, 0, 1]  # bit 11 escaped the key


@pytest.mark.parametrize("nbits", [1, 6, 12, 24, 31, 48, 64, 65, 100, 128, 256])
@pytest.mark.parametrize("k", [1, 10, 500, 2000])
def test_faiss_flat_returns_our_ranking_ids_and_distances(nbits, k, faiss):
    """Ties included: same ids in the same order, since faiss's heap orders (distance, id)."""
    q_bits, _, db_bits, _ = tied_problem(nbits, 25, 2000, seed=nbits)
    index = RT.build_index(pack_bits(db_bits), nbits, "flat")
    f_dist, f_ids = RT.search(index, pack_bits(q_bits), nbits, k)
    o_dist, o_ids = RT.exact_search(pack_bits(q_bits), pack_bits(db_bits), nbits, k)
    np.testing.assert_array_equal(f_dist, o_dist)
    np.testing.assert_array_equal(f_ids, o_ids)
    # and faiss's counting-sort path (use_heap = False) gives the same
    index.use_heap = False
    c_dist, c_ids = RT.search(index, pack_bits(q_bits), nbits, k)
    np.testing.assert_array_equal(c_ids, o_ids)
    np.testing.assert_array_equal(c_dist, o_dist)


def assert_same_up_to_boundary_ties(f_dist, f_ids, o_dist, o_ids):
    """Same distance lists; ids equal as sets at every distance below the k-th one; at the
    k-th distance faiss's ids are some of the tied items."""
    np.testing.assert_array_equal(f_dist, o_dist)
    for fd, fi, od, oi in zip(f_dist, f_ids, o_dist, o_ids):
        last = od[-1]
        assert set(fi[fd < last]) == set(oi[od < last])
        assert (np.diff(fd) >= 0).all()


@pytest.mark.parametrize("kind,nbits,hash_bits,nhash", [
    ("hash", 12, 12, None), ("hash", 24, 10, None), ("hash", 48, 16, None),
    ("multihash", 24, 8, 3), ("multihash", 48, 16, 3), ("multihash", 64, 12, 5),
])
def test_faiss_hash_indexes_match_our_ranking(kind, nbits, hash_bits, nhash, faiss):
    q_bits, _, db_bits, _ = tied_problem(nbits, 20, 1500, seed=nbits + hash_bits)
    index = RT.build_index(pack_bits(db_bits), nbits, kind, hash_bits, nhash)
    full = (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    for k in (1, 10, 100):
        o_dist, o_ids = RT.exact_search(pack_bits(q_bits), pack_bits(db_bits), nbits, k)
        # nflip = hash_bits: every bucket is probed, the search is exhaustive
        f_dist, f_ids = RT.search(index, pack_bits(q_bits), nbits, k, nflip=hash_bits)
        assert_same_up_to_boundary_ties(f_dist, f_ids, o_dist, o_ids)
    # with few flips: every item within the guaranteed radius is found, with its distance
    for nflip in (0, 1, 2):
        radius = nflip if kind == "hash" else index.nhash * (nflip + 1) - 1
        f_dist, f_ids = RT.search(index, pack_bits(q_bits), nbits, len(db_bits), nflip=nflip)
        for i in range(len(q_bits)):
            found = f_ids[i] >= 0
            np.testing.assert_array_equal(f_dist[i][found], full[i, f_ids[i][found]])
            assert set(np.flatnonzero(full[i] <= radius)) <= set(f_ids[i][found].tolist())


def test_faiss_range_search_radius_is_strict(faiss):
    """Documented finding: IndexBinaryFlat.range_search(x, r) returns distances < r (not
    <= r), so "within Hamming radius r" needs r + 1."""
    nbits = 16
    q_bits, _, db_bits, _ = tied_problem(nbits, 3, 400, seed=4)
    index = RT.build_index(pack_bits(db_bits), nbits, "flat")
    full = (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    lims, dist, ids = index.range_search(RT.to_faiss_codes(pack_bits(q_bits), nbits), 3)
    for i in range(3):
        assert set(ids[lims[i]:lims[i + 1]].tolist()) == set(np.flatnonzero(full[i] < 3))


def test_save_and_load_index_round_trip(tmp_path, faiss):
    nbits = 20
    q_bits, _, db_bits, db_labels = tied_problem(nbits, 5, 300, seed=6)
    for kind in RT.KINDS:
        index = RT.build_index(pack_bits(db_bits), nbits, kind, hash_bits=10)
        before = RT.search(index, pack_bits(q_bits), nbits, 7, nflip=1)
        RT.save_index(tmp_path / kind, index, nbits, pack_bits(db_bits), db_labels, kind=kind)
        loaded, meta, codes, labels = RT.load_index(tmp_path / kind)
        after = RT.search(loaded, pack_bits(q_bits), nbits, 7, nflip=1)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_array_equal(codes, pack_bits(db_bits))
        np.testing.assert_array_equal(labels, db_labels)
        assert meta["bits"] == nbits and meta["kind"] == kind and meta["ntotal"] == 300


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def write_blobs(folder, q_bits, q_labels, db_bits, db_labels, nbits, database_is_query):
    os.makedirs(folder / "query")
    sets = {"query": (q_bits, q_labels)}
    if database_is_query:
        os.symlink("query", folder / "database")
    else:
        os.makedirs(folder / "database")
        sets["database"] = (db_bits, db_labels)
    for name, (bits, labels) in sets.items():
        np.save(folder / name / "features.npy", bits.astype(np.float32))
        np.save(folder / name / "codes.npy", pack_bits(bits))
        np.save(folder / name / "labels.npy", labels)
    (folder / "meta.json").write_text(json.dumps(dict(bits=nbits,
                                                      database_is_query=database_is_query)))


@pytest.mark.parametrize("database_is_query", [False, True])
def test_cli_build_and_query(tmp_path, capsys, database_is_query, faiss):
    nbits = 12
    q_bits, q_labels, db_bits, db_labels = tied_problem(nbits, 8, 200, seed=12)
    if database_is_query:
        db_bits, db_labels = q_bits, q_labels
    blobs = tmp_path / "blobs"
    write_blobs(blobs, q_bits, q_labels, db_bits, db_labels, nbits, database_is_query)
    assert RT_CLI.main(["build", str(blobs), "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    k = 5
    answers = {}
    for engine in ([], ["--exact"]):
        assert RT_CLI.main(["query", str(tmp_path / "index"), "--blobs", str(blobs), "--rows", "0",
                        "3", "-k", str(k), "--json", *engine]) == 0
        answers[bool(engine)] = json.loads(capsys.readouterr().out)["results"]
    assert answers[False] == answers[True]
    dist, ids = RT.exact_search(pack_bits(q_bits[[0, 3]]), pack_bits(db_bits), nbits, k + 1)
    for res, row, d_row, i_row in zip(answers[False], (0, 3), dist, ids):
        keep = i_row != row if database_is_query else np.ones(k + 1, bool)
        assert [h["id"] for h in res["neighbours"]] == i_row[keep][:k].tolist()
        assert [h["distance"] for h in res["neighbours"]] == d_row[keep][:k].tolist()
        assert all(h["label"] == db_labels[h["id"]] for h in res["neighbours"])
        assert all(h["same_label"] == (h["label"] == q_labels[row]) for h in res["neighbours"])
    # a code given directly, and the text output
    code = "".join("1" if b else "0" for b in q_bits[3])
    assert RT_CLI.main(["query", str(tmp_path / "index"), "--code", code, "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert f"code {code}: 3 nearest by IndexBinaryFlat" in text
    hex_code = pack_bits(q_bits[3:4]).tobytes().hex()
    assert RT_CLI.main(["query", str(tmp_path / "index"), "--hex", hex_code, "-k", "3",
                    "--json"]) == 0
    by_hex = json.loads(capsys.readouterr().out)["results"][0]["neighbours"]
    assert [h["id"] for h in by_hex] == RT.exact_search(pack_bits(q_bits[3:4]),
                                                        pack_bits(db_bits), nbits, 3)[1][0].tolist()


@pytest.mark.parametrize("given", [11, 9])
def test_cli_refuses_codes_wider_than_the_bits_recorded(tmp_path, capsys, given, faiss):
    """12-bit codes whose meta.json (or index.json) says 11 or 9 bits: exit status 2 and an
    error naming the file and both widths, from build, from query and from the index."""
    q_bits, q_labels, db_bits, db_labels = tied_problem(12, 6, 40, seed=3)
    db_bits[7, 11] = q_bits[0, 11] = True
    blobs = tmp_path / "blobs"
    write_blobs(blobs, q_bits, q_labels, db_bits, db_labels, 12, False)
    assert RT_CLI.main(["build", str(blobs), "--out", str(tmp_path / "index")]) == 0
    (blobs / "meta.json").write_text(json.dumps(dict(bits=given, feature_dims=12)))
    capsys.readouterr()
    assert RT_CLI.main(["build", str(blobs), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert f"{blobs / 'query' / 'codes.npy'}: row 0 " in err
    assert f" bits beyond bit {given - 1} (pad bits for {given}-bit codes)" in err
    assert f"at least 12 bits wide, not the {given} bits of meta.json" in err
    assert not (tmp_path / "other").exists()
    info = json.loads((tmp_path / "index" / "index.json").read_text())
    (tmp_path / "index" / "index.json").write_text(json.dumps(dict(info, bits=given)))
    for engine in ([], ["--exact"]):
        assert RT_CLI.main(["query", str(tmp_path / "index"), "--code", "0" * given,
                            *engine]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'index' / 'codes.npy'}: row " in err
        assert f" bits beyond bit {given - 1} (pad bits for {given}-bit codes)" in err
        assert f"at least 12 bits wide, not the {given} bits of index.json" in err


def test_cli_errors(tmp_path, capsys):
    assert RT_CLI.main(["query", str(tmp_path / "missing"), "--code", "0101"]) == 2
    assert "no index.json" in capsys.readouterr().err
    with pytest.raises(RT.RetrievalError):
        RT.parse_code("0102", 4)
    with pytest.raises(RT.RetrievalError):
        RT.parse_code("abc", 12, hex_digits=True)
    np.testing.assert_array_equal(RT.parse_code("0xfff0", 12, hex_digits=True),
                                  pack_bits(np.ones((1, 12), bool)))
    with pytest.raises(RT.RetrievalError, match="hex code fff3: row 0 sets bits beyond bit 11"
                                                ".*at least 16 bits wide, not the 12 bits"):
        RT.parse_code("0xfff3", 12, hex_digits=True)
