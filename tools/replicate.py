"""Replication of the TQN paper's CIFAR-10 artefacts: Table II, Table III, Fig. 1-2.

    python -m tools.replicate all --scale cpu --archive cifar-10-binary.tar.gz \
        --out bench/results/replication-cpu
    python -m tools.replicate table3 --scale paper --archive cifar-10-binary.tar.gz \
        --weights bvlc_alexnet.caffemodel --out runs/replication-paper

ARTEFACT is table2 (every method x 12/24/48 bits, binary and real-valued mAP), table3 (RF vs BC,
triplet vs TQN), figures (Fig. 1-2: both steps' loss curves, with the other loss monitored),
all, backbone (the features scale's backbone and input size, D.BACKBONE_STUDY, on held-out
training data), or study: TQN's step-2 settings and DNNH's training settings
(prototxt/description.py STUDY_VARIANTS, DNNH_STUDY_VARIANTS) compared on held-out training data
(protocol cifar10-holdout, never the test set). When OUT/results/study.json chose another setting
than the paper's, table2/table3/all add "TQN (held-out choice)" rows (step 2 only, from the same
step-1 model) beside the paper-exact ones; when OUT/results/study_dnnh.json chose another than
the default, "DNNH (held-out choice)" rows. Every results folder records the cost of what its
figures rest on (summary.json "cost", study_cost.json), summed from each part's own record, so a
resumed run reports its whole cost. Every method trains once per code length on the official
50,000 training images and is evaluated under both protocols of
prototxt/description.py REPLICATION, which share that training set and the 10,000 test queries:
`cifar10-2` (database = the training images) and `dsh` (database = the queries, each left out of
its own ranking). The `dsh` blobs are the `cifar10-2` query blobs against themselves, so each
model is extracted once.

--scale cpu: the CPU-scale net (cifar_quick) with a fixed iteration budget (`--iters` of TQN's two
steps; DSH, DNNH and DQN train for their sum), every method starting from one shared
classification warm start of the backbone (`--warm-start-iters`, tools/pipeline/warm_start.py;
0 = from scratch, where the paper's settings collapse). --scale paper: AlexNet on 227 crops of
256x256 images with `--weights` (ImageNet) and the paper's 40 + 40 epochs, for users with a GPU
(`--gpu 0`, passed to `caffe train -gpu`).

Writes OUT/results/: table2_<protocol>.md/.csv, table3_<protocol>.md/.csv, fig1_step1_losses.png,
fig2_step2_losses.png, summary.json (every seed, parameter, wall time), logs/ (Caffe's logs).
Models, LMDBs and blobs stay in --work (default OUT/work/; never commit them). A rerun skips
every finished training, extraction and evaluation; an interrupted training resumes from its
last snapshot.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Optional, Tuple

from data_prep.build import BuildSpec, build
from data_prep import features as F
from prototxt import description as D
from tools.pipeline import blobs as B
from tools.pipeline import evaluation, report
from tools.pipeline import features as PF
from tools.pipeline.errors import PipelineError, run_command
from tools.pipeline.models import score, train_models
from tools.pipeline.training import TrainSpec, final_model, tqn_override
from tools.pipeline.warm_start import warm_start

R = D.REPLICATION
DEEP = ("triplet", "tqn", "dsh", "dnnh", "dqn")
ONE_STEP = ("dsh", "dnnh", "dqn")
CLASSICAL = ("itq", "lsh")
# At the features scale the classical baselines are fitted on the backbone's own features (the
# deep methods' input), SDH and KSH (supervised) too.
CLASSICAL_FEATURES = ("lsh", "itq", "sdh", "ksh")
NEEDS = {"table2": DEEP + CLASSICAL, "table3": ("triplet", "tqn"), "figures": ("triplet", "tqn"),
         "all": DEEP + CLASSICAL, "study": ("tqn",), "backbone": ()}


@dataclasses.dataclass(frozen=True)
class ReplicateSpec:
    """Every setting of a replication, resolved."""
    artefact: str
    archive: str
    out: str
    scale: str = "cpu"
    bits: Tuple[int, ...] = R["bits"]
    iters: Optional[Tuple[int, int]] = None        # TQN's two steps (the others: their sum)
    warm_start_iters: Optional[int] = None         # None: the scale's
    weights: Optional[str] = None
    tqn: dict = dataclasses.field(default_factory=dict)   # TQN overrides (default: the paper's)
    study_bits: Tuple[int, ...] = (12,)
    study_methods: Tuple[str, ...] = ("tqn", "dnnh")
    dnnh_study_bits: Tuple[int, ...] = (12,)
    seeds: Optional[Tuple[int, ...]] = None        # features scale: every row's seeds (default the scale's)
    backbone_files: Optional[Tuple[str, str, Tuple[float, ...]]] = None   # features scale: another
                                                   # Caffe backbone (deploy, weights, BGR mean)
    methods: Optional[Tuple[str, ...]] = None      # only these of the artefact's methods
    skip: Tuple[str, ...] = ()                     # METHOD@BITS runs left out
    seed: int = 1
    data_seed: int = 0
    work: Optional[str] = None
    gpu: Optional[str] = None
    quiet: bool = False


def say(text):
    print(f"[replicate] {text}", flush=True)


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

    def summary(self):
        return dict(seconds=self.seconds, total_seconds=round(sum(self.seconds.values()), 1),
                    unrecorded=self.unrecorded)

    def line(self):
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return (f"cost as recorded: {sum(self.seconds.values()) / 60:.1f} min ({parts})"
                + (f"; {len(self.unrecorded)} parts without a record" if self.unrecorded else ""))


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


@dataclasses.dataclass
class Setting:
    """What every part of one replication shares, resolved once from its spec."""
    spec: ReplicateSpec
    work: str
    results: str
    iters: Optional[Tuple[int, int]]
    method_lr: dict
    warm_iters: int
    triplet_epochs: int          # enough triplets for both steps (the lists wrap otherwise)
    start_weights: Optional[str] = None   # every method's step-1 weights (the warm start's)
    tag: str = ""                # the seed's sub-folder of runs/, blobs/, eval/ ("" at one seed)

    @classmethod
    def of(cls, spec):
        scale = D.REPLICATION_SCALES[spec.scale]
        iters = spec.iters or scale["iters"]
        warm = spec.warm_start_iters if spec.warm_start_iters is not None else scale["warm_start_iters"]
        epochs = -(-sum(iters) * R["batch_triplets"] // R["train_size"]) if iters \
            else sum(D.PAPER_TRAINING["epochs"])
        return cls(spec, os.path.abspath(spec.work or os.path.join(spec.out, "work")),
                   os.path.join(os.path.abspath(spec.out), "results"), iters, dict(scale["method_lr"]),
                   warm, epochs, spec.weights)

    def data_spec(self, protocol, folder, **extra):
        resize = D.REPLICATION_SCALES[self.spec.scale]["data_args"].get("resize")
        return BuildSpec(dataset=R["dataset"], out=folder, archive=self.spec.archive, protocol=protocol,
                         seed=self.spec.data_seed, epochs=max(1, self.triplet_epochs),
                         batch_triplets=R["batch_triplets"], resize=resize, quiet=self.spec.quiet,
                         **extra)

    def path(self, kind, *parts):
        """work/<kind>[/<seed tag>]/parts..."""
        return os.path.join(self.work, kind, *([self.tag] if self.tag else []), *map(str, parts))

    def for_seed(self, seed):
        """This setting at seed `seed` (solver seeds and, at the features scale, the lists)."""
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, seed=seed), tag=f"seed{seed}")

    def train_spec(self, data, bits, out, method="tqn", steps=(1, 2), lr=None, tqn=None,
                   method_params=None):
        """A run at this replication's budget, seeds and start; lr: one rate for a one-step
        method, or TQN's two."""
        lr = self.method_lr.get(method) if lr is None else lr
        base_lr = None if lr is None else (tuple(lr) if isinstance(lr, (tuple, list)) else (lr, lr))
        if isinstance(data, dict):      # the features scale: the seed's own training data
            data = data[self.spec.seed]
        return TrainSpec(data=data, dataset=R["dataset"], scale=self.spec.scale, bits=bits, out=out,
                         method=method, steps=tuple(steps), weights=self.start_weights,
                         seed=self.spec.seed, iters=self.iters, base_lr=base_lr,
                         batch_triplets=R["batch_triplets"],
                         tqn=dict(self.spec.tqn if tqn is None else tqn),
                         method_params=dict(method_params or {}), gpu=self.spec.gpu,
                         quiet=self.spec.quiet)


