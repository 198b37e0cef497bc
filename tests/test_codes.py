"""Tests of tools/codes.py against plain references (explicit loops over bits)."""
from collections import Counter
import math

import numpy as np
import pytest

from tools.hashing import native
from tools.hashing.codes import (binarize, code_health, collapse_warnings, hamming, hamming_chunks,
                         check_pad_bits, pack_bits, padding_error, popcount, to_words,
                                 unpack_bits)

WIDTHS = list(range(1, 71)) + [72, 96, 100, 127, 128, 129, 191, 192, 193, 200, 255, 256, 300]


def random_bits(rng, n, nbits, p=0.5):
    return rng.random((n, nbits)) < p


def reference_packed(bits):
    """Bytes written out by hand: bit b of a code is bit 7 - b % 8 of byte b // 8."""
    n, nbits = bits.shape
    out = np.zeros((n, (nbits + 7) // 8), dtype=np.uint8)
    for i in range(n):
        for b in range(nbits):
            if bits[i, b]:
                out[i, b // 8] |= 1 << (7 - b % 8)
    return out


def reference_hamming(q_bits, db_bits):
    return np.array([[sum(int(x != y) for x, y in zip(q, d)) for d in db_bits]
                     for q in q_bits])


def test_binarize_is_strict():
    features = np.array([[0.2, 0.5, 0.50001, 0.9], [-1.0, 0.49999, 1.0, 0.5]])
    expected = np.array([[False, False, True, True], [False, False, True, False]])
    np.testing.assert_array_equal(binarize(features), expected)
    np.testing.assert_array_equal(binarize(features, threshold=0.0),
                                  np.array([[True, True, True, True],
                                            [False, True, True, True]]))
    assert binarize(features).dtype == np.bool_


@pytest.mark.parametrize("nbits", WIDTHS)
def test_pack_bits_matches_hand_packing_and_round_trips(nbits):
    rng = np.random.default_rng(nbits)
    bits = random_bits(rng, 5, nbits)
    packed = pack_bits(bits)
    assert packed.dtype == np.uint8 and packed.shape == (5, math.ceil(nbits / 8))
    np.testing.assert_array_equal(packed, reference_packed(bits))
    np.testing.assert_array_equal(unpack_bits(packed, nbits), bits)


def test_pack_bits_refuses_non_bool():
    with pytest.raises(TypeError):
        pack_bits(np.ones((2, 8), dtype=np.uint8))
    with pytest.raises(ValueError):
        unpack_bits(np.zeros((2, 2), dtype=np.uint8), 17)


@pytest.mark.parametrize("nbits", WIDTHS)
def test_to_words_from_bits_and_packed_agree_and_pad_is_zero(nbits):
    rng = np.random.default_rng(1000 + nbits)
    bits = random_bits(rng, 6, nbits)
    words = to_words(bits, nbits)
    assert words.dtype == np.uint64 and words.shape == (6, math.ceil(nbits / 64))
    np.testing.assert_array_equal(words, to_words(pack_bits(bits), nbits))
    # every set bit of the words is a code bit: popcount of the words = number of ones
    np.testing.assert_array_equal(popcount(words, np.empty(words.shape, np.uint8)).sum(axis=1),
                                  bits.sum(axis=1))


@pytest.mark.parametrize("nbits", [1, 3, 7, 9, 12, 63, 65, 100, 255])
def test_packed_codes_with_pad_bits_set_are_refused(nbits):
    """A pad bit set means the codes are wider than nbits: an error naming both widths, never
    cleared silently (that would change the distances)."""
    rng = np.random.default_rng(nbits)
    bits = random_bits(rng, 4, nbits)
    packed = pack_bits(bits)
    np.testing.assert_array_equal(unpack_bits(packed, nbits), bits)  # clean codes pass
    if nbits % 8 == 0:
        return
    dirty = packed.copy()
    dirty[2, -1] |= np.uint8(1 << (8 - nbits % 8 - 1))  # bit nbits: codes of nbits + 1 bits
    message = f"row 2 sets bits beyond bit {nbits - 1}.*at least {nbits + 1} bits wide, " \
              f"not the {nbits} bits given"
    for call in (lambda: to_words(dirty, nbits), lambda: unpack_bits(dirty, nbits),
                 lambda: check_pad_bits(dirty, nbits)):
        with pytest.raises(ValueError, match=message):
            call()
    dirty[0, -1] |= np.uint8(1)  # the last bit of the last byte: the widest
    assert padding_error(dirty, nbits, "x.npy").startswith("x.npy: row 0 and 1 more rows set")
    assert f"at least {8 * len(dirty[0])} bits wide" in padding_error(dirty, nbits)


@pytest.mark.parametrize("packed_as, given", [(12, 11), (12, 9), (20, 17)])
def test_codes_evaluated_narrower_than_packed_name_both_widths(packed_as, given):
    rng = np.random.default_rng(packed_as + given)
    bits = random_bits(rng, 30, packed_as)
    bits[5, packed_as - 1] = True  # the widest bit is set somewhere
    packed = pack_bits(bits)
    with pytest.raises(ValueError, match=f"at least {packed_as} bits wide, not the {given} bits"):
        to_words(packed, given)
    assert padding_error(packed, packed_as) is None


def test_to_words_refuses_ambiguous_input():
    with pytest.raises(TypeError):
        to_words(np.ones((2, 8), dtype=np.int64), 8)
    with pytest.raises(ValueError):
        to_words(np.ones((2, 8), dtype=bool), 9)
    with pytest.raises(ValueError):
        to_words(np.zeros((2, 1), dtype=np.uint8), 9)


@pytest.mark.parametrize("nbits", WIDTHS)
def test_hamming_matches_bitwise_reference(nbits):
    rng = np.random.default_rng(2000 + nbits)
    q_bits = random_bits(rng, 7, nbits)
    db_bits = np.concatenate([random_bits(rng, 9, nbits), q_bits[:2], ~q_bits[2:3]])
    dist = hamming(to_words(q_bits, nbits), to_words(db_bits, nbits))
    np.testing.assert_array_equal(dist, reference_hamming(q_bits, db_bits))
    assert dist[0, 9] == 0 and dist[2, 11] == nbits  # a copy and a complement
    assert np.issubdtype(dist.dtype, np.unsignedinteger)


@pytest.mark.parametrize("bitwise_count", [True, False])
@pytest.mark.parametrize("nbits", [1, 8, 63, 64, 65, 128, 129, 200])
def test_numpy_hamming_with_and_without_bitwise_count(nbits, bitwise_count, monkeypatch):
    """The numpy fallback (C kernels off) on numpy >= 2.0 (np.bitwise_count) and as on numpy
    1.26, which tools/requirements.txt allows and which has no bitwise_count (taken away here:
    the byte lookup table runs)."""
    if not bitwise_count:
        monkeypatch.delattr(np, "bitwise_count", raising=False)
    elif not hasattr(np, "bitwise_count"):
        pytest.skip("this numpy has no bitwise_count")
    rng = np.random.default_rng(3000 + nbits)
    q_bits, db_bits = random_bits(rng, 5, nbits), random_bits(rng, 11, nbits)
    with native.disabled():
        dist = hamming(to_words(q_bits, nbits), to_words(db_bits, nbits))
    np.testing.assert_array_equal(dist, reference_hamming(q_bits, db_bits))
    words = rng.integers(0, 2**64, (3, 7), dtype=np.uint64, endpoint=False)
    words[0, :3] = [0, 2**64 - 1, 1 << 63]
    out = np.empty(words.shape, dtype=np.uint8)
    popcount(words[:, 1:6], out=out[:, 1:6])  # non-contiguous input and output
    np.testing.assert_array_equal(out[:, 1:6], [[bin(int(w)).count("1") for w in row]
                                                 for row in words[:, 1:6]])


@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 13, 100])
def test_hamming_chunks_equal_unchunked(chunk_rows):
    rng = np.random.default_rng(chunk_rows)
    nbits = 77
    q = to_words(random_bits(rng, 13, nbits), nbits)
    db = to_words(random_bits(rng, 20, nbits), nbits)
    whole = hamming(q, db)
    covered = []
    for rows, dist in hamming_chunks(q, db, chunk_rows):
        assert dist.shape[0] <= chunk_rows
        np.testing.assert_array_equal(dist, whole[rows])
        covered.extend(range(rows.start, rows.stop))
    assert covered == list(range(13))
    with pytest.raises(ValueError):
        next(hamming_chunks(q, db, 0))


def test_code_health_matches_counts():
    bits = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0]],
                    dtype=bool)
    health = code_health(bits)
    np.testing.assert_allclose(health["bit_balance"], [1.0, 2 / 6, 4 / 6])
    h = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    np.testing.assert_allclose(health["bit_entropy"], [0.0, h, h], rtol=1e-12)
    assert health["mean_entropy"] == pytest.approx(2 * h / 3, rel=1e-12)
    counts = Counter(map(tuple, bits.tolist()))
    assert health["distinct_codes"] == len(counts) == 4
    assert health["top1_share"] == pytest.approx(3 / 6)
    assert health["top10_share"] == pytest.approx(1.0)
    assert (health["n_items"], health["n_bits"]) == (6, 3)


