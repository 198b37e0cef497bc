"""Methods x code widths on one data set, one protocol, one metric code: a Table II-style table.

    python -m tools.compare                         # digits: TQN, triplet, LSH, ITQ, SDH at 12/24/48
    python -m tools.compare --dataset cifar10 --data DIR --iters 2000 1000 --bits 48

Deep rows come from the main job's training (tools/main_job.py: step 1 = triplet-only, step 2 =
TQN) and from DSH, DNNH and DQN trained on the same data, backbone and budget (TQN's two steps'
iterations together; main_job.run_method), read back from their saved evaluations (DQN: ADC
ranking of its product-quantizer codes); classical rows (tools/baselines.py) hash the same
split's features, raw pixels or the trained step-1 net's features (`--baseline-features`), and
are scored by the same tools/metrics.py. Rows this project cannot run (the paper's MLH, BRE, KSH,
CNNH, ...) appear only for CIFAR-10, marked "cited" with their source. Writes <out>/results/
table2.md and table2.csv; every row names its protocol, net, iterations, seeds and wall time.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from prototxt import description as D
from tools import baselines as B
from tools import main_job
from tools import metrics as M
from tools.extract import load_blobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEP = {"triplet": 1, "tqn": 2}         # the main job's two steps
ONE_STEP = ("dsh", "dnnh", "dqn")        # trained by main_job.run_method on the same budget
CLASSICAL = ("lsh", "itq", "sdh")
# The TQN paper's Table II (CIFAR-10 mAP at 12 / 24 / 48 bits; its own protocol and nets).
PAPER_TABLE_II = {
    "ITQ": (0.165, 0.196, 0.218), "MLH": (0.184, 0.199, 0.209), "BRE": (0.159, 0.163, 0.172),
    "KSH": (0.295, 0.372, 0.417), "CNNH": (0.465, 0.521, 0.532), "DNNH": (0.555, 0.566, 0.581),
    "DSH": (0.615, 0.651, 0.676), "TQN (paper)": (0.855, 0.857, 0.859),
}


def raw_pixels(data_dir):
    """{set: (features float32 [n, H*W*C] in [0, 1], labels)} from the data set's LMDBs."""
    from data_prep.lmdb_io import read_image_lmdb
    out = {}
    for s in ("train", "query", "database"):
        _, images, labels, _ = read_image_lmdb(os.path.realpath(os.path.join(data_dir, "lmdb", s)))
        out[s] = (B.raw_pixel_features(np.stack(images), max_value=255), labels)
    return out


def deep_rows(out, bits_list, methods, protocol):
    rows = []
    for bits in bits_list:
        run = os.path.join(out, f"{bits}bits")
        with open(os.path.join(run, "params.json")) as f:
            params = json.load(f)
        plan = params["plan"]
        for method in methods:
            step = DEEP[method]
            with open(os.path.join(run, "eval", f"step{step}", "metrics.json")) as f:
                m = json.load(f)
            seconds = sum(params["steps"][str(k)]["seconds"] for k in range(1, step + 1))
            rows.append(dict(
                method="TQN" if method == "tqn" else "Triplet only", features="learned", bits=bits,
                map_tie_aware=m["binary"]["map_tie_aware"], map_index_order=m["binary"]["map_index_order"],
                precision_radius2=m["binary"]["precision_radius2"], protocol=protocol,
                net=D.config(plan["dataset"], plan["scale"])["backbone"],
                iterations="+".join(str(i) for i in plan["iterations"][:step]),
                seeds=f"data {plan['data_seed']}, triplets {plan['triplet_seed']}, solver "
                      + ",".join(str(s) for s in plan["solver_seeds"][:step]),
                wall_seconds=round(seconds, 1), source="measured",
                warnings=len(m["collapse_warnings"])))
    return rows


