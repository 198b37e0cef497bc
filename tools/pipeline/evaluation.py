"""Evaluates saved blobs (blobs.py): binary codes by Hamming ranking (DQN's PQ codes by ADC),
real-valued features by Euclidean ranking, and the codes' health; and classical baselines on
saved features.

`evaluate(folder, out=...)` is the entry point (the command line is `python -m tools.evaluate`).
It writes <out>/metrics.json (the completion marker of the evaluation: a rerun over the same
blobs and settings reads it back instead of evaluating again) and <out>/pr_curve.png.
Tie-aware mAP (the expectation over random order within Hamming ties) is the primary figure;
mAP with ties broken by database index stands beside it (see tools/hashing/metrics.py). When
the database is the query set (protocol dsh), each query is left out of its own ranking; with
self_match="include" it stays in (DSH's own evaluation, CIFAR-10/test_map.m, keeps it: use that
only to compare with figures computed that way, and say so).
"""
import os
import time

import numpy as np

from data_prep.outputs import completed, mark_complete, sha256_file
from tools.hashing import baselines
from tools.hashing import codes as C
from tools.hashing import metrics as M
from tools.hashing import pq
from tools.pipeline import blobs as B
from tools.pipeline import report

DEFAULT_KS = (1, 10, 20, 100)
SELF_MATCH = ("exclude", "include")


def evaluate(folder, ks=DEFAULT_KS, out=None, num_classes=None, self_match="exclude"):
    """The metrics of the blobs in `folder` (a dict, as metrics.json holds it); with `out`,
    written there (skipped when out/metrics.json is of these blobs and settings)."""
    if self_match not in SELF_MATCH:
        raise ValueError(f"self_match is 'exclude' or 'include', got {self_match!r}")
    inputs = dict(blobs=os.path.abspath(folder), ks=list(ks), num_classes=num_classes,
                  self_match=self_match,
                  blobs_meta_sha256=sha256_file(os.path.join(folder, "meta.json"))
                  if os.path.exists(os.path.join(folder, "meta.json")) else None)
    if out:
        done = completed(os.path.join(out, "metrics.json"), inputs)
        if done:
            return done
    start = time.monotonic()
    blobs = B.read(folder)
    q, db = blobs.sets["query"], blobs.sets["database"]
    same = blobs.database_is_query and self_match == "exclude"
    meta = blobs.meta
    result = dict(protocol=meta.get("protocol"), dataset=meta.get("dataset"), bits=blobs.bits,
                  method=meta.get("method", "tqn"), weights=meta.get("weights"),
                  weights_sha256=meta.get("weights_sha256"), exclude_self=same,
                  self_match=self_match if blobs.database_is_query
                  else "n/a (query and database differ)")
    real = M.evaluate_features(q["features"], q["labels"], db["features"], db["labels"],
                               exclude_self=same, ks=ks)
    if blobs.is_pq:
        binary = pq.evaluate_adc(q["features"], q["labels"], db["pq_codes"], db["labels"],
                                 blobs.codebooks, metric="ip", exclude_self=same, ks=ks)
        binary.setdefault("precision_radius2", None)
        distinct = len(np.unique(np.asarray(db["pq_codes"]), axis=0))
        result.update(search="ADC (asymmetric quantizer similarity, DQN)", pr_by_radius=None,
                      code_health=dict(distinct_codes=distinct),
                      collapse_warnings=[f"only {distinct} distinct PQ codes in the database"]
                      if distinct <= 1 else [])
    else:
        bits = blobs.bits
        binary = M.evaluate_codes(q["codes"], q["labels"], db["codes"], db["labels"], bits,
                                  exclude_self=same, ks=ks, radii=(2,))
        rel, tot = M.hamming_histograms(C.to_words(q["codes"], bits), q["labels"],
                                        C.to_words(db["codes"], bits), db["labels"], bits, same)
        precision, recall, empty = M.pr_curve_by_radius(rel, tot)
        health = C.code_health(C.unpack_bits(db["codes"], bits))
        classes = num_classes or len(np.unique(db["labels"]))
        result.update(
            pr_by_radius=dict(precision=precision.tolist(), recall=recall.tolist(),
                              empty_share=np.asarray(empty).tolist()),
            code_health={k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in health.items()},
            collapse_warnings=C.collapse_warnings(health, classes if classes <= 1000 else None))
    result.update(binary=binary, real=real,
                  drop_map=M.relative_drop(real["map"], binary["map_tie_aware"])
                  if real["map"] > 0 else None,
                  seconds=round(time.monotonic() - start, 1))
    if out:
        os.makedirs(out, exist_ok=True)
        outputs = []
        if result["pr_by_radius"]:
            report.plot_pr_curve(result, os.path.join(out, "pr_curve.png"))
            outputs.append("pr_curve.png")
        result = mark_complete(os.path.join(out, "metrics.json"), inputs, outputs, **result)
    return result


