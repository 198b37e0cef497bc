"""Replication of the TQN paper's CIFAR-10 artefacts: Table II, Table III, Fig. 1-2.

    python -m tools.replicate all --scale cpu --archive cifar-10-binary.tar.gz \
        --out bench/results/replication-cpu
    python -m tools.replicate table3 --scale paper --archive cifar-10-binary.tar.gz \
        --weights bvlc_alexnet.caffemodel --out runs/replication-paper

ARTEFACT is table2 (every method x 12/24/48 bits, binary and real-valued mAP), table3 (RF vs BC,
triplet vs TQN), figures (Fig. 1-2: both steps' loss curves, with the other loss monitored),
all, or study: TQN's step-2 settings (the paper's and the changes in STUDY_VARIANTS) and DNNH's
training settings (DNNH_STUDY_VARIANTS) compared on held-out training data (protocol
cifar10-holdout, never the test set). When OUT/results/study.json chose another setting than the
paper's, table2/table3/all add "TQN (held-out choice)" rows (step 2 only, from the same step-1
model) beside the paper-exact ones; when OUT/results/study_dnnh.json chose another than the
default, "DNNH (held-out choice)" rows. Every results folder records the cost of what its
figures rest on (summary.json "cost", study_cost.json), summed from each part's own record, so
a resumed run reports its whole cost. Every method trains once per code length on the official 50,000 training images and is
evaluated under both protocols, which share that training set and the 10,000 test queries:
`cifar10-2` (database = the training images) and `dsh` (database = the queries, each left out of
its own ranking). The `dsh` blobs are the `cifar10-2` query blobs against themselves, so each
model is extracted once.

--scale cpu: the CPU-scale net (cifar_quick) with a fixed iteration budget (`--iters` of TQN's two
steps; DSH, DNNH and DQN train for their sum), every method starting from one shared classification
warm start of the backbone (`--warm-start-iters`, tools/warm_start.py; 0 = from scratch, where the
paper's settings collapse). --scale paper: AlexNet on 227 crops of 256x256 images with `--weights`
(ImageNet) and the paper's 40 + 40 epochs, for users with a GPU (`--gpu 0`, passed to
`caffe train -gpu`).

Writes OUT/results/: table2_<protocol>.md/.csv, table3_<protocol>.md/.csv, fig1_step1_losses.png,
fig2_step2_losses.png, summary.json (every seed, parameter, wall time), logs/ (Caffe's logs).
Models, LMDBs and blobs stay in --work (default OUT/work/; never commit them). A rerun skips every finished
training, extraction and evaluation; an interrupted training resumes from its last snapshot.
"""
import argparse
import csv
import json
import os
import shutil
import sys
import time

from prototxt import description as D
from tools import baselines as B
from tools import compare
from tools import evaluate as E
from tools import extract as X
from tools import main_job
from tools import metrics as M
from tools import train as T
from tools import warm_start as W

PROTOCOLS = ("dsh", "cifar10-2")   # share the official training set and the test queries
DEEP = ("triplet", "tqn", "dsh", "dnnh", "dqn")
CLASSICAL = ("itq", "lsh")
NEEDS = {"table2": DEEP + CLASSICAL, "table3": ("triplet", "tqn"), "figures": ("triplet", "tqn")}
NEEDS["all"] = NEEDS["table2"]
NEEDS["study"] = ("tqn",)
SCALES = {
    # OURS: a budget that fits ~2 hours on 2 CPU cores for everything (see README).
    "cpu": dict(iters=(600, 300), warm_start_iters=1000, data_args=[],
                # OURS: DSH's loss grows with its margin m = 2 x bits; at the shared step-1 rate
                # (0.001) its linear codes diverged to NaN within 23 iterations at 24 bits
                # (training loss; no evaluation involved), so DSH trains at 0.0001 here.
                method_lr={"dsh": 1e-4}),
    # PAPER: 40 + 40 epochs, ImageNet weights, 256x256 images cropped to 227.
    "paper": dict(iters=None, warm_start_iters=0, data_args=["--resize", "256x256"]),
}


def say(text):
    print(f"[replicate] {text}", flush=True)


