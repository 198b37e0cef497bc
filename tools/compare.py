"""Methods x code widths on one data set, one protocol, one metric code: a Table II-style table.

    python -m tools.compare                         # digits: every method at 12/24/48 bits
    python -m tools.compare --dataset cifar10 --data DIR --iters 2000 1000 --bits 48

Deep rows: TQN (step 2) and triplet-only (step 1) from one TQN run per width, and DSH, DNNH and
DQN trained on the same data, backbone and budget (TQN's two steps' iterations together), each
extracted and evaluated by the same code (DQN: ADC ranking of its product-quantizer codes).
Classical rows (LSH, ITQ, SDH, KSH; tools/hashing/baselines.py) hash the same split's raw pixels (on
a features-scale data folder: the backbone's features) or the trained step-1 net's features
(`--baseline-features`), scored by the same metric code. The
paper's own Table II figures (MLH, BRE, KSH, CNNH, ...) appear only for CIFAR-10, marked
"cited". Writes <out>/results/table2.md and table2.csv; every row names its protocol, net,
iterations, seeds and wall time.
"""
import argparse
import dataclasses
import os
import sys
from typing import Optional, Tuple

import numpy as np

from data_prep import features as F
from data_prep.build import BuildSpec, add_image_source_arguments, build, image_source_fields
from data_prep.lmdb_io import read_image_lmdb
from prototxt import description as D
from tools.hashing import baselines
from tools.pipeline import blobs as B
from tools.pipeline import report
from tools.pipeline.errors import run_command
from tools.pipeline.evaluation import evaluate_baseline
from tools.pipeline.models import score, train_models
from tools.pipeline.training import TrainSpec, load_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEP = ("tqn", "triplet")                # one TQN run: step 2 and step 1
ONE_STEP = ("dsh", "dnnh", "dqn")        # one step of TQN's two steps' budget
CLASSICAL = ("lsh", "itq", "sdh", "ksh")
LABELS = {"tqn": "TQN", "triplet": "Triplet only"}


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    dataset: str = "digits"
    scale: str = "cpu"
    methods: Tuple[str, ...] = DEEP + ONE_STEP + CLASSICAL
    bits: Optional[Tuple[int, ...]] = None
    baseline_features: str = "raw"      # raw pixels, or "step1": the step-1 net's features
    out: Optional[str] = None
    data: Optional[str] = None          # an existing data_prep folder
    build: Optional[BuildSpec] = None   # else: how to prepare the data
    weights: Optional[str] = None
    epochs: Tuple[int, int] = D.PAPER_TRAINING["epochs"]
    iters: Optional[Tuple[int, int]] = None
    seed: int = 1                       # solver seed (step 2: +1) and hashing seed


def raw_pixels(data_dir, manifest=None):
    """{set: (features float32 [n, H*W*C] in [0, 1], labels)} from the data set's LMDBs; for a
    features-scale data folder (data_prep.features.training_data) the backbone's features of
    the originals instead (no mirrors), what the deep methods' heads see."""
    out = {}
    backbone = (manifest or {}).get("features")
    if backbone:
        for s in ("train", "query", "database"):
            folder = backbone["folder"] if s == "train" else data_dir   # train: the originals only
            out[s] = F.read_feature_lmdb(os.path.realpath(os.path.join(folder, "lmdb", s)))
        return out
    for s in ("train", "query", "database"):
        _, images, labels, _ = read_image_lmdb(os.path.realpath(os.path.join(data_dir, "lmdb", s)))
        out[s] = (baselines.raw_pixel_features(np.stack(images), max_value=255), labels)
    return out


def deep_rows(spec, out, data, bits, protocol, classes):
    """Rows of the deep methods at one width, and the TQN run's step-1 blobs folder."""
    cfg = D.config(spec.dataset, spec.scale, classes)
    train = TrainSpec(data=data, dataset=spec.dataset, scale=spec.scale, bits=bits, out="",
                      weights=spec.weights, seed=spec.seed, epochs=spec.epochs, iters=spec.iters,
                      quiet=True)
    jobs = []
    if any(m in spec.methods for m in DEEP) or spec.baseline_features == "step1":
        jobs.append(dataclasses.replace(train, out=os.path.join(out, f"{bits}bits")))
    jobs += [dataclasses.replace(train, method=m, out=os.path.join(out, f"{bits}bits", m))
             for m in ONE_STEP if m in spec.methods]
    rows, step1_blobs = [], None
    for job in jobs:
        for label, model in train_models(job).items():
            step = {"triplet": "step1", "tqn": "step2"}.get(label, "")
            blobs = os.path.join(model.run, "blobs", step)
            _, result = score(model, data, blobs, os.path.join(model.run, "eval", step), classes)
            for w in result["collapse_warnings"]:   # as evaluation.summary prints them
                print(f"  WARNING ({bits} bits, {label}): {w}", flush=True)
            if label == "triplet":
                step1_blobs = blobs
            if label in spec.methods:
                plan = model.plan
                seeds = plan["solver_seeds"][:2 if label == "tqn" else 1]
                rows.append(report.model_row(
                    LABELS.get(label, label.upper()), bits, result, protocol, cfg["backbone"],
                    model.iterations, f"data {plan['data_seed']}, triplets {plan['triplet_seed']}, "
                    f"solver {','.join(map(str, seeds))}",
                    model.training_seconds()))
    return rows, step1_blobs


