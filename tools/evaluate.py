"""Evaluates saved blobs (`tools.extract`): binary codes by Hamming ranking, real-valued
features by Euclidean ranking, and the codes' health.

    python -m tools.evaluate RUN/blobs/step2 [--ks 1 10 20 100] [--out RUN/eval/step2]

Writes <out>/metrics.json and <out>/pr_curve.png and prints a summary that names the protocol.
Tie-aware mAP (the expectation over random order within Hamming ties) is the primary figure;
mAP with ties broken by database index stands beside it (see tools/metrics.py). When the
database is the query set (protocol dsh), each query is left out of its own ranking; with
`--self-match include` it stays in (DSH's own evaluation, CIFAR-10/test_map.m, keeps it: use that
only to compare with figures computed that way, and say so).
"""
import argparse
import json
import os
import sys

import numpy as np

from tools import codes as C
from tools import metrics as M
from tools.extract import ExtractError, load_blobs

DEFAULT_KS = (1, 10, 20, 100)


def evaluate(blobs, ks=DEFAULT_KS, out=None, num_classes=None, self_match="exclude"):
    if self_match not in ("exclude", "include"):
        raise ValueError(f"self_match is 'exclude' or 'include', got {self_match!r}")
    meta, sets = load_blobs(blobs)
    q, db = sets["query"], sets["database"]
    bits = meta["bits"]
    same = bool(meta.get("database_is_query")) and self_match == "exclude"
    if meta.get("method") == "dqn":
        result = _evaluate_pq(blobs, meta, q, db, same, ks, self_match)
        if out:
            _write(out, result)
        return result
    binary = M.evaluate_codes(q["codes"], q["labels"], db["codes"], db["labels"], bits,
                              exclude_self=same, ks=ks, radii=(2,))
    real = M.evaluate_features(q["features"], q["labels"], db["features"], db["labels"],
                               exclude_self=same, ks=ks)
    rel, tot = M.hamming_histograms(C.to_words(q["codes"], bits), q["labels"],
                                    C.to_words(db["codes"], bits), db["labels"], bits, same)
    precision, recall, empty = M.pr_curve_by_radius(rel, tot)
    db_bits = C.unpack_bits(db["codes"], bits)
    health = C.code_health(db_bits)
    classes = num_classes or len(np.unique(db["labels"]))
    warnings = C.collapse_warnings(health, classes if classes <= 1000 else None)
    result = dict(
        protocol=meta.get("protocol"), dataset=meta.get("dataset"), bits=bits,
        weights=meta.get("weights"), exclude_self=same,
        self_match=self_match if meta.get("database_is_query") else "n/a (query and database differ)",
        binary=binary, real=real,
        drop_map=M.relative_drop(real["map"], binary["map_tie_aware"]) if real["map"] > 0 else None,
        pr_by_radius=dict(precision=precision.tolist(), recall=recall.tolist(),
                          empty_share=np.asarray(empty).tolist()),
        code_health={k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in health.items()},
        collapse_warnings=warnings)
    if out:
        _write(out, result)
        plot_pr(result, os.path.join(out, "pr_curve.png"))
    return result


def _write(out, result):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json.tmp"), "w") as f:
        json.dump(result, f, indent=1)
    os.replace(os.path.join(out, "metrics.json.tmp"), os.path.join(out, "metrics.json"))


def _evaluate_pq(blobs, meta, q, db, same, ks, self_match):
    """DQN: the database's product-quantizer codes ranked for each (unquantized) query by DQN's
    asymmetric quantizer similarity (tools/pq.py); real-valued: the bottleneck features."""
    from tools import pq
    codebooks = np.load(os.path.join(blobs, "codebooks.npy"), allow_pickle=False)
    binary = pq.evaluate_adc(q["features"], q["labels"], db["pq_codes"], db["labels"], codebooks,
                             metric="ip", exclude_self=same, ks=ks)
    binary.setdefault("precision_radius2", None)
    real = M.evaluate_features(q["features"], q["labels"], db["features"], db["labels"],
                               exclude_self=same, ks=ks)
    distinct = len(np.unique(np.asarray(db["pq_codes"]), axis=0))
    return dict(
        protocol=meta.get("protocol"), dataset=meta.get("dataset"), bits=meta["bits"],
        method="dqn", weights=meta.get("weights"), exclude_self=same,
        self_match=self_match if meta.get("database_is_query") else "n/a (query and database differ)",
        binary=binary, real=real, search="ADC (asymmetric quantizer similarity, DQN)",
        drop_map=M.relative_drop(real["map"], binary["map_tie_aware"]) if real["map"] > 0 else None,
        pr_by_radius=None, code_health=dict(distinct_codes=distinct),
        collapse_warnings=[f"only {distinct} distinct PQ codes in the database"] if distinct <= 1 else [])


def plot_pr(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pr = result["pr_by_radius"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(pr["recall"], pr["precision"], marker=".")
    for r in (0, 2, 4):
        if r < len(pr["recall"]):
            ax.annotate(f"r={r}", (pr["recall"][r], pr["precision"][r]), fontsize=7)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (empty ball = 0)")
    ax.set_title(f"{result['dataset']} {result['bits']} bits, protocol {result['protocol']}\n"
                 f"Hamming ball of radius r", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def summary(result):
    b, r, h = result["binary"], result["real"], result["code_health"]
    if result.get("method") == "dqn":
        return (f"protocol {result['protocol']} | {result['dataset']} | {result['bits']} bits (PQ) | "
                f"{b['n_queries']} queries x {b['n_database']} database items\n"
                f"  PQ codes (ADC): mAP {b['map_tie_aware']:.4f} tie-aware, "
                f"{b['map_index_order']:.4f} index order\n"
                f"  real-valued (Euclidean): mAP {r['map']:.4f}; drop to PQ "
                + (f"{result['drop_map']:.1%}" if result["drop_map"] is not None else "n/a")
                + f"\n  {h['distinct_codes']} distinct PQ codes"
                + "".join(f"\n  WARNING: {w}" for w in result["collapse_warnings"]))
    lines = [f"protocol {result['protocol']} | {result['dataset']} | {result['bits']} bits | "
             f"{b['n_queries']} queries x {b['n_database']} database items"
             + (" (each query left out of its own ranking)" if result["exclude_self"] else "")
            + (" (each query kept in its own ranking, as DSH's evaluation)"
               if result["self_match"] == "include" else ""),
             f"  binary codes (Hamming): mAP {b['map_tie_aware']:.4f} tie-aware, "
             f"{b['map_index_order']:.4f} index order; mAP@R {b['map_at_r_tie_aware']:.4f}; "
             f"P@r<=2 {b['precision_radius2']:.4f} (empty balls {b['empty_radius2_share']:.1%})",
             f"  real-valued (Euclidean): mAP {r['map']:.4f}; drop to binary "
             + (f"{result['drop_map']:.1%}" if result["drop_map"] is not None else "n/a"),
             f"  code health: {h['distinct_codes']} distinct codes, mean bit entropy "
             f"{h['mean_entropy']:.3f}, most common code {h['top1_share']:.1%} of items"]
    for w in result["collapse_warnings"]:
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("blobs", help="an extraction folder (meta.json, query/, database/)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS))
    ap.add_argument("--out", help="folder for metrics.json and pr_curve.png")
    ap.add_argument("--self-match", choices=("exclude", "include"), default="exclude",
                    help="when database = query: leave each query out of its own ranking (default) "
                         "or keep it, as DSH's evaluation does")
    args = ap.parse_args(argv)
    try:
        result = evaluate(args.blobs, tuple(args.ks), args.out, self_match=args.self_match)
    except ExtractError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
