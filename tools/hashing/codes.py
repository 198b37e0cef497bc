"""Binary hash codes: binarization, on-disk packing, Hamming distances, code health.

Three forms of the same codes are used:

* ``bits``   -- ``bool [n, nbits]``, one column per bit (what `binarize` returns);
* ``packed`` -- ``uint8 [n, ceil(nbits / 8)]``, ``np.packbits(axis=1, bitorder='big')``:
  bit 0 is the most significant bit of byte 0. This is the on-disk format;
* ``words``  -- ``uint64 [n, ceil(nbits / 64)]``, the packed bytes zero-padded to whole
  64-bit words, for XOR + popcount. Every pad bit is zero in every code, so pad bits
  never add Hamming distance, whatever the width.

Packed codes with a pad bit set are refused (`check_pad_bits`, called by `to_words`,
`unpack_bits` and every reader of packed codes): such codes are wider than the nbits given
(12-bit codes evaluated as 11 or 9 bits), and clearing the extra bits would silently change
the distances and the metrics. The error names both widths: nbits, and the least width
holding every set bit.

Hamming distances run in the C kernel of native.c when a C compiler is available
(built on first use, see native.py), else in numpy (XOR + a popcount on blocks small enough
to stay in cache: np.bitwise_count on numpy >= 2.0, a byte lookup table on numpy 1.26, which
tools/requirements.txt allows and which has no bitwise_count); all give the same distances.

`code_health` and `collapse_warnings` watch for the usual failure of hashing losses:
codes collapsing onto a few values, or bits that never change.
"""
import numpy as np

from . import native

__all__ = [
    "binarize",
    "pack_bits",
    "unpack_bits",
    "to_words",
    "hamming",
    "hamming_chunks",
    "code_health",
    "collapse_warnings",
    "check_packed",
    "check_pad_bits",
    "padding_error",
    "check_words",
    "popcount",
]

# numpy Hamming path: about this many (query, item) pairs per block of uint64 temporaries
_HAMMING_BLOCK = 1 << 15
# collapse_warnings thresholds
TOP_CODE_SHARE_LIMIT = 0.25
MEAN_ENTROPY_LIMIT = 0.1


def binarize(features, threshold=0.5):
    """Bits of real-valued features: bit = feature > threshold (strictly), bool [n, nbits]."""
    return np.asarray(features) > threshold


def pack_bits(bits):
    """Pack bool [n, nbits] into the on-disk form uint8 [n, ceil(nbits / 8)] (big bit order)."""
    bits = _as_2d(bits, "bits")
    if bits.dtype != np.bool_:
        raise TypeError(f"bits must be bool, got {bits.dtype}")
    return np.packbits(bits, axis=1, bitorder="big")


def unpack_bits(packed, nbits):
    """Inverse of `pack_bits`: uint8 [n, ceil(nbits / 8)] -> bool [n, nbits]; ValueError when
    a pad bit is set (`check_pad_bits`)."""
    packed = check_pad_bits(check_packed(packed, nbits), nbits)
    return np.unpackbits(packed, axis=1, count=nbits, bitorder="big").astype(bool)