def test_code_health_top10_share_on_many_codes():
    rng = np.random.default_rng(5)
    bits = random_bits(rng, 500, 6)
    health = code_health(bits)
    counts = sorted(Counter(map(tuple, bits.tolist())).values(), reverse=True)
    assert health["distinct_codes"] == len(counts)
    assert health["top1_share"] == pytest.approx(counts[0] / 500)
    assert health["top10_share"] == pytest.approx(sum(counts[:10]) / 500)


def test_collapse_warnings_on_collapsed_codes():
    rng = np.random.default_rng(0)
    bits = np.zeros((200, 16), dtype=bool)
    bits[:, 3] = True                       # constant one
    bits[:10, 7] = rng.random(10) < 0.5     # almost constant
    warnings = collapse_warnings(code_health(bits), num_classes=10)
    text = "\n".join(warnings)
    assert len(warnings) == 4, text
    assert "most common code" in text
    assert "distinct codes for 10 classes" in text
    assert "entropy" in text
    constant = [w for w in warnings if w.startswith("CONSTANT BITS")][0]
    assert "always 1: bits [3]" in constant
    assert "always 0: bits [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15]" in constant


def test_collapse_warnings_name_a_single_constant_bit():
    rng = np.random.default_rng(1)
    bits = random_bits(rng, 1000, 12)
    bits[:, 5] = False
    warnings = collapse_warnings(code_health(bits), num_classes=10)
    assert len(warnings) == 1 and "always 0: bits [5]" in warnings[0]


def test_collapse_warnings_on_dominant_code_only():
    rng = np.random.default_rng(2)
    bits = random_bits(rng, 1000, 24)
    bits[:250] = bits[0]  # one code holds exactly 25% of the items
    warnings = collapse_warnings(code_health(bits))
    assert len(warnings) == 1 and "25.0%" in warnings[0]


def test_collapse_warnings_silent_on_balanced_random_codes():
    rng = np.random.default_rng(3)
    for nbits in (12, 24, 48, 64):
        assert collapse_warnings(code_health(random_bits(rng, 2000, nbits)),
                                 num_classes=10) == []