def prepare_data(args, work):
    """The cifar10-2 data folder (LMDBs) and the dsh split lists; checks they share the training
    set and the query set, row for row."""
    from data_prep import build
    folders = {}
    for protocol in PROTOCOLS:
        folder = os.path.join(work, "data", protocol)
        argv = ["--dataset", "cifar10", "--archive", args.archive, "--protocol", protocol,
                "--out", folder, "--seed", str(args.data_seed),
                "--epochs", str(max(1, args.triplet_epochs))] + SCALES[args.scale]["data_args"]
        if protocol == "dsh":
            argv.append("--splits-only")
        if build.main(argv) != 0:
            raise T.TrainError(f"data_prep.build failed for protocol {protocol}")
        folders[protocol] = folder
    for name in ("train", "query"):
        lists = [open(os.path.join(folders[p], "splits", p, f"{name}.txt")).read() for p in PROTOCOLS]
        if lists[0] != lists[1]:
            raise T.TrainError(f"the {name} lists of protocols {PROTOCOLS} differ; the shared "
                               f"training and extraction assume they are equal")
    return folders


def job_args(args, scale_cfg):
    """The Namespace main_job.run_method reads (one-step methods)."""
    iters = args.iters or scale_cfg["iters"]
    return argparse.Namespace(dataset="cifar10", scale=args.scale, seed=args.seed, batch_triplets=32,
                              epochs=list(D.PAPER_TRAINING["epochs"]), iters=list(iters) if iters else None,
                              weights=args.start_weights, quiet=args.quiet)


def train_tqn(args, data, bits, run, steps):
    targv = ["--data", data, "--dataset", "cifar10", "--scale", args.scale, "--bits", str(bits),
             "--out", run, "--seed", str(args.seed), "--steps", *map(str, steps)]
    iters = args.iters or SCALES[args.scale]["iters"]
    targv += ["--iters", *map(str, iters)] if iters else []
    targv += ["--weights", args.start_weights] if args.start_weights else []
    targv += ["--quiet"] if args.quiet else []
    targv += ["--gpu", args.gpu] if args.gpu else []
    targs = T.build_parser().parse_args(targv)
    targs.tqn = T.parse_tqn(args.tqn)
    return T.train(targs)


def models_of(args, data, bits, methods):
    """Trains what `methods` need at `bits`; {label: (method, model path, run folder, seconds)}."""
    out = {}
    root = os.path.join(args.work, "runs", f"{bits}bits")
    if "triplet" in methods or "tqn" in methods:
        run = os.path.join(root, "tqn")
        steps = [1, 2] if "tqn" in methods else [1]
        say(f"{bits} bits: TQN steps {steps} -> {run}")
        record = train_tqn(args, data, bits, run, steps)
        its = record["plan"]["iterations"]
        secs = [record["steps"].get(str(s), {}).get("seconds") for s in (1, 2)]
        out["triplet"] = ("tqn", T.final_model(run, 1, its[0]), run, secs[0])
        if "tqn" in methods:
            out["tqn"] = ("tqn", T.final_model(run, 2, its[1]), run, (secs[0] or 0) + (secs[1] or 0))
    for method in ("dsh", "dnnh", "dqn"):
        if method in methods and f"{method}@{bits}" not in args.skip:
            run = os.path.join(root, method)
            say(f"{bits} bits: {method.upper()} -> {run}")
            out[method] = train_one_step(args, method, data, bits, run)
    return out


def train_one_step(args, method, data, bits, run, lr=None, method_param=None):
    """Trains one-step `method` (dsh, dnnh, dqn) for TQN's two steps' iterations together, at
    `lr` (default: the scale's method_lr, else the step-1 rate), with `method_param`
    ({key: value}, D.TRAINING_OVERRIDES); returns (method, model, run folder, seconds)."""
    job = job_args(args, SCALES[args.scale])
    lr = lr if lr is not None else args.method_lr.get(method)
    targs = T.build_parser().parse_args(
        ["--method", method, "--data", data, "--dataset", "cifar10", "--scale", args.scale,
         "--bits", str(bits), "--out", run, "--seed", str(args.seed)]
        + (["--iters", *map(str, job.iters)] if job.iters else [])
        + (["--weights", job.weights] if job.weights else []) + (["--quiet"] if args.quiet else [])
        + (["--base-lr", str(lr), str(lr)] if lr is not None else [])
        + (["--method-param", *(f"{k}={v}" for k, v in method_param.items())] if method_param else [])
        + (["--gpu", args.gpu] if args.gpu else []))
    targs.tqn = {}
    record = T.train(targs)
    return (method, T.final_model(run, 1, record["plan"]["iterations"][0]), run,
            record["steps"]["1"]["seconds"])


