"""Retrieval with saved binary codes: exact Hamming ranking, faiss binary indexes, a query CLI.

    python -m tools.retrieval build RUN/blobs/step2 --out RUN/index/step2 \
        [--kind flat|hash|multihash] [--hash-bits B] [--nhash H]
    python -m tools.retrieval query RUN/index/step2 --blobs RUN/blobs/step2 --rows 0 17 [-k 10]
    python -m tools.retrieval query RUN/index/step2 --queries NEW/blobs/query --rows 0 1
    python -m tools.retrieval query RUN/index/step2 --code 0101...   (or --hex a3f0...)
        [--nflip F] [--exact] [--json]

`build` makes a faiss index of a saved set (default: the database set of a `tools.extract`
folder) and writes ``<out>/index.faiss`` (faiss.write_index_binary), ``<out>/index.json``,
``<out>/labels.npy`` and ``<out>/codes.npy`` (the set's codes, packed as on disk), atomically.
`query` answers "query -> nearest database items" (ids = database rows, labels, Hamming
distances). A query is a row of a saved set (the query set of the same extraction, or of
another one: new images are encoded by extracting them with `tools.extract` and passing
``--queries THAT/query``), or a code given as bits or hex. ``--exact`` answers with this
project's exact ranking (tools.codes Hamming distances and np.argpartition) instead of
faiss, and needs no faiss. When the index's database is the query set (protocol dsh) and the
queries are its rows, each query is left out of its own answer, as in evaluation.

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
byte, so that faiss's bit j is our bit j, and clears the pad bits (faiss's dimension is
8 * ceil(nbits / 8); the pad bits are zero in every code and add no distance). Hamming
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
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from tools import codes as C

FORMAT_VERSION = 1
KINDS = ("flat", "hash", "multihash")
INDEX_FILE, META_FILE = "index.faiss", "index.json"
# exact_search: about this many (query, item) distances per chunk of queries
CHUNK_ELEMENTS = 1 << 22
# per byte: the byte with its 8 bits in reverse order (big <-> little bit order)
_REVERSE = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=np.uint8)


class RetrievalError(RuntimeError):
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
    the same shape: bits reversed within each byte, pad bits cleared."""
    packed = C._check_packed(np.asarray(packed), nbits)
    out = _REVERSE[packed]
    if nbits % 8:
        out[:, -1] &= np.uint8((1 << (nbits % 8)) - 1)
    return np.ascontiguousarray(out)


def from_faiss_codes(codes, nbits):
    """Inverse of `to_faiss_codes` (pad bits cleared)."""
    codes = C._check_packed(np.asarray(codes), nbits)
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

    Codes are bool bits or packed uint8 (`tools.codes.to_words`). With exclude_self the
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
        index.nflip = int(nflip)
    codes = to_faiss_codes(np.asarray(q_codes), nbits)
    if codes.shape[1] * 8 != index.d:
        raise RetrievalError(f"queries have {nbits} bits, the index {index.d} (rounded to bytes)")
    distances, ids = index.search(codes, int(k))
    return distances.astype(np.int32), ids.astype(np.int64)


