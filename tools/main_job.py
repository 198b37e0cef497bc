"""The project's main job, end to end: data -> triplet LMDB -> step 1 (triplet loss) -> step 2
(TQN) through `caffe train -solver` -> saved blobs -> evaluation -> a Table III-style table.

    python -m tools.main_job                                   # digits (embedded), 12/24/48 bits
    python -m tools.main_job --dataset cifar10 --archive cifar-10-binary.tar.gz --protocol dsh
    python -m tools.main_job --dataset inshop --root In-shop --scale paper --weights alexnet.caffemodel
    python -m tools.main_job --dataset images --root DIR     # DIR/<class>/*, or DIR/train/ + DIR/test/
    python -m tools.main_job --dataset images --root DIR --scale features --resize 128x128

At `--scale features` every image (and its mirror) goes once through a fixed ImageNet-pretrained
backbone (data_prep.features; default prototxt.description.FEATURE_BACKBONE, or --backbone,
--input-size, or your own with --backbone-deploy/--backbone-weights/--backbone-mean) into
out/features/, and the fc6/fc7 stand-ins + latent layer train on those features from
out/data-features/ (seeded mirrored triplet lists, data_prep.features.training_data).

Writes under --out (default runs/main-<dataset>-<scale>): data/ (unless --data), one run folder
per code length (tools/pipeline/training.py), blobs/ and eval/ per step, and results/:
table3.md, table3.csv, fig1_step1_losses.png, fig2_step2_losses.png, pr_curves.png,
summary.json. Reruns skip what is done.

"RF with triplet" / "BC with triplet" are step 1's features and codes; "RF with TQN" / "BC with
TQN" step 2's, as in the paper's Table III, where every drop is relative to RF with triplet.
"""
import argparse
import dataclasses
import os
import sys
import time
from typing import Optional, Tuple

from data_prep import features as F
from data_prep.build import (BuildSpec, add_image_source_arguments, build, image_source_fields,
                             parse_resize)
from prototxt import description as D
from tools.pipeline import evaluation, report
from tools.pipeline import features as PF
from tools.pipeline.errors import run_command
from tools.pipeline.models import score, train_models
from tools.pipeline.training import TrainSpec, load_manifest, tqn_override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Every setting of the main job, resolved."""
    dataset: str = "digits"
    scale: str = "cpu"
    out: Optional[str] = None          # default runs/main-<dataset>-<scale>
    data: Optional[str] = None         # an existing data_prep folder (skips data preparation)
    build: Optional[BuildSpec] = None  # how to prepare the data (when data is None)
    bits: Optional[Tuple[int, ...]] = None     # default: the configuration's
    weights: Optional[str] = None
    epochs: Tuple[int, int] = D.PAPER_TRAINING["epochs"]
    iters: Optional[Tuple[int, int]] = None
    batch_triplets: int = D.PAPER_TRAINING["batch_triplets"]
    seed: int = 1
    tqn: Tuple[Tuple[str, float], ...] = ()    # TQN overrides (images: e.g. alpha_d)
    quiet: bool = False
    verbose: bool = False
    backbone: Optional[str] = None     # features scale: a named backbone (default FEATURE_BACKBONE's)
    input_size: Optional[int] = None   # features scale: the backbone's input size
    backbone_files: Optional[Tuple[str, str, Tuple[float, ...]]] = None   # or (deploy, weights, mean BGR)

    def out_dir(self):
        return os.path.abspath(self.out or os.path.join(ROOT, "runs", f"main-{self.dataset}-{self.scale}"))

    def data_dir(self):
        return os.path.abspath(self.data or os.path.join(self.out_dir(), "data"))

    def bits_list(self):
        return list(self.bits or D.config(self.dataset, self.scale)["bits"])

    def train_spec(self, bits, out, data, method="tqn"):
        return TrainSpec(data=data, dataset=self.dataset, scale=self.scale, bits=bits,
                         out=out, method=method, weights=self.weights, seed=self.seed,
                         epochs=self.epochs, iters=self.iters, batch_triplets=self.batch_triplets,
                         tqn=dict(self.tqn), quiet=self.quiet, verbose=self.verbose)


def say(text):
    print(f"[main_job] {text}", flush=True)


def prepare_data(spec):
    """The job's data folder: spec.data, or a data_prep build of spec.build into out/data."""
    if not spec.data:
        build(dataclasses.replace(spec.build, out=spec.data_dir()))
    return load_manifest(spec.data_dir())


