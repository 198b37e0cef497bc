"""Binary codes in faiss indexes, and the exact Hamming top-k: the library under
`python -m tools.retrieval` (build, query).

An index folder (`save_index`, `load_index`) holds ``index.faiss``
(faiss.write_index_binary), ``index.json`` (what it is), ``labels.npy`` and ``codes.npy``
(the indexed set's codes, packed as on disk), written atomically. `exact_search` is this
project's exact ranking (codes.py Hamming distances and np.argpartition): the same answer
as IndexBinaryFlat, without faiss.

Index kinds:
  flat       IndexBinaryFlat: exhaustive, exact;
  hash       IndexBinaryHash(d, b): one hash table on the first b bits; a search probes
             the buckets within ``nflip`` flipped bits of the query's key, so it finds every
             item with at most nflip differing bits among those b (all items within Hamming
             radius nflip), approximate beyond;
  multihash  IndexBinaryMultiHash(d, nhash, b): nhash tables on disjoint b-bit substrings;
             by the pigeonhole principle it finds every item within radius
             nhash * (nflip + 1) - 1.
Distances of found items are always exact (faiss recomputes them on the full codes).

Bit order. The on-disk codes are ``numpy.packbits(bitorder='big')``: bit j of a code is bit
7 - j % 8 (most significant first) of byte j // 8. faiss reads bit j of a binary code as
``(code[j // 8] >> (j % 8)) & 1`` (least significant first: ``fvec2bitvec``,
``BitstringReader``, ``faiss.unpack_bitstrings``, and the first b bits that
IndexBinaryHash/MultiHash hash). `to_faiss_codes` therefore reverses the bits of every
byte, so that faiss's bit j is our bit j, and refuses codes with a pad bit set (faiss's
dimension is 8 * ceil(nbits / 8); the pad bits are zero in every code and add no distance; a
set one means the codes are wider than nbits, `tools.hashing.codes.check_pad_bits`). Hamming
distances themselves would be the same without the reversal (they do not depend on bit
order), but the hash indexes would then key on other bits, e.g. on zero pad bits for
nbits = 12, and codes would not match faiss's own binarization.

Ties. IndexBinaryFlat returns the k nearest in (distance, id) order: its heap compares
(distance, id) pairs and the scan meets ids in increasing order, so among equal distances
the lower ids come first and are kept at the k-th place: exactly this project's index order
(`exact_search`, ``argsort(kind='stable')``). The hash indexes sort their answer the same
way, but which of the items tied at the k-th distance make it into the answer depends on the
order in which buckets are probed, not on the id.
"""
import json
import os
import time

import numpy as np

from data_prep.outputs import atomic_dir

from . import codes as C

FORMAT_VERSION = 1
KINDS = ("flat", "hash", "multihash")
INDEX_FILE, META_FILE = "index.faiss", "index.json"
# exact_search: about this many (query, item) distances per chunk of queries
CHUNK_ELEMENTS = 1 << 22
# per byte: the byte with its 8 bits in reverse order (big <-> little bit order)
_REVERSE = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=np.uint8)


class RetrievalError(ValueError):
    pass


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise RetrievalError("faiss is not installed (pip install faiss-cpu), or use --exact "
                             "for the exact numpy ranking") from e
    return faiss


# ---------------------------------------------------------------------------------------
# Bit order
# ---------------------------------------------------------------------------------------


def to_faiss_codes(packed, nbits):
    """On-disk codes (uint8 [n, ceil(nbits/8)], big bit order) -> faiss's binary codes of
    the same shape: bits reversed within each byte. A set pad bit is a ValueError
    (`tools.hashing.codes.check_pad_bits`: the codes are wider than nbits)."""
    packed = C.check_pad_bits(C.check_packed(np.asarray(packed), nbits), nbits)
    return np.ascontiguousarray(_REVERSE[packed])


def from_faiss_codes(codes, nbits):
    """Inverse of `to_faiss_codes` (pad bits cleared)."""
    codes = C.check_packed(np.asarray(codes), nbits)
    out = _REVERSE[codes]
    if nbits % 8:
        out[:, -1] &= np.uint8((0xFF << (8 - nbits % 8)) & 0xFF)
    return out


# ---------------------------------------------------------------------------------------
# Exact ranking (this project's order: distance, then database index)
# ---------------------------------------------------------------------------------------


