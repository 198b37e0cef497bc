"""The project's main job, end to end: data -> triplet LMDB -> step 1 (triplet loss) -> step 2
(TQN) through `caffe train -solver` -> saved blobs -> evaluation -> a Table III-style table.

    python -m tools.main_job                                   # digits (embedded), 12/24/48 bits
    python -m tools.main_job --dataset cifar10 --archive cifar-10-binary.tar.gz --protocol dsh
    python -m tools.main_job --dataset inshop --root In-shop --scale paper --weights alexnet.caffemodel

Writes under --out (default runs/main-<dataset>-<scale>): data/ (unless --data), one run folder
per code length (tools/train.py), blobs/ and eval/ per step, and results/: table3.md, table3.csv,
fig1_step1_losses.png, fig2_step2_losses.png, pr_curves.png, summary.json. Reruns skip what is done.

"RF with triplet" / "BC with triplet" are step 1's features and codes; "RF with TQN" / "BC with
TQN" step 2's, as in the paper's Table III, where every drop is relative to RF with triplet.
"""
import argparse
import csv
import json
import os
import sys
import time

from prototxt import description as D
from tools import caffe_log
from tools import evaluate as E
from tools import extract as X
from tools import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(text):
    print(f"[main_job] {text}", flush=True)


def prepare_data(args, data_dir):
    from data_prep import build
    argv = ["--dataset", args.dataset, "--out", data_dir, "--seed", str(args.data_seed),
            "--epochs", str(sum(args.epochs)), "--batch-triplets", str(args.batch_triplets)]
    for flag in ("archive", "root", "protocol"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    argv += args.data_args
    code = build.main(argv)
    if code != 0:
        raise SystemExit(f"data_prep.build failed (exit {code}); see the message above")


def run_method(method, args, data_dir, bits, run_dir, num_classes):
    """Trains one of the one-step methods (dsh, dnnh, dqn) on TQN's budget (`args.epochs` or
    `args.iters`: its two steps together), extracts and evaluates it: (train record, evaluation)."""
    train_args = T.build_parser().parse_args(
        ["--method", method, "--data", data_dir, "--dataset", args.dataset, "--scale", args.scale,
         "--bits", str(bits), "--out", run_dir, "--seed", str(args.seed),
         "--batch-triplets", str(args.batch_triplets), "--epochs", *map(str, args.epochs)]
        + (["--weights", args.weights] if args.weights else [])
        + (["--iters", *map(str, args.iters)] if args.iters else [])
        + (["--quiet"] if args.quiet else []))
    train_args.tqn = {}
    record = T.train(train_args)
    model = T.final_model(run_dir, 1, record["plan"]["iterations"][0])
    blobs = os.path.join(run_dir, "blobs")
    X.extract(data_dir, args.dataset, args.scale, bits, model, blobs, method=method)
    result = E.evaluate(blobs, out=os.path.join(run_dir, "eval"), num_classes=num_classes)
    say(f"{bits} bits, {method.upper()}:\n" + E.summary(result))
    return record, result


def headline(result, dataset):
    """The Table III metric: top-20 accuracy on In-shop (the paper's), mAP elsewhere."""
    if dataset == "inshop":
        return (result["real"]["top20"], result["binary"]["top20_tie_aware"],
                result["binary"]["top20_index_order"], "top-20 accuracy")
    return (result["real"]["map"], result["binary"]["map_tie_aware"],
            result["binary"]["map_index_order"], "mAP")


def table3(results, bits_list, dataset, protocol):
    """Markdown and CSV rows of RF/BC x triplet/TQN, drops relative to RF with triplet."""
    metric = headline(results[bits_list[0]][1], dataset)[3]
    rows = []
    for label, step, kind in (("RF with triplet", 1, "rf"), ("BC with triplet", 1, "bc"),
                              ("RF with TQN", 2, "rf"), ("BC with TQN", 2, "bc")):
        cells = []
        for bits in bits_list:
            rf1 = headline(results[bits][1], dataset)[0]
            rf, bc, bc_index, _ = headline(results[bits][step], dataset)
            value = rf if kind == "rf" else bc
            drop = (rf1 - value) / rf1 if rf1 > 0 else float("nan")
            cells.append(dict(bits=bits, value=value, index_order=None if kind == "rf" else bc_index,
                              drop=None if (step, kind) == (1, "rf") else drop))
        rows.append((label, cells))
    head = "| " + f"{metric} ({dataset}, protocol {protocol})" + " | " + " | ".join(
        f"{b} bits" for b in bits_list) + " |"
    md = [head, "|---" * (len(bits_list) + 1) + "|"]
    for label, cells in rows:
        out = []
        for c in cells:
            text = f"{c['value']:.3f}"
            if c["drop"] is not None:
                text += f" ({-c['drop']:+.2%})"
            if c["index_order"] is not None:
                text += f" [index order {c['index_order']:.3f}]"
            out.append(text)
        md.append(f"| {label} | " + " | ".join(out) + " |")
    md.append("")
    md.append(f"BC: tie-aware {metric} (expectation over random order within Hamming ties); "
              f"[index order]: ties broken by database index. In parentheses: change relative "
              f"to RF with triplet, as in the paper's Table III.")
    csv_rows = [dict(row=label, bits=c["bits"], value=c["value"], index_order=c["index_order"],
                     change_vs_rf_triplet=None if c["drop"] is None else -c["drop"], metric=metric,
                     dataset=dataset, protocol=protocol) for label, cells in rows for c in cells]
    return "\n".join(md), csv_rows


def plots(runs, results_dir, title):
    fig1, fig2 = [], []
    for bits, run in runs.items():
        for step, panels in ((1, fig1), (2, fig2)):
            log = os.path.join(run, "logs", f"step{step}.log")
            if os.path.exists(log):
                curves = caffe_log.parse_file(log)
                panels.append((f"{bits} bits", {name: curves.get(name, []) for name in
                                                ("triplet_loss", "tqn_loss", "tqn_loss_s", "tqn_loss_d")}))
    caffe_log.plot_curves(fig1, os.path.join(results_dir, "fig1_step1_losses.png"),
                          f"{title}: step 1 (triplet loss trained; TQN loss monitored)")
    caffe_log.plot_curves(fig2, os.path.join(results_dir, "fig2_step2_losses.png"),
                          f"{title}: step 2 (TQN loss trained; triplet loss monitored)")


def plot_pr_curves(results, results_dir, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, (bits, by_step) in zip(axes[0], sorted(results.items())):
        for step, label in ((1, "triplet"), (2, "TQN")):
            pr = by_step[step]["pr_by_radius"]
            ax.plot(pr["recall"], pr["precision"], marker=".", label=label)
        ax.set_title(f"{bits} bits")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision within Hamming radius")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(results_dir, "pr_curves.png")
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def run(args):
    start = time.monotonic()
    cfg = D.config(args.dataset, args.scale)
    bits_list = args.bits or list(cfg["bits"])
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", f"main-{args.dataset}-{args.scale}"))
    data_dir = os.path.abspath(args.data or os.path.join(out, "data"))
    os.makedirs(out, exist_ok=True)
    say(f"data: {args.dataset} -> {data_dir}")
    if not args.data:
        prepare_data(args, data_dir)
    manifest = T.load_manifest(data_dir)
    protocol = manifest.get("protocol")
    results, runs = {}, {}
    for bits in bits_list:
        run_dir = os.path.join(out, f"{bits}bits")
        runs[bits] = run_dir
        say(f"{bits} bits: training (protocol {protocol}) -> {run_dir}")
        train_args = T.build_parser().parse_args(
            ["--data", data_dir, "--dataset", args.dataset, "--scale", args.scale, "--bits", str(bits),
             "--out", run_dir, "--seed", str(args.seed), "--batch-triplets", str(args.batch_triplets),
             "--epochs", *map(str, args.epochs)]
            + (["--weights", args.weights] if args.weights else [])
            + (["--iters", *map(str, args.iters)] if args.iters else [])
            + (["--quiet"] if args.quiet else []))
        train_args.tqn = {}
        record = T.train(train_args)
        results[bits] = {}
        for step in (1, 2):
            model = T.final_model(run_dir, step, record["plan"]["iterations"][step - 1])
            blobs = os.path.join(run_dir, "blobs", f"step{step}")
            X.extract(data_dir, args.dataset, args.scale, bits, model, blobs)
            results[bits][step] = E.evaluate(blobs, out=os.path.join(run_dir, "eval", f"step{step}"),
                                             num_classes=cfg["classes"])
            say(f"{bits} bits, step {step} ({'triplet' if step == 1 else 'TQN'}):\n"
                + E.summary(results[bits][step]))
    results_dir = os.path.join(out, "results")
    os.makedirs(results_dir, exist_ok=True)
    md, csv_rows = table3(results, bits_list, args.dataset, protocol)
    title = f"{args.dataset} / {args.scale} scale / protocol {protocol}"
    with open(os.path.join(results_dir, "table3.md"), "w") as f:
        f.write(f"# {title}\n\n{md}\n")
    with open(os.path.join(results_dir, "table3.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    plots(runs, results_dir, title)
    plot_pr_curves(results, results_dir, title)
    warnings = {f"{b} bits step {s}": results[b][s]["collapse_warnings"]
                for b in bits_list for s in (1, 2) if results[b][s]["collapse_warnings"]}
    summary = dict(dataset=args.dataset, scale=args.scale, protocol=protocol, bits=bits_list,
                   seconds=round(time.monotonic() - start, 1), table=csv_rows, warnings=warnings,
                   data_seed=manifest.get("seed"), triplet_seed=manifest.get("triplets", {}).get("seed"),
                   solver_seed=args.seed)
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print()
    print(f"{title}\n\n{md}\n")
    for key, ws in warnings.items():
        for w in ws:
            print(f"WARNING ({key}): {w}")
    say(f"done in {summary['seconds']:.0f} s; results in {os.path.relpath(results_dir)}")
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=sorted({d for d, _ in D.CONFIGS}))
    ap.add_argument("--scale", default="cpu", choices=sorted({s for _, s in D.CONFIGS}))
    ap.add_argument("--archive", help="CIFAR-10 archive (binary or python) or folder")
    ap.add_argument("--root", help="In-shop folder (Eval/, Img/) or an image folder")
    ap.add_argument("--protocol", help="split protocol (data_prep; e.g. dsh, cifar10-2)")
    ap.add_argument("--data", help="an existing data_prep folder (skips data preparation)")
    ap.add_argument("--data-args", nargs=argparse.REMAINDER, default=[],
                    help="further data_prep.build options (last on the line)")
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--weights", help="initial weights of step 1 (paper scale: ImageNet AlexNet)")
    ap.add_argument("--epochs", type=int, nargs=2, default=list(D.PAPER_TRAINING["epochs"]))
    ap.add_argument("--iters", type=int, nargs=2)
    ap.add_argument("--batch-triplets", type=int, default=D.PAPER_TRAINING["batch_triplets"])
    ap.add_argument("--seed", type=int, default=1, help="Caffe's solver seed (step 2: +1)")
    ap.add_argument("--data-seed", type=int, default=0, help="split and triplet seed")
    ap.add_argument("--out", help="output folder (default runs/main-<dataset>-<scale>)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        run(args)
        return 0
    except (T.TrainError, X.ExtractError, KeyError) as e:
        print(f"main_job: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