class Cost:
    """Wall seconds of every part the artefact's figures rest on, as each was recorded when it
    ran (in this or an earlier invocation), so a resumed run still reports its whole cost; parts
    with no record (made by an older version) are listed, not guessed."""

    def __init__(self):
        self.seconds, self.unrecorded = {}, []

    def add(self, kind, seconds, what):
        if seconds is None:
            self.unrecorded.append(f"{kind}: {what}")
        else:
            self.seconds[kind] = round(self.seconds.get(kind, 0.0) + seconds, 1)

    def add_record(self, kind, run_dir, what, step=None):
        """The seconds a run folder's params.json recorded (of `step`, or the whole run)."""
        with open(os.path.join(run_dir, "params.json")) as f:
            record = json.load(f)
        self.add(kind, record["steps"][step].get("seconds") if step else record.get("seconds"), what)

    def summary(self):
        return dict(seconds=self.seconds, total_seconds=round(sum(self.seconds.values()), 1),
                    unrecorded=self.unrecorded)

    def line(self):
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return (f"cost as recorded: {sum(self.seconds.values()) / 60:.1f} min ({parts})"
                + (f"; {len(self.unrecorded)} parts without a record" if self.unrecorded else ""))


# The steps of a run folder a table row owns (default: all): triplet-only is TQN's step 1.
OWN_STEPS = {"triplet": ("1",), "tqn": ("2",)}


def held_out_choice(results, name, variants, default):
    """The setting results/<name> (written by the study artefact) chose, or None when there is
    no such file or it chose `default`; a file that is not a study's record is a ValueError
    naming it."""
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            chosen = json.load(f)["chosen"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a held-out study's record ({e!r}); delete it or rerun "
                         f"python -m tools.replicate study") from None
    if chosen not in variants:
        raise ValueError(f"{path} chose {chosen!r}, which is not one of {', '.join(variants)}; "
                         f"rerun python -m tools.replicate study")
    return None if chosen == default else chosen


def dsh_view(blobs_c2, folder):
    """The dsh protocol's blobs from cifar10-2's: its queries against themselves."""
    with open(os.path.join(blobs_c2, "meta.json")) as f:
        meta = json.load(f)
    meta_path = os.path.join(folder, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f).get("weights_sha256") == meta["weights_sha256"]:
                return folder
        shutil.rmtree(folder)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    os.symlink(os.path.join(os.path.abspath(blobs_c2), "query"), os.path.join(tmp, "query"))
    os.symlink("query", os.path.join(tmp, "database"))
    if os.path.exists(os.path.join(blobs_c2, "codebooks.npy")):
        shutil.copy(os.path.join(blobs_c2, "codebooks.npy"), tmp)
    meta.update(protocol="dsh", database_is_query=True, derived_from=os.path.abspath(blobs_c2),
                counts=dict(query=meta["counts"]["query"], database=meta["counts"]["query"]))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    os.rename(tmp, folder)
    return folder


def evaluate_cached(blobs, out):
    """tools.evaluate, skipped when out/metrics.json is of these blobs."""
    path = os.path.join(out, "metrics.json")
    with open(os.path.join(blobs, "meta.json")) as f:
        key = json.load(f)["weights_sha256"]
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("weights_sha256") == key:
            return old
    start = time.monotonic()
    result = E.evaluate(blobs, num_classes=10)
    result["weights_sha256"] = key
    result["seconds"] = round(time.monotonic() - start, 1)
    E._write(out, result)
    return result


def deep_row(label, method, bits, result, protocol, plan_iters, seconds, args):
    b = result["binary"]
    return dict(method={"triplet": "Triplet only", "tqn": "TQN (paper's settings)",
                        "tqn-recommended": f"TQN ({args.recommended_label})",
                        "dnnh-recommended": f"DNNH ({args.dnnh_label})"}.get(label, label.upper()),
                features="learned (PQ, ADC)" if method == "dqn" else "learned", bits=bits,
                map_tie_aware=b["map_tie_aware"], map_index_order=b["map_index_order"],
                precision_radius2=b.get("precision_radius2"), real_map=result["real"]["map"],
                protocol=protocol, net=D.config("cifar10", args.scale)["backbone"],
                iterations=plan_iters, seeds=f"data {args.data_seed}, solver {args.seed}"
                + (f"+{args.seed + 1}" if label == "tqn" else ""),
                wall_seconds=seconds, source="measured", warnings=len(result["collapse_warnings"]),
                code_health=json.dumps({k: result["code_health"][k] for k in
                                        ("distinct_codes", "mean_entropy", "top1_share")
                                        if k in result["code_health"]}))