def prepare_data(setting):
    """The cifar10-2 data folder (LMDBs) and the dsh split lists; checks they share the training
    set and the query set, row for row; {protocol: folder}."""
    folders = {}
    for protocol in R["protocols"]:
        folders[protocol] = os.path.join(setting.work, "data", protocol)
        build(setting.data_spec(protocol, folders[protocol], splits_only=protocol == "dsh"))
    with open(os.path.join(folders[R["protocols"][0]], "dataset.json")) as f:
        if json.load(f).get("repacked"):
            raise PipelineError(f"{setting.spec.archive}: its batches.meta class names are not CIFAR-10's: "
                                f"another data set in CIFAR-10's layout; the replication is of CIFAR-10 "
                                f"(use python -m tools.compare or the main job for it)")
    for name in ("train", "query"):
        lists = [open(os.path.join(folders[p], "splits", p, f"{name}.txt")).read() for p in R["protocols"]]
        if lists[0] != lists[1]:
            raise PipelineError(f"the {name} lists of protocols {R['protocols']} differ; the shared "
                                f"training and extraction assume they are equal")
    return folders


def backbone_choice(results):
    """{"backbone", "input_size"} chosen by the backbone artefact (results/backbone_study.json),
    or None when it has not run; a file that is not its record is a ValueError naming it."""
    path = os.path.join(results, "backbone_study.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            chosen = json.load(f)["chosen"]
        if chosen["backbone"] not in F.BACKBONE_MEANS or int(chosen["input_size"]) < 1:
            raise ValueError(f"unknown backbone {chosen['backbone']!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a backbone study's record ({e!r}); delete it or rerun "
                         f"python -m tools.replicate backbone") from None
    return chosen


def features_backbone(setting):
    """{"backbone", "input_size", "chosen"}: the features scale's backbone, the held-out choice of
    results/backbone_study.json when there is one (not with your own backbone), else the scale's."""
    scale = D.REPLICATION_SCALES[setting.spec.scale]
    chosen = None if setting.spec.backbone_files else backbone_choice(setting.results)
    source = chosen or scale
    return dict(backbone="custom" if setting.spec.backbone_files else source["backbone"],
                input_size=source["input_size"], chosen=bool(chosen))


def feature_data(setting, images, seeds):
    """The features scale: the backbone's features of the image build `images` (computed once,
    data_prep.features) and each seed's training data folder: (features folder, {seed: folder})."""
    scale = features_backbone(setting)
    own = setting.spec.backbone_files
    if scale["chosen"]:
        say(f"features: the held-out choice of results/backbone_study.json: {scale['backbone']} at "
            f"{scale['input_size']}x{scale['input_size']}")
    root = os.path.join(setting.work, "features")
    name = PF.features_name(scale["backbone"], scale["input_size"], own)
    say(f"features: {name} of {images} -> {os.path.join(root, name)}")
    features = PF.backbone_features(images, root, scale["backbone"], scale["input_size"], own=own,
                                    quiet=setting.spec.quiet)
    folders = {}
    for seed in seeds:
        folders[seed] = os.path.join(setting.work, "data", f"features-seed{seed}")
        F.training_data(features, images, folders[seed], seed, max(1, setting.triplet_epochs),
                        R["batch_triplets"], quiet=setting.spec.quiet)
    return features, folders


def start_from_warm_start(setting, data, folder, cost, what):
    """Trains (or finds) the warm start when the scale has one; every method starts from it."""
    if setting.warm_iters:
        say(f"{what}: {setting.warm_iters} iterations")
        setting.start_weights = warm_start(data, R["dataset"], setting.spec.scale, setting.warm_iters,
                                           folder, seed=setting.spec.seed, quiet=setting.spec.quiet)
        with open(os.path.join(folder, "params.json")) as f:
            cost.add("warm start", json.load(f).get("seconds"), what)


def step2_variant(setting, data, bits, step1_run, run, variant, label):
    """TQN step 2 with a study variant, from `step1_run`'s step-1 model (linked, not retrained)."""
    with open(os.path.join(step1_run, "params.json")) as f:
        its = json.load(f)["inputs"]["iterations"]
    os.makedirs(run, exist_ok=True)
    link = final_model(run, 1, its[0])
    if not os.path.exists(link):
        os.symlink(final_model(step1_run, 1, its[0]), link)
    lr1, lr2 = D.config(R["dataset"], setting.spec.scale)["base_lr"]
    lr = (lr1, variant["step2_lr"] if variant["step2_lr"] is not None else lr2)
    spec = setting.train_spec(data, bits, run, steps=(2,), lr=lr, tqn=variant["tqn"])
    return train_models(spec, labels={"tqn": label})[label]


def train_all(setting, data, bits, methods, choices):
    """Every model of one width: {label: Model} (labels: triplet, tqn, dsh, dnnh, dqn and the
    held-out choices' tqn-recommended, dnnh-recommended)."""
    root = setting.path("runs", f"{bits}bits")
    models = {}
    if "triplet" in methods or "tqn" in methods:
        steps = (1, 2) if "tqn" in methods else (1,)
        say(f"{bits} bits: TQN steps {list(steps)} -> {os.path.join(root, 'tqn')}")
        models.update(train_models(setting.train_spec(data, bits, os.path.join(root, "tqn"), steps=steps)))
    for method in ONE_STEP:
        if method in methods and f"{method}@{bits}" not in setting.spec.skip:
            say(f"{bits} bits: {method.upper()} -> {os.path.join(root, method)}")
            models.update(train_models(setting.train_spec(data, bits, os.path.join(root, method), method)))
    if choices.get("dnnh") and f"dnnh@{bits}" not in setting.spec.skip:
        variant = D.DNNH_STUDY_VARIANTS[choices["dnnh"]]
        run = os.path.join(root, "dnnh-recommended")
        say(f"{bits} bits: DNNH with the held-out choice ({choices['dnnh']}) -> {run}")
        models.update(train_models(setting.train_spec(data, bits, run, "dnnh", lr=variant["lr"],
                                                      method_params=variant["method_param"]),
                                   labels={"dnnh": "dnnh-recommended"}))
    if choices.get("tqn"):
        run = os.path.join(root, "tqn-recommended")
        say(f"{bits} bits: TQN step 2 with the held-out choice ({choices['tqn']}) -> {run}")
        models["tqn-recommended"] = step2_variant(setting, data, bits, models["tqn"].run, run,
                                                  D.STUDY_VARIANTS[choices["tqn"]], "tqn-recommended")
    return models


def score_both_protocols(setting, data, model, bits, cost):
    """Extracts a model once (cifar10-2), derives the dsh view, evaluates both:
    ({protocol: blobs folder}, {protocol: evaluation})."""
    base = setting.path("blobs", f"{bits}bits", model.label)
    if isinstance(data, dict):
        data = data[setting.spec.seed]
    blobs = {"cifar10-2": os.path.join(base, "cifar10-2"), "dsh": os.path.join(base, "dsh")}
    evals = {}
    meta, evals["cifar10-2"] = score(model, data, blobs["cifar10-2"],
                                     setting.path("eval", "cifar10-2", f"{bits}bits", model.label),
                                     R["classes"])
    cost.add("extraction", meta.get("seconds"), f"{bits} bits {model.label}")
    B.write_dsh_view(blobs["cifar10-2"], blobs["dsh"])
    evals["dsh"] = evaluation.evaluate(blobs["dsh"], num_classes=R["classes"],
                                       out=setting.path("eval", "dsh", f"{bits}bits", model.label))
    for p in R["protocols"]:
        cost.add("evaluation", evals[p].get("seconds"), f"{bits} bits {model.label} {p}")
        say(f"{bits} bits, {model.label}, protocol {p}: BC mAP {evals[p]['binary']['map_tie_aware']:.4f}, "
            f"RF mAP {evals[p]['real']['map']:.4f}")
        for w in evals[p]["collapse_warnings"]:
            say(f"  WARNING ({bits} bits, {model.label}, {p}): {w}")
    return blobs, evals


def classical_rows(setting, blobs, bits, protocol, methods):
    """ITQ/LSH fitted on the triplet (step-1) net's features of the training set (cifar10-2's
    database), applied to this protocol's queries and database."""
    train = B.read(blobs["cifar10-2"], arrays=("features", "labels")).sets["database"]
    sets = B.read(blobs[protocol], arrays=("features", "labels")).sets
    rows = []
    for method in methods:
        m, info = evaluation.evaluate_baseline(
            method, bits, (train["features"], train["labels"]),
            *((sets[s]["features"], sets[s]["labels"]) for s in B.SETS), setting.spec.seed,
            exclude_self=protocol == "dsh")
        rows.append(report.baseline_row(method, bits, m, info, protocol,
                                        "triplet net's features (as many dims as bits)",
                                        "(on the triplet net's features)", setting.spec.seed))
    return rows


def classical_feature_rows(setting, read, methods, cost):
    """The features scale: each classical baseline fitted on the backbone's features of the
    training set (originals; `read`: {"train", "query"}: (features, labels)), at every width, per
    protocol; rows at this setting's seed."""
    sets = {"cifar10-2": (read["query"], read["train"]), "dsh": (read["query"], read["query"])}
    rows = {p: [] for p in R["protocols"]}
    for bits in setting.spec.bits:
        for method in methods:
            for p in R["protocols"]:
                m, info = evaluation.evaluate_baseline(method, bits, read["train"], *sets[p], setting.spec.seed,
                                                       exclude_self=p == "dsh")
                cost.add("classical", info.get("wall_seconds"), f"{bits} bits {method} {p}")
                rows[p].append(report.baseline_row(method, bits, m, info, p, "backbone features",
                                                   "(on the backbone's features)", setting.spec.seed))
                say(f"{bits} bits, {method.upper()} (seed {setting.spec.seed}), protocol {p}: "
                    f"BC mAP {m['map_tie_aware']:.4f}")
    return rows


def row_name(label, choices):
    return {"triplet": "Triplet only", "tqn": "TQN (paper's settings)",
            "tqn-recommended": f"TQN (held-out choice: {choices.get('tqn')})",
            "dnnh-recommended": f"DNNH (held-out choice: {choices.get('dnnh')})"}.get(label, label.upper())


def model_row(setting, model, bits, result, protocol, choices, step1_seconds=None):
    """A table row; step1_seconds: what a step-2 variant's linked step 1 took."""
    seconds = model.training_seconds()
    if model.label == "tqn-recommended" and None not in (seconds, step1_seconds):
        seconds = round(seconds + step1_seconds, 1)
    s = setting.spec
    return report.model_row(row_name(model.label, choices), bits, result, protocol,
                            D.config(R["dataset"], s.scale)["backbone"], model.iterations,
                            f"data {s.data_seed}, solver {s.seed}" + (f"+{s.seed + 1}" if model.label == "tqn" else ""),
                            seconds)


def title(setting, protocol=None):
    s = setting
    budget = (f"TQN {s.iters[0]}+{s.iters[1]} iterations, others {sum(s.iters)}" if s.iters
              else "the paper's epochs")
    start = f"warm start {s.warm_iters} iterations, " if s.warm_iters else "from scratch, "
    if s.spec.scale == "features":
        backbone = features_backbone(s)
        seeds = s.spec.seeds or D.REPLICATION_SCALES["features"]["seeds"]
        start = (f"fixed {backbone['backbone']} features at "
                 f"{backbone['input_size']}x{backbone['input_size']}, mean ± sd over seeds "
                 f"{', '.join(map(str, seeds))}, ")
    if protocol is None:
        return f"CIFAR-10 / {s.spec.scale} / {start}{budget}"
    return f"CIFAR-10 / {s.spec.scale} scale / protocol {protocol} / {start}{budget}: mAP"


def write_tables(setting, methods, rows, evals, runs, choices):
    """The artefact's tables and figures in results/; {table name: rows} for summary.json."""
    artefact, bits = setting.spec.artefact, list(setting.spec.bits)
    tables = {}
    for p in R["protocols"]:
        if artefact in ("table2", "all"):
            path = os.path.join(setting.results, f"table2_{p}.md")
            table = rows[p] + report.cited_rows(bits, R["dataset"], p)
            report.write_table(path, report.method_table(table, bits, title(setting, p)), table)
            tables[f"table2_{p}"] = rows[p]
        if artefact in ("table3", "all") and {"triplet", "tqn"} <= set(methods):
            for step2, suffix in (("tqn", ""), ("tqn-recommended", "_recommended")):
                if step2 == "tqn-recommended" and not choices.get("tqn"):
                    continue
                res = {b: {1: evals[p][b]["triplet"], 2: evals[p][b][step2]} for b in bits}
                label = "TQN" if not suffix else f"TQN ({choices['tqn']})"
                md, csv_rows = report.table3(res, bits, R["dataset"], p, tqn_label=label)
                head = title(setting, p) + ("" if not suffix else
                                            f"; TQN step 2: {choices['tqn']} (chosen on held-out training data)")
                report.write_table(os.path.join(setting.results, f"table3_{p}{suffix}.md"),
                                   f"# {head}\n\n{md}\n", csv_rows)
                tables[f"table3_{p}{suffix}"] = csv_rows
    if artefact in ("figures", "all", "table3") and "tqn" in methods:
        report.plot_losses(runs, setting.results, title(setting))
    return tables


def copy_logs(work, results):
    """Caffe's logs of every run under work/, flattened into results/logs/."""
    logs = os.path.join(results, "logs")
    os.makedirs(logs, exist_ok=True)
    for root, _, files in os.walk(work):
        for name in files:
            if name.endswith(".log") and "logs" in root:
                rel = os.path.relpath(os.path.join(root, name), work).replace(os.sep, "__")
                shutil.copy(os.path.join(root, name), os.path.join(logs, rel))


def tabulate(setting, methods, choices, data, cost):
    """Trains, scores and tabulates every width: (rows, evaluations) per protocol, TQN runs."""
    rows = {p: [] for p in R["protocols"]}
    evals = {p: {} for p in R["protocols"]}
    runs = {}
    for bits in setting.spec.bits:
        models = train_all(setting, data, bits, methods, choices)
        step1 = models["triplet"].training_seconds() if "triplet" in models else None
        for label, model in models.items():
            cost.add("training", model.training_seconds(own=True), f"{bits} bits {label}")
            if label == "tqn":
                runs[bits] = model.run
            blobs, result = score_both_protocols(setting, data, model, bits, cost)
            for p in R["protocols"]:
                evals[p].setdefault(bits, {})[label] = result[p]
                rows[p].append(model_row(setting, model, bits, result[p], p, choices, step1))
                if label == "triplet" and setting.spec.scale != "features":
                    rows[p] += classical_rows(setting, blobs, bits, p, [m for m in CLASSICAL if m in methods])
    return rows, evals, runs


def tabulate_seeds(setting, methods, choices, images, cost):
    """The features scale: every model and classical baseline at each seed; rows are the seeds'
    mean ± sd (report.seed_mean_rows); the evaluations {protocol: {bits: {label: [one a seed]}}}
    and TQN runs {bits: [one a seed]} are every seed's. -> (rows, evaluations, TQN runs, seeds)."""
    seeds = list(setting.spec.seeds or D.REPLICATION_SCALES[setting.spec.scale]["seeds"])
    features, data = feature_data(setting, images, seeds)
    rows = {p: [] for p in R["protocols"]}
    evals = {p: {} for p in R["protocols"]}
    runs = {}
    read = {n: F.read_feature_lmdb(os.path.join(features, "lmdb", n)) for n in ("train", "query")}
    for seed in seeds:
        sub = setting.for_seed(seed)
        say(f"seed {seed} ({seeds.index(seed) + 1} of {len(seeds)})")
        r, e, seed_runs = tabulate(sub, methods, choices, data, cost)
        wanted = setting.spec.methods
        classical = classical_feature_rows(sub, read, [m for m in CLASSICAL_FEATURES
                                                           if not wanted or m in wanted], cost)
        for p in R["protocols"]:
            rows[p] += r[p] + classical[p]
            for bits, by_label in e[p].items():
                for label, result in by_label.items():
                    evals[p].setdefault(bits, {}).setdefault(label, []).append(result)
        for bits, run_folder in seed_runs.items():
            runs.setdefault(bits, []).append(run_folder)
    return {p: report.seed_mean_rows(rows[p]) for p in rows}, evals, runs, seeds


def run(spec):
    """The artefact of `spec`; returns the summary (study: the choices)."""
    start = time.monotonic()
    setting = Setting.of(spec)
    os.makedirs(setting.results, exist_ok=True)
    if spec.scale == "paper" and not spec.weights:
        raise PipelineError("--scale paper needs --weights (ImageNet-pretrained AlexNet, "
                            "bvlc_alexnet.caffemodel)")
    for item in spec.skip:
        method, _, bits = item.partition("@")
        if method not in ONE_STEP or not bits.isdigit():
            raise ValueError(f"--skip takes METHOD@BITS with METHOD one of {', '.join(ONE_STEP)} "
                             f"(e.g. dnnh@48), got {item!r}")
    if spec.artefact == "study":
        return dict(chosen=study(setting))
    if spec.artefact == "backbone":
        return backbone_study(setting)
    methods = tuple(m for m in NEEDS[spec.artefact] if not spec.methods or m in spec.methods)
    # The held-out choices (OUT/results/study*.json), checked before any work is done.
    choices = dict(
        tqn=held_out_choice(setting.results, "study.json", D.STUDY_VARIANTS, D.STUDY_DEFAULT)
        if "tqn" in methods else None,
        dnnh=held_out_choice(setting.results, "study_dnnh.json", D.DNNH_STUDY_VARIANTS,
                             D.DNNH_STUDY_DEFAULT) if "dnnh" in methods else None)
    data = prepare_data(setting)["cifar10-2"]
    cost = Cost()
    if spec.scale == "features":
        rows, evals, runs, seeds = tabulate_seeds(setting, methods, choices, data, cost)
    else:
        start_from_warm_start(setting, data, os.path.join(setting.work, "warm_start"), cost, "warm start")
        rows, evals, runs = tabulate(setting, methods, choices, data, cost)
        seeds = [spec.seed]
    tables = write_tables(setting, methods, rows, evals, runs, choices)
    copy_logs(setting.work, setting.results)
    summary = dict(artefact=spec.artefact, scale=spec.scale, bits=list(spec.bits), iterations=setting.iters,
                   recommended_step2=choices["tqn"], recommended_dnnh=choices["dnnh"],
                   method_learning_rates=setting.method_lr, skipped=list(spec.skip),
                   warm_start_iterations=setting.warm_iters, weights=spec.weights,
                   data_seed=spec.data_seed, solver_seed=spec.seed, seeds=seeds, tqn_overrides=spec.tqn,
                   protocols=list(R["protocols"]), seconds=round(time.monotonic() - start, 1),
                   cost=cost.summary(), tables=tables)
    say(cost.line())
    report.write_json(os.path.join(setting.results, "summary.json"), summary)
    say(f"done in {summary['seconds']:.0f} s (this invocation); results in {setting.results}")
    for name in sorted(os.listdir(setting.results)):
        if name.endswith(".md"):
            print(open(os.path.join(setting.results, name)).read())
    return summary


# ---------------------------------------------------------------------------------------------
# The held-out study

def held_out_row(r):
    return dict(bc_map=r["binary"]["map_tie_aware"], bc_map_index_order=r["binary"]["map_index_order"],
                rf_map=r["real"]["map"], warnings=r["collapse_warnings"],
                code_health={k: r["code_health"][k] for k in ("distinct_codes", "mean_entropy", "top1_share")})


def score_held_out(data, model, cost, what):
    """Extracts `model` on the held-out split, evaluates it, records the cost; the study row."""
    meta, r = score(model, data, os.path.join(model.run, "blobs"), os.path.join(model.run, "eval"))
    cost.add("extraction", meta.get("seconds"), what)
    cost.add("evaluation", r.get("seconds"), what)
    say(f"study, {what}: held-out BC mAP {r['binary']['map_tie_aware']:.4f}, "
        f"{r['code_health']['distinct_codes']} distinct codes")
    for w in r["collapse_warnings"]:
        say(f"  WARNING (study, {what}): {w}")
    return held_out_row(r)


def write_study(results, name, what, out, bits_list, variants):
    """study<name>.md/.json: the held-out table of `out` ({variant: {bits: row}}) and the choice,
    the best sum of held-out BC mAP (tie-aware) over the widths."""
    best = max(out, key=lambda n: sum(out[n][b]["bc_map"] for b in bits_list))
    lines = [f"# {what} on held-out training data (protocol {R['held_out_protocol']}: train 45,000; "
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
    report.write_table(os.path.join(results, f"study{name}.md"), "\n".join(lines) + "\n",
                       [dict(setting=v, bits=b, **{k: out[v][b][k] for k in ("bc_map", "bc_map_index_order",
                                                                          "rf_map")})
                        for v in out for b in bits_list])
    report.write_json(os.path.join(results, f"study{name}.json"),
                      dict(variants=variants, results=out, chosen=best, bits=list(bits_list)))
    return best


def held_out_feature_data(setting, held_out_images):
    """The features scale's held-out training data (seed spec.seed): the held-out build's rows
    taken from the official build's features (data_prep.features.derive), no second extraction."""
    official = prepare_data(setting)["cifar10-2"]
    features, _ = feature_data(setting, official, [])
    derived = features + "-" + R["held_out_protocol"]
    F.derive(features, official, held_out_images, derived)
    folder = os.path.join(setting.work, "data", f"features-{R['held_out_protocol']}-seed{setting.spec.seed}")
    F.training_data(derived, held_out_images, folder, setting.spec.seed, max(1, setting.triplet_epochs),
                    R["batch_triplets"], quiet=setting.spec.quiet)
    return folder


def study(setting):
    """Chooses TQN's step-2 setting and DNNH's training setting on held-out training data: the
    45,000/5,000 split of the official training set (never the test set), its own warm start
    (and TQN step 1), then each variant; the best held-out binary mAP (tie-aware) is the
    recommendation (study.md/json for TQN, study_dnnh.md/json for DNNH)."""
    spec = setting.spec
    data = os.path.join(setting.work, "data", R["held_out_protocol"])
    build(setting.data_spec(R["held_out_protocol"], data))
    if spec.scale == "features":
        data = held_out_feature_data(setting, data)
    root = os.path.join(setting.work, "study")
    cost = Cost()
    start_from_warm_start(setting, data, os.path.join(root, "warm_start"), cost, "study warm start")
    chosen = {}
    if "tqn" in spec.study_methods:
        out = {}
        for bits in spec.study_bits:
            step1 = os.path.join(root, f"{bits}bits", "step1")
            say(f"study, {bits} bits: step 1 on the 45,000 held-in images -> {step1}")
            model = train_models(setting.train_spec(data, bits, step1, steps=(1,)))["triplet"]
            cost.add("training", model.training_seconds(own=True), f"{bits} bits TQN step 1")
            for name, variant in D.STUDY_VARIANTS.items():
                run = os.path.join(root, f"{bits}bits", name.replace(" ", "_").replace("/", "_"))
                say(f"study, {bits} bits: step 2, {name}")
                model = step2_variant(setting, data, bits, step1, run, variant, "tqn")
                cost.add("training", model.training_seconds(own=True), f"{bits} bits TQN {name}")
                out.setdefault(name, {})[bits] = score_held_out(data, model, cost, f"{bits} bits TQN {name}")
        chosen["tqn"] = write_study(setting.results, "", "TQN step 2 settings", out, spec.study_bits,
                                    D.STUDY_VARIANTS)
    if "dnnh" in spec.study_methods:
        out = {}
        for bits in spec.dnnh_study_bits:
            for name, variant in D.DNNH_STUDY_VARIANTS.items():
                run = os.path.join(root, "dnnh", f"{bits}bits", name.replace("/", "_"))
                say(f"study, {bits} bits: DNNH, {name} -> {run}")
                model = train_models(setting.train_spec(data, bits, run, "dnnh", lr=variant["lr"],
                                                        method_params=variant["method_param"]))["dnnh"]
                cost.add("training", model.training_seconds(own=True), f"{bits} bits DNNH {name}")
                out.setdefault(name, {})[bits] = score_held_out(data, model, cost, f"{bits} bits DNNH {name}")
        chosen["dnnh"] = write_study(setting.results, "_dnnh", "DNNH training settings", out,
                                     spec.dnnh_study_bits, D.DNNH_STUDY_VARIANTS)
    say(cost.line())
    report.write_json(os.path.join(setting.results, "study_cost.json"), cost.summary())
    say(f"study: chosen {chosen}; results in {setting.results}")
    for name in ("study.md", "study_dnnh.md"):
        if os.path.exists(os.path.join(setting.results, name)):
            print(open(os.path.join(setting.results, name)).read())
    return chosen


# ---------------------------------------------------------------------------------------------
# The features scale's backbone and input size, chosen on held-out training data

def backbone_candidate(setting, data, name, size, rows, folder):
    """One candidate's held-out figure (D.BACKBONE_STUDY), computed once (folder/result.json)."""
    import numpy as np
    from data_prep.outputs import completed, mark_complete, sha256_bytes, sha256_file
    study = D.BACKBONE_STUDY
    inputs = dict(backbone=name, input_size=size, train_rows_sha=sha256_bytes(np.asarray(rows).tobytes()),
                  images_manifest_sha256=sha256_file(os.path.join(data, "dataset.json")),
                  bits=study["bits"], method=study["method"], seed=setting.spec.seed)
    marker = os.path.join(folder, "result.json")
    done = completed(marker, inputs)
    if done is not None:
        return done
    spec = F.backbone_spec(data, folder, name, size, own=setting.spec.backbone_files)
    with open(os.path.join(data, "dataset.json")) as f:
        counts = json.load(f)["counts"]
    say(f"backbone study: {name} at {size}x{size} on {len(rows)} held-in + {counts['query']} + "
        f"{counts['database']} held-out images")
    net = F.logged_net(os.path.join(folder, "caffe.log"))
    parts = {"train": F.features_of_rows(spec, "train", rows, net),
             "query": F.features_of_rows(spec, "query", range(counts["query"]), net),
             "database": F.features_of_rows(spec, "database", range(counts["database"]), net)}
    images = sum(len(v[1]) for v in parts.values())
    ms = 1000 * sum(v[2] * len(v[1]) for v in parts.values()) / images
    m, info = evaluation.evaluate_baseline(study["method"], study["bits"], parts["train"][:2],
                                           parts["query"][:2], parts["database"][:2], setting.spec.seed,
                                           exclude_self=False)
    os.makedirs(folder, exist_ok=True)
    return mark_complete(marker, inputs, bc_map=m["map_tie_aware"], ms_per_image=round(ms, 2),
                         dimension=int(parts["train"][0].shape[1]), images=images)


def choose_backbone(results, tolerance):
    """{(name, size): result} -> (name, size): the backbone of the best held-out mAP, at its
    cheapest input size within `tolerance` of that backbone's best."""
    best = max(results, key=lambda k: results[k]["bc_map"])
    sizes = [k for k in results if k[0] == best[0] and results[k]["bc_map"] >= results[best]["bc_map"] - tolerance]
    return min(sizes, key=lambda k: results[k]["ms_per_image"])


def backbone_study(setting):
    """Compares D.BACKBONE_STUDY's candidates on cifar10-holdout (never the test set); writes
    results/backbone_study.md/.json with the choice."""
    import numpy as np
    study = D.BACKBONE_STUDY
    data = os.path.join(setting.work, "data", R["held_out_protocol"])
    build(setting.data_spec(R["held_out_protocol"], data))
    with open(os.path.join(data, "dataset.json")) as f:
        n_train = json.load(f)["counts"]["train"]
    rng = np.random.default_rng([setting.spec.data_seed, 12])
    rows = np.sort(rng.choice(n_train, size=min(study["train_sample"], n_train), replace=False))
    candidates = [tuple(c) for c in study["candidates"]]
    if setting.spec.backbone_files:
        candidates = [("custom", size) for size in sorted({c[1] for c in candidates})]
    results = {}
    for name, size in candidates:
        r = backbone_candidate(setting, data, name, size, rows,
                               os.path.join(setting.work, "backbone_study", f"{name}-{size}"))
        results[(name, size)] = r
        say(f"backbone study: {name} at {size}: held-out {study['method'].upper()}-{study['bits']} BC mAP "
            f"{r['bc_map']:.4f}, {r['ms_per_image']:.1f} ms an image, {r['dimension']}-d")
    chosen = choose_backbone(results, study["tolerance"])
    lines = [f"# Backbone and input size on held-out training data (protocol {R['held_out_protocol']}: "
             f"{study['method'].upper()} at {study['bits']} bits fitted on {len(rows)} held-in images, "
             f"1,000 held-out queries vs 4,000 held-out database images; never the test set)", "",
             "| backbone | input | dims | held-out BC mAP | ms an image (forward, this run) |", "|---|---|---|---|---|"]
    for (name, size), r in results.items():
        mark = " (chosen)" if (name, size) == chosen else ""
        lines.append(f"| {name}{mark} | {size}x{size} | {r['dimension']} | {r['bc_map']:.4f} | {r['ms_per_image']:.1f} |")
    lines += ["", f"Rule: the backbone of the best held-out mAP, at its cheapest input size within "
              f"{study['tolerance']} of its best: **{chosen[0]} at {chosen[1]}x{chosen[1]}**."]
    rows_out = [dict(backbone=n, input_size=s, **{k: r[k] for k in ("bc_map", "ms_per_image", "dimension")})
                for (n, s), r in results.items()]
    report.write_table(os.path.join(setting.results, "backbone_study.md"), "\n".join(lines) + "\n", rows_out)
    summary = dict(candidates=rows_out, chosen=dict(backbone=chosen[0], input_size=chosen[1]),
                   rule=dict(study), train_rows=len(rows), data_seed=setting.spec.data_seed,
                   seed=setting.spec.seed)
    report.write_json(os.path.join(setting.results, "backbone_study.json"), summary)
    print("\n".join(lines))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.replicate", description=__doc__.split("\n\n")[0])
    ap.add_argument("artefact", choices=sorted(NEEDS))
    ap.add_argument("--scale", choices=sorted(D.REPLICATION_SCALES), default="cpu")
    ap.add_argument("--archive", required=True, help="cifar-10-binary.tar.gz or cifar-10-python.tar.gz")
    ap.add_argument("--bits", type=int, nargs="+", default=list(R["bits"]))
    ap.add_argument("--iters", type=int, nargs=2, help="TQN's two steps (the others train their sum)")
    ap.add_argument("--warm-start-iters", type=int,
                    help="classification warm start of the backbone (cpu default 1000; 0: none)")
    ap.add_argument("--weights", help="initial weights (paper scale: ImageNet AlexNet)")
    ap.add_argument("--tqn", nargs="*", type=tqn_override, default=[], metavar="NAME=VALUE",
                    help="TQN overrides, e.g. beta=1 (default: the paper's)")
    ap.add_argument("--study-bits", type=int, nargs="+", default=[12],
                    help="widths of the held-out study (artefact study)")
    ap.add_argument("--study-methods", nargs="+", choices=("tqn", "dnnh"), default=["tqn", "dnnh"],
                    help="whose settings the study compares (artefact study)")
    ap.add_argument("--dnnh-study-bits", type=int, nargs="+", default=[12],
                    help="widths of DNNH's held-out study (artefact study)")
    ap.add_argument("--methods", nargs="+", choices=DEEP + CLASSICAL_FEATURES,
                    help="only these of the artefact's methods (the tables then hold only them)")
    ap.add_argument("--skip", nargs="+", default=[], metavar="METHOD@BITS",
                    help="leave these runs out (their table cells show -), e.g. dnnh@48")
    ap.add_argument("--backbone-deploy", help="features scale: another Caffe backbone's deploy.prototxt "
                                             "(with --backbone-weights; default: the scale's)")
    ap.add_argument("--backbone-weights")
    ap.add_argument("--backbone-mean", default="104,117,123", help="its BGR mean (default 104,117,123)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+",
                    help="features scale: the seeds of every row (default 1 2 3); each seeds the lists, "
                         "the mirror choices and Caffe")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="results go to OUT/results")
    ap.add_argument("--work", help="models, LMDBs and blobs (default OUT/work; keep it out of git)")
    ap.add_argument("--gpu", help="GPU id(s) for caffe train -gpu (the paper scale needs one)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if bool(a.backbone_deploy) != bool(a.backbone_weights):
        ap.error("--backbone-deploy and --backbone-weights go together")
    own = (os.path.abspath(a.backbone_deploy), os.path.abspath(a.backbone_weights),
           tuple(float(v) for v in a.backbone_mean.split(","))) if a.backbone_deploy else None
    spec = ReplicateSpec(artefact=a.artefact, backbone_files=own, archive=a.archive, out=a.out, scale=a.scale,
                         bits=tuple(a.bits), iters=tuple(a.iters) if a.iters else None,
                         warm_start_iters=a.warm_start_iters, weights=a.weights, tqn=dict(a.tqn),
                         study_bits=tuple(a.study_bits), study_methods=tuple(a.study_methods),
                         dnnh_study_bits=tuple(a.dnnh_study_bits),
                         methods=tuple(a.methods) if a.methods else None, skip=tuple(a.skip),
                         seed=a.seed, seeds=tuple(a.seeds) if a.seeds else None, data_seed=a.data_seed, work=a.work, gpu=a.gpu, quiet=a.quiet)
    return run_command("replicate", lambda: run(spec))


if __name__ == "__main__":
    sys.exit(main())