def exact_search(q_codes, db_codes, nbits, k, exclude_self=False, chunk=None):
    """The k nearest database items of each query, ``(distances int32 [nq, k], ids int64
    [nq, k])``, ranked by (Hamming distance, database index), i.e. ties broken by index.

    Codes are bool bits or packed uint8 (`tools.hashing.codes.to_words`). With exclude_self the
    queries are the database and query i never returns item i. When fewer than k items
    remain, the row is padded with id -1 and distance INT32_MAX (as faiss does). Top k by
    partial selection (np.argpartition) of the unique keys distance * ndb + index, then a
    sort of those k: O(ndb + k log k) per query.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_words, db_words = C.to_words(q_codes, nbits), C.to_words(db_codes, nbits)
    nq, ndb = len(q_words), len(db_words)
    if exclude_self and nq != ndb:
        raise ValueError("exclude_self needs the query set to be the database")
    n_items = ndb - bool(exclude_self)
    take = min(k, n_items)
    dist_out = np.full((nq, k), np.iinfo(np.int32).max, dtype=np.int32)
    ids_out = np.full((nq, k), -1, dtype=np.int64)
    step = chunk or max(1, CHUNK_ELEMENTS // max(ndb, 1))
    index = np.arange(ndb, dtype=np.int64)
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        dist = C.hamming(q_words[start:stop], db_words)
        keys = dist.astype(np.int64) * ndb + index
        if exclude_self:
            rows = np.arange(stop - start)
            keys[rows, rows + start] = np.iinfo(np.int64).max  # ranked last, never taken
        if take == 0:
            continue
        if take < ndb:
            part = np.argpartition(keys, take - 1, axis=1)[:, :take]
        else:
            part = np.broadcast_to(index, keys.shape)
        top = np.take_along_axis(keys, part, axis=1)
        top.sort(axis=1)
        ids_out[start:stop, :take] = top % ndb
        dist_out[start:stop, :take] = top // ndb
    return dist_out, ids_out


# ---------------------------------------------------------------------------------------
# faiss indexes
# ---------------------------------------------------------------------------------------


def default_hash_bits(nbits, ndb):
    """Key length of a hash table: about log2(ndb) bits (one item per bucket on average),
    at least 8, at most nbits and 64."""
    return int(min(nbits, 64, max(8, int(np.ceil(np.log2(max(ndb, 2)))))))


def build_index(db_codes, nbits, kind="flat", hash_bits=None, nhash=None):
    """A faiss binary index of packed codes (big bit order, as on disk), converted with
    `to_faiss_codes`. kind: "flat", "hash" (hash_bits key bits) or "multihash" (nhash
    tables of hash_bits bits; default nhash = nbits // hash_bits)."""
    faiss = _faiss()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    codes = to_faiss_codes(db_codes, nbits)
    d = 8 * codes.shape[1]
    if kind == "flat":
        index = faiss.IndexBinaryFlat(d)
    else:
        b = hash_bits or default_hash_bits(nbits, len(codes))
        if kind == "hash":
            if not 1 <= b <= min(nbits, 64):
                raise ValueError(f"hash_bits must be in 1..{min(nbits, 64)}, got {b}")
            index = faiss.IndexBinaryHash(d, b)
        else:
            nhash = nhash or max(1, nbits // b)
            if b < 1 or b > 64 or nhash < 1 or nhash * b > nbits:
                raise ValueError(f"multihash needs nhash * hash_bits <= nbits = {nbits} and "
                                 f"hash_bits <= 64, got {nhash} x {b}")
            index = faiss.IndexBinaryMultiHash(d, nhash, b)
    index.add(codes)
    return index


def search(index, q_codes, nbits, k, nflip=None):
    """faiss search with packed codes (big bit order): ``(distances int32 [nq, k], ids
    int64 [nq, k])``, id -1 where fewer than k items were found. nflip: bits flipped when
    probing the buckets of a hash index (ignored by a flat index)."""
    faiss = _faiss()
    index = faiss.downcast_IndexBinary(index)
    if nflip is not None and hasattr(index, "nflip"):
        if not 0 <= int(nflip) <= index.b:  # faiss never returns for nflip > b (or < 0)
            raise RetrievalError(f"--nflip {nflip}: a hash index of {index.b}-bit keys flips 0 to "
                                 f"{index.b} bits")
        index.nflip = int(nflip)
    codes = to_faiss_codes(np.asarray(q_codes), nbits)
    if codes.shape[1] * 8 != index.d:
        raise RetrievalError(f"queries have {nbits} bits, the index {index.d} (rounded to bytes)")
    distances, ids = index.search(codes, int(k))
    return distances.astype(np.int32), ids.astype(np.int64)


def save_index(folder, index, nbits, db_codes, db_labels, codebooks=None, **meta):
    """Write index.faiss, index.json, labels.npy and codes.npy to `folder` atomically. With
    index None and `codebooks` (DQN's product quantizer, kind "adc"), the folder holds the PQ
    codes and codebooks.npy instead of a faiss index (searched by ADC, tools/hashing/pq.py)."""
    with atomic_dir(folder) as tmp:
        os.makedirs(tmp)
        np.save(os.path.join(tmp, "labels.npy"), np.asarray(db_labels))
        np.save(os.path.join(tmp, "codes.npy"), np.asarray(db_codes))
        info = dict(format=FORMAT_VERSION, bits=int(nbits), ntotal=len(db_labels),
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta)
        if index is None:
            np.save(os.path.join(tmp, "codebooks.npy"), np.asarray(codebooks, np.float32))
            info.update(kind="adc", faiss_class=None)
        else:
            faiss = _faiss()
            faiss.write_index_binary(index, os.path.join(tmp, INDEX_FILE))
            downcast = faiss.downcast_IndexBinary(index)
            info.update(faiss_class=type(downcast).__name__, faiss_version=faiss.__version__,
                        faiss_bit_order="bit j = (code[j // 8] >> (j % 8)) & 1 (tools.hashing."
                                        "binary_index.to_faiss_codes of the big-bit-order codes.npy)",
                        hash_bits=int(getattr(downcast, "b", 0)) or None,
                        nhash=int(getattr(downcast, "nhash", 0)) or None)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(info, f, indent=2)
    return info


def load_index(folder, with_faiss=True):
    """``(index or None, meta, db_codes, db_labels)`` of a folder written by `save_index`
    (an "adc" folder: index None, meta["codebooks"] the codebooks array)."""
    path = os.path.join(folder, META_FILE)
    if not os.path.exists(path):
        raise RetrievalError(f"{folder}: no {META_FILE}; build it with python -m tools.retrieval "
                             f"build")
    try:
        with open(path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise RetrievalError(f"{path} is not a readable index record ({e}); build the index again") from None
    if meta.get("format") != FORMAT_VERSION:
        raise RetrievalError(f"{folder}: index format {meta.get('format')}, expected "
                             f"{FORMAT_VERSION}; build it again")
    arrays = {}
    for name in ("codes", "labels") + (("codebooks",) if meta.get("kind") == "adc" else ()):
        p = os.path.join(folder, f"{name}.npy")
        try:
            arrays[name] = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RetrievalError(f"{p} is missing or unreadable ({e}); build the index again") from None
    codes, labels = arrays["codes"], arrays["labels"]
    if len(labels) == 0 or len(codes) != len(labels):
        raise RetrievalError(f"{folder}: the index holds {len(codes)} codes and {len(labels)} labels; "
                             f"an index needs a non-empty database: build it again from a non-empty set")
    index = None
    if meta.get("kind") != "adc":
        _check_index_codes(folder, codes, meta.get("bits"), len(labels))
    if meta.get("kind") == "adc":
        meta["codebooks"] = arrays["codebooks"]
    elif with_faiss:
        index = _faiss().read_index_binary(os.path.join(folder, INDEX_FILE))
        if index.ntotal != len(labels):
            raise RetrievalError(f"{folder}: index holds {index.ntotal} items, labels.npy "
                                 f"{len(labels)}; build it again")
    return index, meta, codes, labels


def parse_code(text, nbits, hex_digits=False):
    """A code given as a string of nbits '0'/'1' or as hex (big bit order, as on disk)
    -> packed uint8 [1, ceil(nbits/8)]."""
    text = text.strip().replace("_", "")
    if hex_digits:
        text = text[2:] if text.lower().startswith("0x") else text
        if len(text) != 2 * (-(-nbits // 8)):
            raise RetrievalError(f"a {nbits}-bit code is {-(-nbits // 8)} bytes = "
                                 f"{2 * (-(-nbits // 8))} hex digits, got {len(text)}")
        packed = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)[None, :].copy()
        wider = C.padding_error(packed, nbits, f"hex code {text}", given="of the index",
                                todo="the last byte's low bits are padding and must be 0")
        if wider:
            raise RetrievalError(wider)
        return packed
    if len(text) != nbits or set(text) - {"0", "1"}:
        raise RetrievalError(f"expected {nbits} characters 0/1, got {text!r}")
    return C.pack_bits(np.array([[c == "1" for c in text]]))


def _check_index_codes(folder, codes, nbits, n):
    """The binary codes.npy of an index folder: uint8 [n, ceil(bits / 8)], no pad bit set."""
    path = os.path.join(folder, "codes.npy")
    if not isinstance(nbits, int) or nbits < 1:
        raise RetrievalError(f"{os.path.join(folder, META_FILE)}: no code width (\"bits\"); "
                             f"build it again")
    want = -(-nbits // 8)
    if codes.dtype != np.uint8 or codes.shape != (n, want):
        raise RetrievalError(f"{path}: {nbits}-bit codes of {n} items (index.json, labels.npy) "
                             f"are uint8 [{n}, {want}], got {codes.dtype} {codes.shape}; build "
                             f"it again")
    wider = C.padding_error(codes, nbits, path, given="of index.json",
                            todo="index.json and codes.npy disagree: build it again")
    if wider:
        raise RetrievalError(wider)