def to_words(codes, nbits):
    """uint64 [n, ceil(nbits / 64)] words of bool bits [n, nbits] or packed uint8 codes.

    The dtype tells the two inputs apart: bool means bits, uint8 means packed (any other
    dtype is refused, so a 0/1 integer array is never mistaken for packed bytes). Packed
    input with a pad bit set is a ValueError naming both widths (`check_pad_bits`): the
    codes are wider than nbits.
    """
    codes = _as_2d(codes, "codes")
    if codes.dtype == np.bool_:
        if codes.shape[1] != nbits:
            raise ValueError(f"bits have {codes.shape[1]} columns, expected nbits={nbits}")
        packed = pack_bits(codes)
    elif codes.dtype == np.uint8:
        packed = check_pad_bits(check_packed(codes, nbits), nbits)
    else:
        raise TypeError(f"codes must be bool bits or uint8 packed bytes, got {codes.dtype}")
    nwords = -(-nbits // 64)
    padded = np.zeros((packed.shape[0], nwords * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def hamming(q_words, db_words):
    """Hamming distances [nq, ndb] between word codes (XOR + popcount).

    The dtype is the smallest unsigned integer holding 64 * nwords (uint8 up to 192
    bits, then uint16), which keeps a stable argsort of a distance row a radix sort.
    """
    q_words, db_words = check_words(q_words, db_words)
    out = np.empty((q_words.shape[0], db_words.shape[0]),
                   dtype=_distance_dtype(q_words.shape[1]))
    if out.size and native.lib() is not None:
        return native.hamming(q_words, db_words, out)
    return _hamming_numpy(q_words, db_words, out)


def _hamming_numpy(q_words, db_words, out):
    """`hamming` in numpy, on blocks of about _HAMMING_BLOCK pairs, so the uint64 XOR
    temporary stays in cache instead of spanning the whole [nq, ndb] matrix."""
    nq, ndb = out.shape
    nwords = q_words.shape[1]
    db_t = np.ascontiguousarray(db_words.T)  # [nwords, ndb]: contiguous rows per word
    cols = max(1, min(ndb, _HAMMING_BLOCK))
    rows = max(1, _HAMMING_BLOCK // cols)
    xor = np.empty((rows, cols), dtype=np.uint64)
    count = np.empty((rows, cols), dtype=np.uint8)
    for r0 in range(0, nq, rows):
        r1 = min(r0 + rows, nq)
        for c0 in range(0, ndb, cols):
            c1 = min(c0 + cols, ndb)
            x, c, o = xor[: r1 - r0, : c1 - c0], count[: r1 - r0, : c1 - c0], out[r0:r1, c0:c1]
            for w in range(nwords):
                np.bitwise_xor(q_words[r0:r1, w, None], db_t[w, None, c0:c1], out=x)
                if w == 0:
                    popcount(x, out=o)
                else:
                    popcount(x, out=c)
                    o += c
    return out


# popcount of every byte value, for numpy without np.bitwise_count (< 2.0)
_BYTE_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


def popcount(words, out):
    """Set bits of each uint64 of `words` into `out` (an unsigned integer array of the same
    shape): np.bitwise_count where numpy has it (>= 2.0), else the sum of a byte lookup table
    over the 8 bytes of each word (numpy 1.26). Looked up at each call, so a test can take
    bitwise_count away."""
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return count(words, out=out)
    words = np.ascontiguousarray(words, dtype=np.uint64)
    per_byte = _BYTE_POPCOUNT[words.view(np.uint8).reshape(words.shape + (8,))]
    return np.sum(per_byte, axis=-1, dtype=out.dtype, out=out)


def hamming_chunks(q_words, db_words, chunk_rows):
    """Yield ``(row_slice, distances)`` over blocks of at most `chunk_rows` queries.

    Memory is bounded by ``chunk_rows * ndb`` distances whatever the number of queries.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    q_words, db_words = check_words(q_words, db_words)
    for start in range(0, q_words.shape[0], chunk_rows):
        rows = slice(start, min(start + chunk_rows, q_words.shape[0]))
        yield rows, hamming(q_words[rows], db_words)


def code_health(bits):
    """Statistics of a set of codes, bool [n, nbits] (n, nbits >= 1).

    Returns a dict:
      n_items, n_bits;
      bit_balance   -- float [nbits], share of ones per bit (0.5 is ideal);
      bit_entropy   -- float [nbits], binary entropy of each bit in bits (1.0 is ideal,
                       0 for a constant bit);
      mean_entropy  -- mean of bit_entropy;
      distinct_codes -- number of distinct codes;
      top1_share    -- share of items holding the most common code;
      top10_share   -- share of items holding one of the 10 most common codes.
    """
    bits = _as_2d(bits, "bits")
    if bits.dtype != np.bool_:
        raise TypeError(f"bits must be bool, got {bits.dtype}")
    n, nbits = bits.shape
    if n == 0 or nbits == 0:
        raise ValueError(f"code_health needs n >= 1 codes of nbits >= 1, got {bits.shape}")
    p = bits.mean(axis=0)
    entropy = np.zeros(nbits)
    mixed = (p > 0) & (p < 1)
    pm = p[mixed]
    entropy[mixed] = -(pm * np.log2(pm) + (1 - pm) * np.log2(1 - pm))
    _, counts = np.unique(pack_bits(bits), axis=0, return_counts=True)
    counts = np.sort(counts)[::-1]
    return {
        "n_items": n,
        "n_bits": nbits,
        "bit_balance": p,
        "bit_entropy": entropy,
        "mean_entropy": float(entropy.mean()),
        "distinct_codes": int(counts.size),
        "top1_share": float(counts[0] / n),
        "top10_share": float(counts[:10].sum() / n),
    }


def collapse_warnings(health, num_classes=None):
    """Human-readable warnings about collapsed codes from a `code_health` dict.

    Warns when a single code holds >= 25% of the items, when there are fewer distinct
    codes than `num_classes` (if given), when the mean per-bit entropy is below 0.1 bit,
    and when any bit is constant (each such bit is named). Healthy codes give [].
    """
    warnings = []
    n = health["n_items"]
    if health["top1_share"] >= TOP_CODE_SHARE_LIMIT:
        warnings.append(
            f"CODE COLLAPSE: the most common code holds {health['top1_share']:.1%} of the "
            f"{n} items (limit {TOP_CODE_SHARE_LIMIT:.0%})"
        )
    if num_classes is not None and health["distinct_codes"] < num_classes:
        warnings.append(
            f"CODE COLLAPSE: only {health['distinct_codes']} distinct codes for "
            f"{num_classes} classes"
        )
    if health["mean_entropy"] < MEAN_ENTROPY_LIMIT:
        warnings.append(
            f"CODE COLLAPSE: mean per-bit entropy {health['mean_entropy']:.4f} bit "
            f"(limit {MEAN_ENTROPY_LIMIT} bit)"
        )
    balance = np.asarray(health["bit_balance"])
    zeros = np.flatnonzero(balance == 0)
    ones = np.flatnonzero(balance == 1)
    if zeros.size or ones.size:
        parts = []
        if zeros.size:
            parts.append(f"always 0: bits {zeros.tolist()}")
        if ones.size:
            parts.append(f"always 1: bits {ones.tolist()}")
        warnings.append(
            f"CONSTANT BITS: {zeros.size + ones.size} of {health['n_bits']} bits never "
            f"change ({'; '.join(parts)})"
        )
    return warnings


def _as_2d(array, name):
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, ...], got shape {array.shape}")
    return array


def check_packed(packed, nbits):
    packed = _as_2d(packed, "packed")
    if packed.dtype != np.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    if nbits < 1:
        raise ValueError(f"nbits must be >= 1, got {nbits}")
    if packed.shape[1] != -(-nbits // 8):
        raise ValueError(
            f"packed codes have {packed.shape[1]} bytes, expected ceil({nbits} / 8)"
        )
    return packed


_PAD_TODO = "evaluate or search them with the width they were packed with"


def padding_error(packed, nbits, source="packed codes", given="given", todo=_PAD_TODO):
    """None when no pad bit of packed codes uint8 [n, ceil(nbits / 8)] is set, else the message
    naming `source` (e.g. the file), the first offending row, both widths -- nbits (`given`
    says where it comes from) and the least width holding every set bit of the codes (they
    are at least that wide) -- and `todo`."""
    if nbits % 8 == 0 or len(packed) == 0:
        return None
    pad = np.asarray(packed)[:, -1] & np.uint8((1 << (8 - nbits % 8)) - 1)
    dirty = np.flatnonzero(pad)
    if dirty.size == 0:
        return None
    low = int(np.bitwise_or.reduce(pad[dirty]))
    lowest = (low & -low).bit_length() - 1  # the lowest set byte bit = the highest code bit
    width = 8 * (packed.shape[1] - 1) + 8 - lowest
    rows = f"row {int(dirty[0])}" + (f" and {dirty.size - 1} more rows set" if dirty.size > 1
                                      else " sets")
    return (f"{source}: {rows} bits beyond bit {nbits - 1} (pad bits for {nbits}-bit codes): "
            f"the codes are at least {width} bits wide, not the {nbits} bits {given}; {todo}")


def check_pad_bits(packed, nbits, source="packed codes"):
    """packed, unchanged, when no pad bit is set; else ValueError (`padding_error`)."""
    message = padding_error(packed, nbits, source)
    if message:
        raise ValueError(message)
    return packed


def check_words(q_words, db_words):
    q_words = _as_2d(q_words, "q_words")
    db_words = _as_2d(db_words, "db_words")
    if q_words.dtype != np.uint64 or db_words.dtype != np.uint64:
        raise TypeError("word codes must be uint64 (see to_words)")
    if q_words.shape[1] != db_words.shape[1]:
        raise ValueError(
            f"query and database codes have {q_words.shape[1]} and "
            f"{db_words.shape[1]} words"
        )
    return q_words, db_words


def _distance_dtype(nwords):
    max_distance = 64 * nwords
    if max_distance <= np.iinfo(np.uint8).max:
        return np.uint8
    if max_distance <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.uint32