def classical_rows(spec, bits, protocol, pixels, step1_blobs, same, backbone=None):
    if spec.baseline_features == "raw" and backbone:
        sets, net, label = pixels, "none (backbone features)", f"{backbone} features"
    elif spec.baseline_features == "raw":
        sets, net, label = pixels, "none (raw pixels)", "raw pixels"
    else:
        blobs = B.read(step1_blobs, arrays=("features", "labels")).sets
        # The database doubles as the training set (digits, cifar10-2) or is the query set
        # (dsh: then fitting on it is transductive, as DSH's own test-set protocol).
        sets = {s: (blobs[s]["features"], blobs[s]["labels"]) for s in ("query", "database")}
        sets["train"] = sets["database"]
        net, label = "step-1 net's latent features", f"step-1 features ({bits} dims)"
    rows = []
    for method in (m for m in CLASSICAL if m in spec.methods):
        try:
            m, info = evaluate_baseline(method, bits, sets["train"], sets["query"], sets["database"],
                                        spec.seed, same)
        except ValueError as e:  # e.g. ITQ with more bits than feature dimensions
            print(f"compare: {method} at {bits} bits skipped: {e}", file=sys.stderr)
            continue
        rows.append(report.baseline_row(method, bits, m, info, protocol, label, net, spec.seed))
    return rows


def run(spec):
    """The rows of every method at every width; writes results/table2.md and .csv."""
    bits_list = list(spec.bits or D.config(spec.dataset, spec.scale)["bits"])
    out = os.path.abspath(spec.out or os.path.join(ROOT, "runs", f"compare-{spec.dataset}-{spec.scale}"))
    data = os.path.abspath(spec.data or os.path.join(out, "data"))
    if not spec.data:
        build(dataclasses.replace(spec.build, out=data))
    manifest = load_manifest(data)
    cfg = D.config(spec.dataset, spec.scale, manifest.get("classes"))
    protocol = manifest["protocol"]
    same = bool(manifest.get("database_is_query"))
    pixels = raw_pixels(data, manifest) if spec.baseline_features == "raw" and \
        any(m in spec.methods for m in CLASSICAL) else None
    rows = []
    for bits in bits_list:
        deep, step1_blobs = deep_rows(spec, out, data, bits, protocol, cfg["classes"])
        rows += deep + classical_rows(spec, bits, protocol, pixels, step1_blobs, same,
                                      (manifest.get("features") or {}).get("backbone"))
    rows = sorted(rows, key=lambda r: spec.methods.index(_method_key(r["method"])))
    rows += report.cited_rows(bits_list, report.paper_dataset(manifest), protocol)
    title = f"{report.dataset_name(manifest)} / {spec.scale} scale / protocol {protocol}: mAP"
    text = report.method_table(rows, bits_list, title)
    report.write_table(os.path.join(out, "results", "table2.md"), text, rows)
    print(text)
    return rows


def _method_key(name):
    return {v: k for k, v in LABELS.items()}.get(name, name.lower())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=D.datasets())
    ap.add_argument("--scale", default="cpu", choices=D.scales())
    ap.add_argument("--methods", nargs="+", default=list(CompareSpec.methods),
                    choices=DEEP + ONE_STEP + CLASSICAL)
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--baseline-features", choices=("raw", "step1"), default="raw",
                    help="what LSH/ITQ/SDH hash: raw pixels, or the step-1 net's latent features")
    ap.add_argument("--data", help="an existing data_prep folder")
    ap.add_argument("--archive")
    ap.add_argument("--root", help="In-shop folder; images: class folders, or train/ + test/ of them")
    add_image_source_arguments(ap)
    ap.add_argument("--protocol")
    ap.add_argument("--weights")
    ap.add_argument("--epochs", type=int, nargs=2, default=list(D.PAPER_TRAINING["epochs"]))
    ap.add_argument("--iters", type=int, nargs=2)
    ap.add_argument("--seed", type=int, default=1, help="solver seed (step 2: +1) and hashing seed")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    data = BuildSpec(dataset=a.dataset, out="", archive=a.archive, root=a.root, protocol=a.protocol,
                     seed=a.data_seed, epochs=sum(a.epochs), **image_source_fields(a))
    spec = CompareSpec(dataset=a.dataset, scale=a.scale, methods=tuple(a.methods),
                       bits=tuple(a.bits) if a.bits else None, baseline_features=a.baseline_features,
                       out=a.out, data=a.data, build=data, weights=a.weights, epochs=tuple(a.epochs),
                       iters=tuple(a.iters) if a.iters else None, seed=a.seed)
    return run_command("compare", lambda: run(spec))


if __name__ == "__main__":
    sys.exit(main())