def classical(args, blobs, bits, protocol, methods):
    """ITQ/LSH fitted on the triplet (step-1) net's features of the training set (cifar10-2's
    database), applied to this protocol's queries and database."""
    _, train = X.load_blobs(blobs["cifar10-2"], arrays=("features", "labels"))
    _, sets = X.load_blobs(blobs[protocol], arrays=("features", "labels"))
    same = protocol == "dsh"
    rows = []
    for method in methods:
        start = time.perf_counter()
        qb, dbb, info = B.run_baseline(method, bits, train["database"]["features"],
                                       train["database"]["labels"], sets["query"]["features"],
                                       sets["database"]["features"], seed=args.seed)
        m = M.evaluate_codes(qb, sets["query"]["labels"], dbb, sets["database"]["labels"], bits,
                             exclude_self=same, radii=(2,))
        rows.append(dict(method=method.upper(), features="triplet net's features (as many dims as bits)",
                         bits=bits, map_tie_aware=m["map_tie_aware"], map_index_order=m["map_index_order"],
                         precision_radius2=m["precision_radius2"], real_map=None, protocol=protocol,
                         net="(on the triplet net's features)", iterations=str(info.get("iterations", "")),
                         seeds=f"hashing {args.seed}", wall_seconds=round(time.perf_counter() - start, 1),
                         source="measured", warnings=0, code_health=""))
    return rows