def save_index(folder, index, nbits, db_codes, db_labels, **meta):
    """Write index.faiss, index.json, labels.npy and codes.npy to `folder` atomically."""
    faiss = _faiss()
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".index-", dir=parent)
    try:
        faiss.write_index_binary(index, os.path.join(tmp, INDEX_FILE))
        np.save(os.path.join(tmp, "labels.npy"), np.asarray(db_labels))
        np.save(os.path.join(tmp, "codes.npy"), np.asarray(db_codes))
        downcast = faiss.downcast_IndexBinary(index)
        info = dict(format=FORMAT_VERSION, bits=int(nbits), ntotal=int(index.ntotal),
                    faiss_class=type(downcast).__name__, faiss_version=faiss.__version__,
                    faiss_bit_order="bit j = (code[j // 8] >> (j % 8)) & 1 (tools.retrieval."
                                    "to_faiss_codes of the big-bit-order codes.npy)",
                    hash_bits=int(getattr(downcast, "b", 0)) or None,
                    nhash=int(getattr(downcast, "nhash", 0)) or None,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(info, f, indent=2)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return info


def load_index(folder, with_faiss=True):
    """``(index or None, meta, db_codes, db_labels)`` of a folder written by `save_index`."""
    path = os.path.join(folder, META_FILE)
    if not os.path.exists(path):
        raise RetrievalError(f"{folder}: no {META_FILE}; build it with python -m tools.retrieval "
                             f"build")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_VERSION:
        raise RetrievalError(f"{folder}: index format {meta.get('format')}, expected "
                             f"{FORMAT_VERSION}; build it again")
    codes = np.load(os.path.join(folder, "codes.npy"), allow_pickle=False)
    labels = np.load(os.path.join(folder, "labels.npy"), allow_pickle=False)
    index = None
    if with_faiss:
        index = _faiss().read_index_binary(os.path.join(folder, INDEX_FILE))
        if index.ntotal != len(labels):
            raise RetrievalError(f"{folder}: index holds {index.ntotal} items, labels.npy "
                                 f"{len(labels)}; build it again")
    return index, meta, codes, labels


# ---------------------------------------------------------------------------------------
# Saved blobs (tools.extract)
# ---------------------------------------------------------------------------------------


def load_set(blobs, name):
    """``(meta, codes, labels)`` of one set of an extraction folder (`tools.extract`)."""
    meta_path = os.path.join(blobs, "meta.json")
    if not os.path.exists(meta_path):
        raise RetrievalError(f"{blobs}: no meta.json (not a tools.extract folder)")
    with open(meta_path) as f:
        meta = json.load(f)
    folder = os.path.join(blobs, name)
    codes = np.load(os.path.join(folder, "codes.npy"), allow_pickle=False)
    labels = np.load(os.path.join(folder, "labels.npy"), allow_pickle=False)
    if len(codes) != len(labels):
        raise RetrievalError(f"{folder}: {len(codes)} codes but {len(labels)} labels")
    C._check_packed(codes, meta["bits"])
    return meta, codes, labels


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
        return C.pack_bits(C.unpack_bits(packed, nbits))  # clears the pad bits
    if len(text) != nbits or set(text) - {"0", "1"}:
        raise RetrievalError(f"expected {nbits} characters 0/1, got {text!r}")
    return C.pack_bits(np.array([[c == "1" for c in text]]))


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def cmd_build(args):
    meta, codes, labels = load_set(args.blobs, args.set)
    nbits = meta["bits"]
    t = time.perf_counter()
    index = build_index(codes, nbits, args.kind, args.hash_bits, args.nhash)
    info = save_index(args.out, index, nbits, codes, labels, kind=args.kind,
                      blobs=os.path.abspath(args.blobs), set=args.set,
                      database_is_query=bool(meta.get("database_is_query")),
                      dataset=meta.get("dataset"), protocol=meta.get("protocol"))
    print(f"built {info['faiss_class']} of {info['ntotal']} codes, {nbits} bits "
          f"({time.perf_counter() - t:.2f} s) -> {args.out}")
    return 0


def _queries(args, meta):
    """``(packed codes, names, labels or None, self ids or None)``."""
    nbits = meta["bits"]
    if args.code or args.hex:
        packed = np.concatenate([parse_code(c, nbits, hex_digits=bool(args.hex))
                                 for c in (args.code or args.hex)])
        return packed, [f"code {c}" for c in (args.code or args.hex)], None, None
    if args.blobs:
        source, name = args.blobs, args.set
    elif args.queries:
        source, name = os.path.dirname(os.path.normpath(args.queries)), \
            os.path.basename(os.path.normpath(args.queries))
    else:
        raise RetrievalError("give the queries: --blobs/--queries with --rows, or --code/--hex")
    q_meta, q_codes, q_labels = load_set(source, name)
    if q_meta["bits"] != nbits:
        raise RetrievalError(f"{source}: {q_meta['bits']}-bit codes, the index has {nbits}")
    rows = np.asarray(args.rows if args.rows else range(len(q_codes)), dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(q_codes)):
        raise RetrievalError(f"rows must be in 0..{len(q_codes) - 1}")
    same_set = (meta.get("database_is_query") and os.path.abspath(source) == meta.get("blobs")
                and name in ("query", meta.get("set")))
    return (q_codes[rows], [f"{name} row {r}" for r in rows], q_labels[rows],
            rows if same_set else None)


def cmd_query(args):
    index, meta, db_codes, db_labels = load_index(args.index, with_faiss=not args.exact)
    nbits = meta["bits"]
    packed, names, q_labels, self_ids = _queries(args, meta)
    extra = 1 if self_ids is not None else 0
    k = min(args.k + extra, len(db_labels))
    if args.exact:
        dist, ids = exact_search(packed, db_codes, nbits, k)
    else:
        dist, ids = search(index, packed, nbits, k, args.nflip)
    results = []
    for i, name in enumerate(names):
        keep = ids[i] >= 0
        if self_ids is not None:
            keep &= ids[i] != self_ids[i]
        row_ids, row_dist = ids[i][keep][: args.k], dist[i][keep][: args.k]
        hits = [dict(rank=r + 1, id=int(j), label=db_labels[j].item(), distance=int(d))
                for r, (j, d) in enumerate(zip(row_ids, row_dist))]
        if q_labels is not None:
            for h in hits:
                h["same_label"] = bool(h["label"] == q_labels[i])
        results.append(dict(query=name, label=None if q_labels is None else q_labels[i].item(),
                            neighbours=hits))
    engine = "exact (numpy/C ranking)" if args.exact else meta["faiss_class"]
    if args.json:
        json.dump(dict(index=os.path.abspath(args.index), engine=engine, k=args.k,
                       results=results), sys.stdout, indent=1)
        print()
        return 0
    for res in results:
        label = "" if res["label"] is None else f", label {res['label']}"
        print(f"{res['query']}{label}: {len(res['neighbours'])} nearest by {engine}")
        for h in res["neighbours"]:
            mark = "" if "same_label" not in h else ("  same label" if h["same_label"] else "")
            print(f"  {h['rank']:4d}  id {h['id']:8d}  label {h['label']!s:>8}  "
                  f"distance {h['distance']:3d}{mark}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="faiss index of a saved set")
    b.add_argument("blobs", help="a tools.extract folder (meta.json, query/, database/)")
    b.add_argument("--set", default="database")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--kind", choices=KINDS, default="flat")
    b.add_argument("--hash-bits", type=int, help="key bits per hash table (default ~log2 n)")
    b.add_argument("--nhash", type=int, help="multihash: tables (default bits // hash bits)")
    q = sub.add_parser("query", help="nearest database items of queries")
    q.add_argument("index", help="an index folder written by build")
    q.add_argument("--blobs", help="extraction folder holding the queries (with --set)")
    q.add_argument("--set", default="query")
    q.add_argument("--queries", help="a set folder of another extraction (BLOBS/query)")
    q.add_argument("--rows", type=int, nargs="+", help="query rows (default: all)")
    q.add_argument("--code", nargs="+", help="codes as strings of 0/1 (bit 0 first)")
    q.add_argument("--hex", nargs="+", help="codes as hex of the packed bytes (as on disk)")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--nflip", type=int, default=2, help="hash indexes: bits flipped when "
                   "probing buckets (default 2)")
    q.add_argument("--exact", action="store_true", help="exact ranking without faiss")
    q.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        return cmd_build(args) if args.command == "build" else cmd_query(args)
    except (RetrievalError, ValueError, TypeError, OSError, KeyError) as e:
        print(f"retrieval: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