def summary(result):
    """The console lines of an evaluation: protocol, sizes, mAP, drop, code health, warnings."""
    b, r, h = result["binary"], result["real"], result["code_health"]
    drop = f"{result['drop_map']:.1%}" if result["drop_map"] is not None else "n/a"
    head = (f"protocol {result['protocol']} | {result['dataset']} | {result['bits']} bits"
            f"{' (PQ)' if result.get('method') == 'dqn' else ''} | "
            f"{b['n_queries']} queries x {b['n_database']} database items")
    if result.get("method") == "dqn":
        lines = [head,
                 f"  PQ codes (ADC): mAP {b['map_tie_aware']:.4f} tie-aware, "
                 f"{b['map_index_order']:.4f} index order",
                 f"  real-valued (Euclidean): mAP {r['map']:.4f}; drop to PQ {drop}",
                 f"  {h['distinct_codes']} distinct PQ codes"]
    else:
        lines = [head + (" (each query left out of its own ranking)" if result["exclude_self"] else "")
                 + (" (each query kept in its own ranking, as DSH's evaluation)"
                    if result["self_match"] == "include" else ""),
                 f"  binary codes (Hamming): mAP {b['map_tie_aware']:.4f} tie-aware, "
                 f"{b['map_index_order']:.4f} index order; mAP@R {b['map_at_r_tie_aware']:.4f}; "
                 f"P@r<=2 {b['precision_radius2']:.4f} (empty balls {b['empty_radius2_share']:.1%})",
                 f"  real-valued (Euclidean): mAP {r['map']:.4f}; drop to binary {drop}",
                 f"  code health: {h['distinct_codes']} distinct codes, mean bit entropy "
                 f"{h['mean_entropy']:.3f}, most common code {h['top1_share']:.1%} of items"]
    lines += [f"  WARNING: {w}" for w in result["collapse_warnings"]]
    return "\n".join(lines)


def run_baseline_on_blobs(folder, name, nbits, seed=0, train=None, evaluate=True, **kw):
    """Runs classical baseline `name` (LSH, ITQ, SDH) on the features of a blobs folder.

    train: "train" or "database" (the set to fit on); None picks train when the folder has
    one, else database. When the database is the query set (meta "database_is_query",
    protocol dsh) fitting on it is transductive: info["transductive"] says so, and
    evaluation leaves each query out of its own ranking. Returns (query_bits,
    database_bits, info); with evaluate=True info["metrics"] is `metrics.evaluate_codes`.
    """
    blobs = B.read(folder, arrays=("features", "labels"), optional_sets=("train",))
    sets = blobs.sets
    if train is None:
        train = "train" if "train" in sets else "database"
    if train not in sets:
        raise ValueError(f"{folder} has no {train!r} set (sets: {sorted(sets)})")
    exclude_self = blobs.database_is_query
    q, db, tr = sets["query"], sets["database"], sets[train]
    query_bits, database_bits, info = baselines.run_baseline(
        name, nbits, tr["features"], tr["labels"], q["features"], db["features"], seed, **kw)
    info.update(blobs=os.path.abspath(folder), train_set=train, exclude_self=exclude_self,
                transductive=exclude_self and train != "train",
                protocol=blobs.meta.get("protocol"), dataset=blobs.meta.get("dataset"))
    if evaluate:
        info["metrics"] = M.evaluate_codes(query_bits, q["labels"], database_bits,
                                           db["labels"], nbits, exclude_self=exclude_self)
    return query_bits, database_bits, info


def evaluate_baseline(name, bits, train, query, database, seed, exclude_self):
    """Classical baseline `name` fitted on train = (features, labels), applied to query and
    database = (features, labels), scored by the same metric code: (metrics, info) where info
    holds the fit's facts and its wall seconds; ValueError when the method cannot run (e.g.
    ITQ with more bits than feature dimensions)."""
    start = time.perf_counter()
    qb, dbb, info = baselines.run_baseline(name, bits, train[0], train[1], query[0], database[0],
                                           seed=seed)
    m = M.evaluate_codes(qb, query[1], dbb, database[1], bits, exclude_self=exclude_self,
                         radii=(2,))
    info["wall_seconds"] = round(time.perf_counter() - start, 1)
    return m, info