def one_step_rows(job, data_dir, bits_list, methods, protocol, cfg):
    rows = []
    for bits in bits_list:
        for method in methods:
            run = os.path.join(job.out, f"{bits}bits", method)
            record, m = main_job.run_method(method, job, data_dir, bits, run, cfg["classes"])
            plan = record["plan"]
            rows.append(dict(
                method=method.upper(), features="learned" if method != "dqn" else "learned (PQ, ADC)",
                bits=bits, map_tie_aware=m["binary"]["map_tie_aware"],
                map_index_order=m["binary"]["map_index_order"],
                precision_radius2=m["binary"].get("precision_radius2"), protocol=protocol,
                net=cfg["backbone"], iterations=str(plan["iterations"][0]),
                seeds=f"data {plan['data_seed']}, solver {plan['solver_seeds'][0]}",
                wall_seconds=record["steps"]["1"]["seconds"], source="measured",
                warnings=len(m["collapse_warnings"])))
    return rows


def classical_rows(data_dir, out, bits_list, methods, feature_source, protocol, seed, same):
    rows = []
    pixels = raw_pixels(data_dir) if feature_source == "raw" else None
    for bits in bits_list:
        if feature_source == "raw":
            sets = pixels
            net, label = "none (raw pixels)", "raw pixels"
        else:
            _, blobs = load_blobs(os.path.join(out, f"{bits}bits", "blobs", "step1"),
                                  arrays=("features", "labels"))
            # The database doubles as the training set (digits, cifar10-2) or is the query
            # set (dsh: then fitting on it is transductive, as DSH's own test-set protocol).
            sets = {s: (blobs[s]["features"], blobs[s]["labels"]) for s in ("query", "database")}
            sets["train"] = sets["database"]
            net, label = "step-1 net's latent features", f"step-1 features ({bits} dims)"
        for method in methods:
            start = time.perf_counter()
            try:
                qb, dbb, info = B.run_baseline(method, bits, sets["train"][0], sets["train"][1],
                                               sets["query"][0], sets["database"][0], seed=seed)
            except ValueError as e:  # e.g. ITQ with more bits than feature dimensions
                print(f"compare: {method} at {bits} bits skipped: {e}", file=sys.stderr)
                continue
            m = M.evaluate_codes(qb, sets["query"][1], dbb, sets["database"][1], bits,
                                 exclude_self=same, radii=(2,))
            rows.append(dict(
                method=method.upper(), features=label, bits=bits, map_tie_aware=m["map_tie_aware"],
                map_index_order=m["map_index_order"], precision_radius2=m["precision_radius2"],
                protocol=protocol, net=net, iterations=str(info.get("iterations", "")),
                seeds=f"hashing {seed}", wall_seconds=round(time.perf_counter() - start, 1),
                source="measured", warnings=0))
    return rows


def cited_rows(bits_list):
    rows = []
    for method, values in PAPER_TABLE_II.items():
        for bits, value in zip((12, 24, 48), values):
            if bits in bits_list:
                rows.append(dict(method=method, features="(paper)", bits=bits, map_tie_aware=value,
                                 map_index_order=None, precision_radius2=None,
                                 protocol="the paper's (5,000/1,000 per class)", net="(paper)",
                                 iterations="", seeds="", wall_seconds=None,
                                 source="cited: TQN paper, Table II", warnings=0))
    return rows