def write_table(rows, path_md, title, bits_list, note=""):
    text = compare.markdown(rows, bits_list, title)
    real = [r for r in rows if r.get("real_map") is not None]
    if real:
        text += "\n| real-valued mAP (Euclidean) | " + " | ".join(f"{b} bits" for b in bits_list) + " |\n"
        text += "|---|" + "---|" * len(bits_list) + "\n"
        for name in dict.fromkeys(r["method"] for r in real):
            cells = [next((f"{r['real_map']:.3f}" for r in real if r["method"] == name and r["bits"] == b), "–")
                     for b in bits_list]
            text += f"| {name} | " + " | ".join(cells) + " |\n"
    text += note
    T.write_atomic(path_md, text)
    with open(path_md[:-3] + ".csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(path_md[:-3] + ".csv.tmp", path_md[:-3] + ".csv")
    return text


# Step-2 settings tried on held-out training data (protocol cifar10-holdout) by `study`: the
# paper's, and one change each (OURS). The best by held-out binary mAP becomes "recommended".
STUDY_VARIANTS = {
    "paper": dict(tqn={}, step2_lr=None),
    "beta=1": dict(tqn={"beta": 1.0}, step2_lr=None),
    "step2 lr/10": dict(tqn={}, step2_lr=1e-5),
}


def _step2_variant(args, data, bits, step1_run, run, variant):
    """TQN step 2 with a study variant, from `step1_run`'s step-1 model (linked, not retrained)."""
    iters = list(args.iters or SCALES[args.scale]["iters"])
    os.makedirs(run, exist_ok=True)
    src = T.final_model(step1_run, 1, iters[0])
    link = T.final_model(run, 1, iters[0])
    if not os.path.exists(link):
        os.symlink(src, link)
    cfg = D.config("cifar10", args.scale)
    lr2 = variant["step2_lr"] if variant["step2_lr"] is not None else cfg["base_lr"][1]
    targv = ["--data", data, "--dataset", "cifar10", "--scale", args.scale, "--bits", str(bits),
             "--out", run, "--seed", str(args.seed), "--steps", "2", "--iters", *map(str, iters),
             "--base-lr", str(cfg["base_lr"][0]), str(lr2)]
    targv += ["--weights", args.start_weights] if args.start_weights else []
    targv += ["--quiet"] if args.quiet else []
    targs = T.build_parser().parse_args(targv)
    targs.tqn = dict(variant["tqn"])
    record = T.train(targs)
    return T.final_model(run, 2, iters[1]), record


# DNNH settings tried on the same held-out data (OURS): our default (g's exact gradient, which is
# zero outside the band, so saturated sigmoids stop learning), the straight-through gradient,
# and a tenth of the learning rate. The best by held-out binary mAP becomes "DNNH (held-out choice)".
DNNH_STUDY_VARIANTS = {
    "default": dict(method_param={}, lr=None),
    "straight-through": dict(method_param={"gradient": "STRAIGHT_THROUGH"}, lr=None),
    "lr/10": dict(method_param={}, lr=1e-4),
}


def _score_held_out(args, data, bits, model, run, method, cost, what):
    """Extracts `model` on the held-out split, evaluates it, records the cost; the study row."""
    blobs = os.path.join(run, "blobs")
    meta = X.extract(data, "cifar10", args.scale, bits, model, blobs, method=method)
    r = evaluate_cached(blobs, os.path.join(run, "eval"))
    cost.add("extraction", meta.get("seconds"), what)
    cost.add("evaluation", r.get("seconds"), what)
    say(f"study, {what}: held-out BC mAP {r['binary']['map_tie_aware']:.4f}, "
        f"{r['code_health']['distinct_codes']} distinct codes")
    return _held_out_row(r)


def _held_out_row(r):
    return dict(bc_map=r["binary"]["map_tie_aware"], bc_map_index_order=r["binary"]["map_index_order"],
                rf_map=r["real"]["map"], warnings=r["collapse_warnings"],
                code_health={k: r["code_health"][k] for k in ("distinct_codes", "mean_entropy", "top1_share")})


def _write_study(results, name, what, out, bits_list, variants):
    """study<name>.md/.json: the held-out table of `out` ({variant: {bits: row}}) and the choice,
    the best sum of held-out BC mAP (tie-aware) over the widths."""
    best = max(out, key=lambda n: sum(out[n][b]["bc_map"] for b in bits_list))
    lines = [f"# {what} on held-out training data (protocol cifar10-holdout: train 45,000; "
             f"held-out queries 1,000 vs held-out database 4,000; never the test set)", "",
             "| setting | " + " | ".join(f"{b} bits: BC mAP [index order] / RF mAP / distinct codes"
                                       for b in bits_list) + " |",
             "|---|" + "---|" * len(bits_list)]
    for v in out:
        cells = [f"{out[v][b]['bc_map']:.3f} [{out[v][b]['bc_map_index_order']:.3f}] / "
                 f"{out[v][b]['rf_map']:.3f} / {out[v][b]['code_health']['distinct_codes']}"
                 + (" ⚠" if out[v][b]["warnings"] else "") for b in bits_list]
        lines.append(f"| {v}{' (chosen)' if v == best else ''} | " + " | ".join(cells) + " |")
    lines += ["", f"Chosen by the sum of held-out BC mAP over the widths: **{best}**. ⚠: the code-health "
              f"check warned (collapse)."]
    T.write_atomic(os.path.join(results, f"study{name}.md"), "\n".join(lines) + "\n")
    T.write_atomic(os.path.join(results, f"study{name}.json"),
                   json.dumps(dict(variants=variants, results=out, chosen=best, bits=bits_list),
                              indent=1) + "\n")
    return best


def study(args, results):
    """Chooses TQN's step-2 setting and DNNH's training setting on held-out training data: the
    45,000/5,000 split of the official training set (never the test set), its own warm start
    (and TQN step 1), then each variant; the best held-out binary mAP (tie-aware) is the
    recommendation (study.md/json for TQN, study_dnnh.md/json for DNNH)."""
    from data_prep import build
    data = os.path.join(args.work, "data", "cifar10-holdout")
    if build.main(["--dataset", "cifar10", "--archive", args.archive, "--protocol", "cifar10-holdout",
                   "--out", data, "--seed", str(args.data_seed),
                   "--epochs", str(max(1, args.triplet_epochs))] + SCALES[args.scale]["data_args"]) != 0:
        raise T.TrainError("data_prep.build failed for protocol cifar10-holdout")
    root = os.path.join(args.work, "study")
    args.start_weights = args.weights
    warm = args.warm_start_iters if args.warm_start_iters is not None else SCALES[args.scale]["warm_start_iters"]
    if warm:
        args.start_weights = W.warm_start(data, "cifar10", args.scale, warm, os.path.join(root, "warm_start"),
                                          seed=args.seed, quiet=args.quiet)
    chosen = {}
    cost = Cost()
    if warm:
        cost.add_record("warm start", os.path.join(root, "warm_start"), "study warm start")
    if "tqn" in args.study_methods:
        out = {}
        for bits in args.study_bits:
            step1 = os.path.join(root, f"{bits}bits", "step1")
            say(f"study, {bits} bits: step 1 on the 45,000 held-in images -> {step1}")
            train_tqn(args, data, bits, step1, [1])
            cost.add_record("training", step1, f"{bits} bits TQN step 1", step="1")
            for name, variant in STUDY_VARIANTS.items():
                run = os.path.join(root, f"{bits}bits", name.replace(" ", "_").replace("/", "_"))
                say(f"study, {bits} bits: step 2, {name}")
                model, record = _step2_variant(args, data, bits, step1, run, variant)
                cost.add("training", record["steps"]["2"].get("seconds"), f"{bits} bits TQN {name}")
                out.setdefault(name, {})[bits] = _score_held_out(args, data, bits, model, run, "tqn",
                                                                 cost, f"{bits} bits TQN {name}")
        chosen["tqn"] = _write_study(results, "", "TQN step 2 settings", out, args.study_bits,
                                     {k: dict(tqn=v["tqn"], step2_lr=v["step2_lr"])
                                      for k, v in STUDY_VARIANTS.items()})
    if "dnnh" in args.study_methods:
        out = {}
        for bits in args.dnnh_study_bits:
            for name, variant in DNNH_STUDY_VARIANTS.items():
                run = os.path.join(root, "dnnh", f"{bits}bits", name.replace("/", "_"))
                say(f"study, {bits} bits: DNNH, {name} -> {run}")
                _, model, _, seconds = train_one_step(args, "dnnh", data, bits, run, lr=variant["lr"],
                                                      method_param=variant["method_param"])
                cost.add("training", seconds, f"{bits} bits DNNH {name}")
                out.setdefault(name, {})[bits] = _score_held_out(args, data, bits, model, run, "dnnh",
                                                                 cost, f"{bits} bits DNNH {name}")
        chosen["dnnh"] = _write_study(results, "_dnnh", "DNNH training settings", out, args.dnnh_study_bits,
                                      DNNH_STUDY_VARIANTS)
    say(cost.line())
    T.write_atomic(os.path.join(results, "study_cost.json"), json.dumps(cost.summary(), indent=1) + "\n")
    return chosen


def run(args):
    start = time.monotonic()
    methods = NEEDS[args.artefact]
    if args.methods:  # e.g. to train some methods in a second process; rerun without to tabulate
        methods = tuple(m for m in methods if m in args.methods)
    scale_cfg = SCALES[args.scale]
    args.work = os.path.abspath(args.work or os.path.join(args.out, "work"))
    results = os.path.join(os.path.abspath(args.out), "results")
    os.makedirs(results, exist_ok=True)
    if args.scale == "paper" and not args.weights:
        raise T.TrainError("--scale paper needs --weights (ImageNet-pretrained AlexNet, "
                           "bvlc_alexnet.caffemodel)")
    iters = args.iters or scale_cfg["iters"]
    args.method_lr = dict(scale_cfg.get("method_lr", {}))
    for item in args.skip:
        method, _, bits = item.partition("@")
        if method not in ("dsh", "dnnh", "dqn") or not bits.isdigit():
            raise ValueError(f"--skip takes METHOD@BITS with METHOD one of dsh, dnnh, dqn "
                             f"(e.g. dnnh@48), got {item!r}")
    # Enough triplets for both steps (the lists wrap around otherwise); paper scale: its epochs.
    args.triplet_epochs = (-(-sum(iters) * 32 // 50000) if iters else sum(D.PAPER_TRAINING["epochs"]))
    if args.artefact == "study":
        chosen = study(args, results)
        say(f"study: chosen {chosen}; results in {results}")
        for name in ("study.md", "study_dnnh.md"):
            if os.path.exists(os.path.join(results, name)):
                print(open(os.path.join(results, name)).read())
        return dict(chosen=chosen)
    # The held-out choices (OUT/results/study*.json), checked before any work is done.
    recommended = held_out_choice(results, "study.json", STUDY_VARIANTS, "paper") \
        if "tqn" in methods else None
    dnnh_choice = held_out_choice(results, "study_dnnh.json", DNNH_STUDY_VARIANTS, "default") \
        if "dnnh" in methods else None
    folders = prepare_data(args, args.work)
    data = folders["cifar10-2"]
    args.start_weights = args.weights
    warm = args.warm_start_iters if args.warm_start_iters is not None else scale_cfg["warm_start_iters"]
    cost = Cost()
    if warm:
        say(f"warm start: {warm} iterations")
        args.start_weights = W.warm_start(data, "cifar10", args.scale, warm,
                                          os.path.join(args.work, "warm_start"), seed=args.seed,
                                          quiet=args.quiet)
        cost.add_record("warm start", os.path.join(args.work, "warm_start"), "warm start")
    rows = {p: [] for p in PROTOCOLS}
    evals = {p: {} for p in PROTOCOLS}
    runs = {}
    args.dnnh_label = f"held-out choice: {dnnh_choice}" if dnnh_choice else ""
    for bits in args.bits:
        models = models_of(args, data, bits, methods)
        if dnnh_choice and f"dnnh@{bits}" not in args.skip:
            run_dir = os.path.join(args.work, "runs", f"{bits}bits", "dnnh-recommended")
            say(f"{bits} bits: DNNH with the held-out choice ({dnnh_choice}) -> {run_dir}")
            variant = DNNH_STUDY_VARIANTS[dnnh_choice]
            models["dnnh-recommended"] = train_one_step(args, "dnnh", data, bits, run_dir, lr=variant["lr"],
                                                        method_param=variant["method_param"])
        if recommended:
            run_dir = os.path.join(args.work, "runs", f"{bits}bits", "tqn-recommended")
            say(f"{bits} bits: TQN step 2 with the held-out choice ({recommended}) -> {run_dir}")
            model, record = _step2_variant(args, data, bits, models["tqn"][2], run_dir,
                                           STUDY_VARIANTS[recommended])
            models["tqn-recommended"] = ("tqn", model, run_dir, round(
                (models["triplet"][3] or 0) + record["steps"]["2"]["seconds"], 1))
        runs[bits] = os.path.join(args.work, "runs", f"{bits}bits", "tqn")
        for label, (method, model, run_dir, seconds) in models.items():
            blobs = {"cifar10-2": os.path.join(args.work, "blobs", f"{bits}bits", label, "cifar10-2")}
            meta = X.extract(data, "cifar10", args.scale, bits, model, blobs["cifar10-2"], method=method)
            cost.add("extraction", meta.get("seconds"), f"{bits} bits {label}")
            with open(os.path.join(run_dir, "params.json")) as f:
                record = json.load(f)
            # triplet and tqn share one run folder: step 1 is triplet's cost, step 2 TQN's
            for step, info in record.get("steps", {}).items():
                if step in OWN_STEPS.get(label, (step,)):
                    cost.add("training", info.get("seconds"), f"{bits} bits {label} step {step}")
            blobs["dsh"] = dsh_view(blobs["cifar10-2"],
                                    os.path.join(args.work, "blobs", f"{bits}bits", label, "dsh"))
            its = "+".join(map(str, record["plan"]["iterations"][:1 if label == "triplet" else 2]))
            args.recommended_label = f"held-out choice: {recommended}" if recommended else ""
            for p in PROTOCOLS:
                result = evaluate_cached(blobs[p], os.path.join(args.work, "eval", p, f"{bits}bits", label))
                cost.add("evaluation", result.get("seconds"), f"{bits} bits {label} {p}")
                evals[p].setdefault(bits, {})[label] = result
                rows[p].append(deep_row(label, method, bits, result, p, its, seconds, args))
                say(f"{bits} bits, {label}, protocol {p}: BC mAP {result['binary']['map_tie_aware']:.4f}, "
                    f"RF mAP {result['real']['map']:.4f}")
            if label == "triplet" and any(m in methods for m in CLASSICAL):
                for p in PROTOCOLS:
                    rows[p] += classical(args, blobs, bits, p, [m for m in CLASSICAL if m in methods])
    summary = dict(artefact=args.artefact, scale=args.scale, bits=args.bits, iterations=iters,
                   recommended_step2=recommended, recommended_dnnh=dnnh_choice,
                   method_learning_rates=args.method_lr,
                   skipped=args.skip,
                   warm_start_iterations=warm, weights=args.weights, data_seed=args.data_seed,
                   solver_seed=args.seed, tqn_overrides=T.parse_tqn(args.tqn), protocols=list(PROTOCOLS),
                   seconds=None, cost=None, tables={})
    setting = (f"warm start {warm} iterations, " if warm else "from scratch, ") + \
        (f"TQN {iters[0]}+{iters[1]} iterations, others {sum(iters)}" if iters else "the paper's epochs")
    for p in PROTOCOLS:
        title = f"CIFAR-10 / {args.scale} scale / protocol {p} / {setting}: mAP"
        if args.artefact in ("table2", "all"):
            cited = compare.cited_rows(args.bits)
            for r in cited:
                r.update(real_map=None, code_health="")
            write_table(rows[p] + cited, os.path.join(results, f"table2_{p}.md"), title, args.bits)
            summary["tables"][f"table2_{p}"] = rows[p]
        if args.artefact in ("table3", "all") and {"triplet", "tqn"} <= set(methods):
            res = {b: {1: evals[p][b]["triplet"], 2: evals[p][b]["tqn"]} for b in args.bits}
            md, csv_rows = main_job.table3(res, args.bits, "cifar10", p)
            T.write_atomic(os.path.join(results, f"table3_{p}.md"), f"# {title}\n\n{md}\n")
            with open(os.path.join(results, f"table3_{p}.csv"), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
                w.writeheader()
                w.writerows(csv_rows)
            summary["tables"][f"table3_{p}"] = csv_rows
            if recommended:
                res = {b: {1: evals[p][b]["triplet"], 2: evals[p][b]["tqn-recommended"]} for b in args.bits}
                md, csv_rows = main_job.table3(res, args.bits, "cifar10", p)
                md = md.replace("with TQN", f"with TQN ({recommended})")
                T.write_atomic(os.path.join(results, f"table3_{p}_recommended.md"),
                               f"# {title}; TQN step 2: {recommended} (chosen on held-out training data)"
                               f"\n\n{md}\n")
                summary["tables"][f"table3_{p}_recommended"] = csv_rows
    if args.artefact in ("figures", "all", "table3") and "tqn" in methods:
        main_job.plots(runs, results, f"CIFAR-10 / {args.scale} / {setting}")
    logs = os.path.join(results, "logs")
    os.makedirs(logs, exist_ok=True)
    for root, _, files in os.walk(args.work):
        for name in files:
            if name.endswith(".log") and "logs" in root:
                rel = os.path.relpath(os.path.join(root, name), args.work).replace(os.sep, "__")
                shutil.copy(os.path.join(root, name), os.path.join(logs, rel))
    summary["seconds"] = round(time.monotonic() - start, 1)
    summary["cost"] = cost.summary()
    say(cost.line())
    T.write_atomic(os.path.join(results, "summary.json"), json.dumps(summary, indent=1) + "\n")
    say(f"done in {summary['seconds']:.0f} s (this invocation); results in {results}")
    for name in sorted(os.listdir(results)):
        if name.endswith(".md"):
            print(open(os.path.join(results, name)).read())
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artefact", choices=sorted(NEEDS))
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--archive", required=True, help="cifar-10-binary.tar.gz or cifar-10-python.tar.gz")
    ap.add_argument("--bits", type=int, nargs="+", default=[12, 24, 48])
    ap.add_argument("--iters", type=int, nargs=2, help="TQN's two steps (the others train their sum)")
    ap.add_argument("--warm-start-iters", type=int,
                    help="classification warm start of the backbone (cpu default 1000; 0: none)")
    ap.add_argument("--weights", help="initial weights (paper scale: ImageNet AlexNet)")
    ap.add_argument("--tqn", nargs="*", default=[], help="TQN overrides, e.g. beta=1 (default: paper)")
    ap.add_argument("--study-bits", type=int, nargs="+", default=[12],
                    help="widths of the held-out study (artefact study)")
    ap.add_argument("--study-methods", nargs="+", choices=("tqn", "dnnh"), default=["tqn", "dnnh"],
                    help="whose settings the study compares (artefact study)")
    ap.add_argument("--dnnh-study-bits", type=int, nargs="+", default=[12],
                    help="widths of DNNH's held-out study (artefact study)")
    ap.add_argument("--methods", nargs="+", choices=DEEP + CLASSICAL,
                    help="only these of the artefact's methods (the tables then hold only them)")
    ap.add_argument("--skip", nargs="+", default=[], metavar="METHOD@BITS",
                    help="leave these runs out (their table cells show -), e.g. dnnh@48")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="results go to OUT/results")
    ap.add_argument("--work", help="models, LMDBs and blobs (default OUT/work; keep it out of git)")
    ap.add_argument("--gpu", help="GPU id(s) for caffe train -gpu (the paper scale needs one)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        run(args)
        return 0
    except (T.TrainError, X.ExtractError, KeyError, ValueError) as e:
        print(f"replicate: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
