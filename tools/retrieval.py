"""Search with saved codes: build an index of a set, answer "query -> nearest database items".

    python -m tools.retrieval build RUN/blobs/step2 --out RUN/index/step2 \
        [--kind flat|hash|multihash] [--hash-bits B] [--nhash H]
    python -m tools.retrieval query RUN/index/step2 --blobs RUN/blobs/step2 --rows 0 17 [-k 10]
    python -m tools.retrieval query RUN/index/step2 --queries NEW/blobs/query --rows 0 1
    python -m tools.retrieval query RUN/index/step2 --code 0101...   (or --hex a3f0...)
        [--nflip F] [--exact] [--json]

`build` makes an index of a saved set (default: the database set of a blobs folder,
tools/pipeline/blobs.py): for binary codes a faiss binary index (tools/hashing/binary_index.py:
its kinds, bit order and ties); for DQN's product-quantizer codes an ADC index (the PQ codes and
codebooks, searched by DQN's asymmetric quantizer similarity, tools/hashing/pq.py). `query`
answers with ids = database rows, labels, and Hamming distances (ADC: similarities). A query is
a row of a saved set (the query set of the same extraction, or of another one: new images are
encoded by extracting them with `tools.extract` and passing ``--queries THAT/query``), or, for
binary codes, a code given as bits or hex. ``--exact`` answers binary queries with this
project's exact ranking instead of faiss, and needs no faiss. When the index's database is the
query set (protocol dsh) and the queries are its rows, each query is left out of its own answer,
as in evaluation.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from tools.hashing import binary_index as BI
from tools.hashing import pq
from tools.pipeline import blobs as B
from tools.pipeline.errors import PipelineError, run_command


def read_set(folder, name):
    """(blobs, codes, labels, features or None) of one set of a blobs folder."""
    arrays = ("features", "codes", "labels")
    blobs = B.read(folder, arrays=arrays) if name in B.SETS else \
        B.read(folder, arrays=arrays, optional_sets=(name,))
    if name not in blobs.sets:
        raise PipelineError(f"{folder} has no set {name!r}")
    s = blobs.sets[name]
    return blobs, s[B.code_array(blobs.meta.get("method"))], s["labels"], s.get("features")


def cmd_build(a):
    blobs, codes, labels, _ = read_set(a.blobs, a.set)
    nbits = blobs.bits
    t = time.perf_counter()
    facts = dict(blobs=os.path.abspath(a.blobs), set=a.set, database_is_query=blobs.database_is_query,
                 dataset=blobs.meta.get("dataset"), protocol=blobs.meta.get("protocol"))
    if blobs.is_pq:
        info = BI.save_index(a.out, None, nbits, codes, labels, codebooks=blobs.codebooks, **facts)
        what = "ADC index (DQN's PQ codes and codebooks)"
    else:
        index = BI.build_index(codes, nbits, a.kind, a.hash_bits, a.nhash)
        info = BI.save_index(a.out, index, nbits, codes, labels, kind=a.kind, **facts)
        what = info["faiss_class"]
    print(f"built {what} of {info['ntotal']} codes, {nbits} bits "
          f"({time.perf_counter() - t:.2f} s) -> {a.out}")


def queries_of(a, meta):
    """``(packed codes or features, names, labels or None, self ids or None)``."""
    nbits = meta["bits"]
    adc = meta.get("kind") == "adc"
    if a.code or a.hex:
        if adc:
            raise PipelineError("an ADC (DQN) index is searched with real-valued queries: give "
                                "--blobs or --queries, not --code/--hex")
        packed = np.concatenate([BI.parse_code(c, nbits, hex_digits=bool(a.hex))
                                 for c in (a.code or a.hex)])
        return packed, [f"code {c}" for c in (a.code or a.hex)], None, None
    if a.blobs:
        source, name = a.blobs, a.set
    elif a.queries:
        source, name = os.path.dirname(os.path.normpath(a.queries)), \
            os.path.basename(os.path.normpath(a.queries))
    else:
        raise PipelineError("give the queries: --blobs/--queries with --rows, or --code/--hex")
    q_blobs, q_codes, q_labels, q_features = read_set(source, name)
    if q_blobs.bits != nbits or q_blobs.is_pq != adc:
        raise PipelineError(f"{source}: {q_blobs.bits}-bit {'PQ' if q_blobs.is_pq else 'binary'} "
                            f"codes; the index holds {nbits}-bit {'PQ' if adc else 'binary'} codes")
    bad = [r for r in (a.rows or ()) if not 0 <= r < len(q_codes)]
    if bad:
        raise PipelineError(f"--rows {bad[0]}: {source}/{name} has rows 0..{len(q_codes) - 1}")
    rows = np.asarray(a.rows if a.rows else range(len(q_codes)), dtype=np.int64)
    same_set = (meta.get("database_is_query") and os.path.abspath(source) == meta.get("blobs")
                and name in ("query", meta.get("set")))
    return ((q_features if adc else q_codes)[rows], [f"{name} row {r}" for r in rows], q_labels[rows],
            rows if same_set else None)


def cmd_query(a):
    if a.k < 1:
        raise PipelineError(f"-k {a.k}: the number of neighbours to return must be at least 1")
    index, meta, db_codes, db_labels = BI.load_index(a.index, with_faiss=not a.exact)
    nbits = meta["bits"]
    adc = meta.get("kind") == "adc"
    queries, names, q_labels, self_ids = queries_of(a, meta)
    extra = 1 if self_ids is not None else 0
    k = min(a.k + extra, len(db_labels))
    if adc:
        dist, ids = pq.search(queries, db_codes, meta.pop("codebooks"), k)
        engine, measure = "ADC (DQN's asymmetric quantizer similarity)", "similarity"
    elif a.exact:
        dist, ids = BI.exact_search(queries, db_codes, nbits, k)
        engine, measure = "exact (numpy/C ranking)", "distance"
    else:
        dist, ids = BI.search(index, queries, nbits, k, a.nflip)
        engine, measure = meta["faiss_class"], "distance"
    results = []
    for i, name in enumerate(names):
        keep = ids[i] >= 0
        if self_ids is not None:
            keep &= ids[i] != self_ids[i]
        row_ids, row_dist = ids[i][keep][: a.k], dist[i][keep][: a.k]
        hits = [dict(rank=r + 1, id=int(j), label=db_labels[j].item(),
                     **{measure: float(d) if adc else int(d)})
                for r, (j, d) in enumerate(zip(row_ids, row_dist))]
        if q_labels is not None:
            for h in hits:
                h["same_label"] = bool(h["label"] == q_labels[i])
        results.append(dict(query=name, label=None if q_labels is None else q_labels[i].item(),
                            neighbours=hits))
    if a.json:
        json.dump(dict(index=os.path.abspath(a.index), engine=engine, k=a.k, results=results),
                  sys.stdout, indent=1)
        print()
        return
    for res in results:
        label = "" if res["label"] is None else f", label {res['label']}"
        print(f"{res['query']}{label}: {len(res['neighbours'])} nearest by {engine}")
        for h in res["neighbours"]:
            mark = "" if "same_label" not in h else ("  same label" if h["same_label"] else "")
            value = f"similarity {h[measure]:.6g}" if adc else f"distance {h[measure]:3d}"
            print(f"  {h['rank']:4d}  id {h['id']:8d}  label {h['label']!s:>8}  {value}{mark}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.retrieval", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="an index of a saved set")
    b.add_argument("blobs", help="a blobs folder (meta.json, query/, database/)")
    b.add_argument("--set", default="database")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--kind", choices=BI.KINDS, default="flat", help="faiss index kind (binary codes)")
    b.add_argument("--hash-bits", type=int, help="key bits per hash table (default ~log2 n)")
    b.add_argument("--nhash", type=int, help="multihash: tables (default bits // hash bits)")
    q = sub.add_parser("query", help="nearest database items of queries")
    q.add_argument("index", help="an index folder written by build")
    q.add_argument("--blobs", help="blobs folder holding the queries (with --set)")
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
    a = ap.parse_args(argv)
    return run_command("retrieval", lambda: cmd_build(a) if a.command == "build" else cmd_query(a))


if __name__ == "__main__":
    sys.exit(main())