def markdown(rows, bits_list, title):
    methods = []
    for r in rows:
        key = (r["method"], r["features"], r["source"])
        if key not in methods:
            methods.append(key)
    lines = [f"# {title}", "", "| method | features | " + " | ".join(f"{b} bits" for b in bits_list)
             + " | source |", "|---|---|" + "---|" * len(bits_list) + "---|"]
    for method, features, source in methods:
        cells = []
        for b in bits_list:
            r = next((r for r in rows if (r["method"], r["features"], r["source"]) == (method, features, source)
                      and r["bits"] == b), None)
            if r is None:
                cells.append("–")
            elif r["map_index_order"] is None:
                cells.append(f"{r['map_tie_aware']:.3f}")
            else:
                cells.append(f"{r['map_tie_aware']:.3f} [{r['map_index_order']:.3f}]"
                             + (" ⚠" if r["warnings"] else ""))
        lines.append(f"| {method} | {features} | " + " | ".join(cells) + f" | {source} |")
    lines += ["", "mAP over the full Hamming ranking: tie-aware (expectation over random order within "
              "ties) [ties broken by database index]; ⚠: the codes' health check warned (collapse).",
              "Cited rows are the paper's own figures under its protocol and nets, not comparable "
              "one to one.", "", "| method | bits | P@r≤2 | protocol | net | iterations | seeds | "
              "wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["source"] == "measured":
            p2 = "n/a" if r["precision_radius2"] is None else f"{r['precision_radius2']:.3f}"
            lines.append(f"| {r['method']} ({r['features']}) | {r['bits']} | {p2} | "
                         f"{r['protocol']} | {r['net']} | {r['iterations']} | {r['seeds']} | "
                         f"{r['wall_seconds']} |")
    return "\n".join(lines) + "\n"


def run(args):
    cfg = D.config(args.dataset, args.scale)
    bits_list = args.bits or list(cfg["bits"])
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", f"compare-{args.dataset}-{args.scale}"))
    deep = [m for m in args.methods if m in DEEP]
    one_step = [m for m in args.methods if m in ONE_STEP]
    job = main_job.main.__globals__["argparse"].Namespace(
        dataset=args.dataset, scale=args.scale, archive=args.archive, root=args.root,
        protocol=args.protocol, data=args.data, data_args=[], bits=bits_list, weights=args.weights,
        epochs=args.epochs, iters=args.iters, batch_triplets=32, seed=args.seed,
        data_seed=args.data_seed, out=out, quiet=True)
    needs_net = bool(deep) or args.baseline_features == "step1"
    if needs_net:
        main_job.run(job)
    data_dir = os.path.abspath(args.data or os.path.join(out, "data"))
    if not needs_net and not args.data:
        main_job.prepare_data(job, data_dir)
    with open(os.path.join(data_dir, "dataset.json")) as f:
        manifest = json.load(f)
    protocol = manifest["protocol"]
    same = os.path.realpath(os.path.join(data_dir, "lmdb", "query")) == \
        os.path.realpath(os.path.join(data_dir, "lmdb", "database"))
    rows = deep_rows(out, bits_list, deep, protocol) if deep else []
    if one_step:
        rows += one_step_rows(job, data_dir, bits_list, one_step, protocol, cfg)
    classical = [m for m in args.methods if m in CLASSICAL]
    if classical:
        rows += classical_rows(data_dir, out, bits_list, classical, args.baseline_features, protocol,
                               args.seed, same)
    if args.dataset == "cifar10":
        rows += cited_rows(bits_list)
    results = os.path.join(out, "results")
    os.makedirs(results, exist_ok=True)
    title = f"{args.dataset} / {args.scale} scale / protocol {protocol}: mAP"
    text = markdown(rows, bits_list, title)
    with open(os.path.join(results, "table2.md.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(results, "table2.md.tmp"), os.path.join(results, "table2.md"))
    with open(os.path.join(results, "table2.csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(os.path.join(results, "table2.csv.tmp"), os.path.join(results, "table2.csv"))
    print(text)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=sorted({d for d, _ in D.CONFIGS}))
    ap.add_argument("--scale", default="cpu", choices=sorted({s for _, s in D.CONFIGS}))
    ap.add_argument("--methods", nargs="+", default=["tqn", "triplet", *ONE_STEP, *CLASSICAL],
                    choices=[*DEEP, *ONE_STEP, *CLASSICAL])
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--baseline-features", choices=("raw", "step1"), default="raw",
                    help="what LSH/ITQ/SDH hash: raw pixels, or the step-1 net's latent features")
    ap.add_argument("--data", help="an existing data_prep folder")
    ap.add_argument("--archive")
    ap.add_argument("--root")
    ap.add_argument("--protocol")
    ap.add_argument("--weights")
    ap.add_argument("--epochs", type=int, nargs=2, default=list(D.PAPER_TRAINING["epochs"]))
    ap.add_argument("--iters", type=int, nargs=2)
    ap.add_argument("--seed", type=int, default=1, help="solver seed (step 2: +1) and hashing seed")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    try:
        run(args)
        return 0
    except (ValueError, KeyError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