def feature_training_data(spec, images, seed):
    """The features scale: the backbone's features of the image build `images` (computed once into
    out/features/<backbone>-<size>, each image and its mirror) and the data folder the head trains
    from (out/data-features: mirrored lists of `seed`, the build's split and triplet seed);
    returns that folder."""
    backbone = spec.backbone or D.FEATURE_BACKBONE["backbone"]
    size = spec.input_size or D.FEATURE_BACKBONE["input_size"]
    root = os.path.join(spec.out_dir(), "features")
    say(f"features: {PF.features_name(backbone, size, spec.backbone_files)} of {images} -> {root}")
    features = PF.backbone_features(images, root, backbone, size, own=spec.backbone_files, quiet=spec.quiet)
    folder = os.path.join(spec.out_dir(), "data-features")
    F.training_data(features, images, folder, seed, sum(spec.epochs), spec.batch_triplets, quiet=spec.quiet)
    return folder


def scale_label(spec, data):
    """"cpu scale", or at the features scale with the backbone: "features scale (efficientnet-lite0
    at 128)"."""
    backbone = load_manifest(data).get("features")
    if spec.scale != "features" or not backbone:
        return f"{spec.scale} scale"
    return f"features scale ({backbone['backbone']} at {backbone['input_size']})"


def run(spec):
    """Trains, extracts and evaluates both steps at every width; writes results/; returns the
    summary."""
    start = time.monotonic()
    out, data = spec.out_dir(), spec.data_dir()
    os.makedirs(out, exist_ok=True)
    say(f"data: {spec.dataset} -> {data}")
    manifest = prepare_data(spec)
    protocol = manifest.get("protocol")
    cfg = D.config(spec.dataset, spec.scale, manifest.get("classes"))    # before any feature work
    if spec.scale == "features" and not manifest.get("features"):      # else: --data is one already
        data = feature_training_data(spec, data, manifest.get("seed", 0))
    results, runs = {}, {}
    for bits in spec.bits_list():
        runs[bits] = os.path.join(out, f"{bits}bits")
        say(f"{bits} bits: training (protocol {protocol}) -> {runs[bits]}")
        models = train_models(spec.train_spec(bits, runs[bits], data))
        results[bits] = {}
        for step, label in ((1, "triplet"), (2, "tqn")):
            _, results[bits][step] = score(models[label], data,
                                           os.path.join(runs[bits], "blobs", f"step{step}"),
                                           os.path.join(runs[bits], "eval", f"step{step}"),
                                           cfg["classes"], verbose=spec.verbose)
            say(f"{bits} bits, step {step} ({'triplet' if step == 1 else 'TQN'}):\n"
                + evaluation.summary(results[bits][step]))
    return write_results(spec, results, runs, protocol, time.monotonic() - start, scale_label(spec, data))


def write_results(spec, results, runs, protocol, seconds, scale=None):
    results_dir = os.path.join(spec.out_dir(), "results")
    bits_list = spec.bits_list()
    manifest = load_manifest(spec.data_dir())
    name = report.dataset_name(manifest)
    md, csv_rows = report.table3(results, bits_list, spec.dataset, protocol, name=name)
    title = f"{name} / {scale or spec.scale + ' scale'} / protocol {protocol}"
    report.write_table(os.path.join(results_dir, "table3.md"), f"# {title}\n\n{md}\n", csv_rows)
    report.plot_losses(runs, results_dir, title)
    report.plot_pr_curves(results, os.path.join(results_dir, "pr_curves.png"), title)
    warnings = {f"{b} bits step {s}": results[b][s]["collapse_warnings"]
                for b in bits_list for s in (1, 2) if results[b][s]["collapse_warnings"]}
    summary = dict(dataset=spec.dataset, dataset_name=name, scale=spec.scale, scale_label=scale, protocol=protocol,
                   bits=bits_list,
                   seconds=round(seconds, 1), table=csv_rows, warnings=warnings,
                   data_seed=manifest.get("seed"), triplet_seed=manifest.get("triplets", {}).get("seed"),
                   solver_seed=spec.seed)
    report.write_json(os.path.join(results_dir, "summary.json"), summary)
    print(f"\n{title}\n\n{md}\n")
    for key, ws in warnings.items():
        for w in ws:
            print(f"WARNING ({key}): {w}")
    say(f"done in {summary['seconds']:.0f} s; results in {os.path.relpath(results_dir)}")
    return summary


def parser():
    ap = argparse.ArgumentParser(prog="python -m tools.main_job", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=D.datasets())
    ap.add_argument("--scale", default="cpu", choices=D.scales())
    ap.add_argument("--archive", help="CIFAR-10 archive (binary or python) or folder")
    ap.add_argument("--root", help="In-shop folder (Eval/, Img/); images: a folder of class folders, "
                                   "or of train/ and test/ (or train/, query/, database/) class folders")
    add_image_source_arguments(ap)
    ap.add_argument("--tqn", nargs="*", type=tqn_override, default=[], metavar="NAME=VALUE",
                    help="a TQN parameter (e.g. alpha_d=5.0; default: Table I by number of classes)")
    ap.add_argument("--protocol", help="split protocol (data_prep; e.g. dsh, cifar10-2)")
    ap.add_argument("--resize", type=parse_resize, help="data_prep: HxW, resize every image")
    ap.add_argument("--singletons", choices=("error", "negatives"), default="error",
                    help="data_prep: train classes with one image (In-shop)")
    ap.add_argument("--data", help="an existing data_prep folder (skips data preparation)")
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--weights", help="initial weights of step 1 (paper scale: ImageNet AlexNet)")
    ap.add_argument("--epochs", type=int, nargs=2, default=list(D.PAPER_TRAINING["epochs"]))
    ap.add_argument("--iters", type=int, nargs=2)
    ap.add_argument("--batch-triplets", type=int, default=D.PAPER_TRAINING["batch_triplets"])
    ap.add_argument("--seed", type=int, default=1, help="Caffe's solver seed (step 2: +1)")
    ap.add_argument("--data-seed", type=int, default=0, help="split and triplet seed")
    ap.add_argument("--out", help="output folder (default runs/main-<dataset>-<scale>)")
    ap.add_argument("--backbone", choices=sorted(F.BACKBONE_MEANS),
                    help=f"--scale features: the backbone (default {D.FEATURE_BACKBONE['backbone']})")
    ap.add_argument("--input-size", type=int,
                    help=f"--scale features: its input size (default {D.FEATURE_BACKBONE['input_size']})")
    ap.add_argument("--backbone-deploy", help="--scale features: your own Caffe backbone's deploy.prototxt "
                                              "(with --backbone-weights)")
    ap.add_argument("--backbone-weights", help="its .caffemodel")
    ap.add_argument("--backbone-mean", default="104,117,123", help="its BGR mean (default 104,117,123)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines (results only)")
    ap.add_argument("--verbose", action="store_true",
                    help="Caffe's own log on the console too (it always goes to the run's logs)")
    return ap


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    if bool(a.backbone_deploy) != bool(a.backbone_weights):
        ap.error("--backbone-deploy and --backbone-weights go together")
    if a.scale != "features" and (a.backbone or a.input_size or a.backbone_deploy):
        ap.error("--backbone, --input-size and --backbone-deploy are for --scale features")
    if a.backbone and a.backbone_deploy:
        ap.error("--backbone names a fetched backbone, --backbone-deploy your own: give one")
    try:
        mean = tuple(float(v) for v in a.backbone_mean.split(","))
    except ValueError:
        ap.error(f"--backbone-mean takes comma-separated numbers, got {a.backbone_mean!r}")
    own = (os.path.abspath(a.backbone_deploy), os.path.abspath(a.backbone_weights), mean) \
        if a.backbone_deploy else None
    data = BuildSpec(dataset=a.dataset, out="", archive=a.archive, root=a.root, protocol=a.protocol,
                     seed=a.data_seed, epochs=sum(a.epochs), batch_triplets=a.batch_triplets,
                     resize=a.resize, singletons=a.singletons, quiet=a.quiet, **image_source_fields(a))
    spec = JobSpec(dataset=a.dataset, scale=a.scale, out=a.out, data=a.data,
                   build=data, bits=tuple(a.bits) if a.bits else None,
                   weights=a.weights, epochs=tuple(a.epochs), iters=tuple(a.iters) if a.iters else None,
                   batch_triplets=a.batch_triplets, seed=a.seed, tqn=tuple(a.tqn), quiet=a.quiet,
                   verbose=a.verbose, backbone=a.backbone, input_size=a.input_size, backbone_files=own)
    return run_command("main_job", lambda: run(spec))


if __name__ == "__main__":
    sys.exit(main())
