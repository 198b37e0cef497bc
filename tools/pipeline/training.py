"""Training through the stock `caffe train -solver`: TQN's two steps, or DSH, DNNH or DQN.

`train(TrainSpec(...))` is the entry point (the command line is `python -m tools.train`).

The one-step methods (DSH, DNNH, DQN) train for the iterations of TQN's two steps together (the
same budget: `epochs` / `iters` still name TQN's two steps) at the step-1 learning rate, into the
run folder's step1_* files; DSH and DQN read the data set's shuffled.txt (random batches), DNNH
and TQN its triplets.txt.

Step 1 trains with TripletLoss (from `weights`, or from scratch); step 2 fine-tunes with
TripletQuantizationLoss from step 1's final weights (SolverParameter.weights) and continues the
data set's triplet list where step 1 stopped (TripletData.first_triplet), so every epoch of both
steps sees fresh triplets. The run folder gets each step's net and solver prototxt (from
prototxt/description.py through prototxt.generate), Caffe's log (logs/step<k>.log), snapshots,
and params.json: every seed and parameter (the plan), and the completion marker of the steps
done (data_prep.outputs: the final model of each finished step with its sha256). A rerun skips
finished steps (a damaged final model is trained again) and resumes an interrupted one from its
latest sound .solverstate (the triplet position is restored with it; a damaged snapshot is set
aside, said, for the previous one). A step is marked done only when its final model exists and
parses. Ctrl-C (or SIGINT to caffe) lets caffe snapshot the current iteration and stop; the
command says so and exits with 130, and the same command resumes from that snapshot. Initial
`weights` are checked before step 1: every parametric layer of the backbone (AlexNet: conv1 ...
fc7) must be in the file with the net's shapes.
"""
import argparse
import dataclasses
import glob
import os
import re
import sys
from typing import Optional, Tuple

from data_prep.outputs import (changed_keys, damaged_outputs, load_marker, mark_complete,
                               sha256_file, write_text)
from prototxt import description as D
from prototxt import generate as G
from tools.pipeline.caffe import caffe_binary, git_commit, run_caffe
from data_prep.errors import Interrupted
from tools.pipeline import caffe_log
from tools.pipeline import snapshots as S
from tools.pipeline.errors import PipelineError


class TrainError(PipelineError):
    pass


TQN_PARAMETERS = ("alpha_d", "alpha_s", "delta", "beta", "gamma", "threshold")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Every setting of a training run, resolved."""
    data: str                     # a data_prep output folder (dataset.json)
    dataset: str                  # a data set of prototxt.description.CONFIGS
    bits: int
    out: str                      # the run folder
    scale: str = "cpu"
    method: str = "tqn"           # tqn (steps 1 and 2; step 1 alone is triplet-only), dsh, dnnh, dqn
    steps: Tuple[int, ...] = (1, 2)   # TQN's steps to run (the other methods have one)
    weights: Optional[str] = None     # initial weights of step 1 (e.g. ImageNet AlexNet)
    seed: int = 1                 # Caffe's random_seed of step 1 (step 2: +1)
    epochs: Tuple[int, int] = D.PAPER_TRAINING["epochs"]
    iters: Optional[Tuple[int, int]] = None     # iterations of each step (overrides epochs)
    base_lr: Optional[Tuple[float, ...]] = None  # learning rate of each step
    batch_triplets: int = D.PAPER_TRAINING["batch_triplets"]
    snapshots: int = D.SNAPSHOTS_PER_STEP      # snapshots a step (for resuming)
    tqn: dict = dataclasses.field(default_factory=dict)           # TQN overrides, e.g. beta=1.0
    method_params: dict = dataclasses.field(default_factory=dict)  # D.TRAINING_OVERRIDES
    allow_any_bits: bool = False
    force: bool = False           # train over a run with other parameters
    gpu: Optional[str] = None     # GPU id(s), passed to caffe train -gpu (a CUDA build)
    quiet: bool = False
    verbose: bool = False      # Caffe's own log on the console too (it always goes to logs/)


def tqn_override(item):
    """One NAME=VALUE of a --tqn option -> (name, float): an argparse `type` (a bad item is an
    argparse.ArgumentTypeError naming it)."""
    key, _, value = item.partition("=")
    try:
        if key in TQN_PARAMETERS and value:
            return key, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--tqn takes name=value with a TQN parameter, got {item!r}")


def method_param(item):
    """One KEY=VALUE of a --method-param option -> (key, value): an argparse `type` (the key
    and value are checked against the method when the run is planned)."""
    key, _, value = item.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"--method-param takes KEY=VALUE, got {item!r}")
    return key, value


def load_manifest(data_dir):
    """The data set's dataset.json (its completion marker, data_prep.outputs)."""
    path = os.path.join(data_dir, "dataset.json")
    manifest = load_marker(path)
    if manifest is None:
        what = "is unreadable" if os.path.exists(path) else "is missing"
        raise TrainError(f"{path} {what}: build the data set first "
                         f"(python -m data_prep.build --out {data_dir} ...)")
    return manifest


def check_scale(manifest, scale, data_dir):
    """A features-scale run needs a features data folder (the backbone's features), every other
    scale an image build: the other way round the net would train on the wrong input."""
    if scale == "features" and not manifest.get("features"):
        raise TrainError(f"{data_dir}: --scale features needs a features data folder (the main job's "
                         f"<out>/data-features, or python -m data_prep.features --images {data_dir} --out F "
                         f"--training-data DIR); this is an image build")
    if scale != "features" and manifest.get("features"):
        raise TrainError(f"{data_dir} holds backbone features (a features data folder): use --scale features")


def final_model(run, step, iters):
    return os.path.join(run, f"step{step}_iter_{iters}.caffemodel")


def snapshot_states(run, step, iters):
    """[(iteration, path)] of the step's step<k>_iter_<i>.solverstate files with i < iters,
    newest first."""
    found = []
    for path in glob.glob(os.path.join(run, f"step{step}_iter_*.solverstate")):
        m = re.search(r"_iter_(\d+)\.solverstate$", path)
        if m and int(m.group(1)) < iters:
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def latest_state(run, step, iters, say=print):
    """(iteration, path) of the newest snapshot of the step that can be resumed from
    (tools/pipeline/snapshots.py checks it), or None. A damaged one (a snapshot cut short by a
    full disk or a kill) is renamed to <name>.damaged, with its model, and said, and the previous
    one is tried."""
    for iteration, path in snapshot_states(run, step, iters):
        problem = S.state_problem(path, iteration)
        if problem is None:
            return iteration, path
        moved = []
        for p in (path, path[: -len(".solverstate")] + ".caffemodel"):
            if os.path.exists(p):
                os.replace(p, p + ".damaged")
                moved.append(os.path.basename(p) + ".damaged")
        say(f"step {step}: the snapshot of iteration {iteration} cannot be resumed from ({problem}); "
            f"set aside as {', '.join(moved)}; trying the previous one")
    return None


def plan(spec, manifest):
    """Every parameter of the run's steps, as recorded in params.json."""
    classes = manifest.get("classes")
    if spec.dataset == D.IMAGES and manifest.get("dataset") != D.IMAGES:
        raise TrainError(f"{spec.data} holds a {manifest.get('dataset')} build, not --dataset images")
    cfg = D.config(spec.dataset, spec.scale, classes)
    overrides = dict(spec.method_params)
    if spec.method == "tqn" and overrides:
        raise TrainError("--method-param applies to dsh, dnnh and dqn; TQN's are --tqn")
    try:
        method = D.method_parameters(spec.method, overrides)
    except (ValueError, KeyError) as e:
        raise TrainError(str(e).strip('"')) from None
    bad = sorted(set(spec.tqn) - set(TQN_PARAMETERS))
    if bad:
        raise TrainError(f"no TQN parameter {', '.join(bad)}; known: {', '.join(TQN_PARAMETERS)}")
    if spec.bits not in cfg["bits"] and not spec.allow_any_bits:
        raise TrainError(f"{spec.dataset}/{spec.scale} is configured for {cfg['bits']} bits "
                         f"(Table I); pass --allow-any-bits to train {spec.bits}")
    bs = spec.batch_triplets
    n_train = manifest["counts"]["train"]
    if spec.iters:
        iters = list(spec.iters)
    else:
        iters = [D.iterations(e, n_train, bs) for e in spec.epochs]
    lrs = list(spec.base_lr) if spec.base_lr else list(cfg["base_lr"])
    try:
        tqn = dict(D.tqn_parameters(spec.dataset, spec.scale, spec.bits, classes,
                                    alpha_d_value=spec.tqn.get("alpha_d")), **spec.tqn)
    except (KeyError, ValueError) as e:
        raise TrainError(f"{e.args[0]}; give alpha_d with --tqn alpha_d=VALUE") from None
    if spec.method != "tqn":
        if spec.tqn:
            raise TrainError(f"--tqn applies to method tqn, not {spec.method}")
        iters, lrs, tqn = [sum(iters)], lrs[:1], None
        if method["batches"] == "shuffled" and "shuffled" not in manifest:
            raise TrainError(f"{spec.data} has no shuffled.txt (the pairwise batches of "
                             f"{spec.method}); rebuild it with this version of data_prep.build")
    return dict(method=spec.method, dataset=spec.dataset, scale=spec.scale, bits=spec.bits,
                data=os.path.abspath(spec.data),
                protocol=manifest.get("protocol"), data_seed=manifest.get("seed"),
                triplet_seed=manifest.get("triplets", {}).get("seed"), train_size=n_train,
                batch_triplets=bs, iterations=iters, base_lr=lrs,
                solver_seeds=[spec.seed, spec.seed + 1], weights=spec.weights,
                first_triplet=[0, iters[0] * bs][:len(iters)], margin=D.PAPER_TRAINING["margin"],
                tqn=tqn,
                method_parameters=None if spec.method == "tqn" else method,
                **({"method_overrides": overrides} if overrides else {}),
                momentum=D.PAPER_TRAINING["momentum"], weight_decay=D.PAPER_TRAINING["weight_decay"],
                lr_policy=D.PAPER_TRAINING["lr_policy"], snapshots=spec.snapshots)


def step_files(run, p, step, first_triplet):
    """Writes step<k>_net.prototxt and step<k>_solver.prototxt for plan `p`; the solver's path."""
    data = p["data"]
    mean = os.path.join(data, "mean.binaryproto")
    method = p["method"]
    lists = "shuffled.txt" if D.method(method)["batches"] == "shuffled" else "triplets.txt"
    iters = p["iterations"][step - 1]
    net = G.train_net(p["dataset"], p["scale"], p["bits"], step, os.path.join(data, "lmdb", "train"),
                      os.path.join(data, lists), mean if os.path.exists(mean) else None,
                      p["batch_triplets"], p["tqn"], method=method, train_rows=p["train_size"],
                      total_iters=iters, method_overrides=p.get("method_overrides"),
                      first_triplet=first_triplet)
    net_path = os.path.join(run, f"step{step}_net.prototxt")
    write_text(net_path, net)
    weights = p["weights"] if step == 1 else final_model(run, 1, p["iterations"][0])
    solver = G.solver(p["dataset"], p["scale"], step, net_path, iters, os.path.join(run, f"step{step}"),
                      p["solver_seeds"][step - 1], base_lr=p["base_lr"][step - 1],
                      display=max(1, min(50, iters // 40)), weights=weights,
                      snapshots=p["snapshots"])
    solver_path = os.path.join(run, f"step{step}_solver.prototxt")
    write_text(solver_path, solver)
    return solver_path


def done_steps(params_path, record):
    """{step: its record} of the steps `record` (params.json) marks done whose final model is
    still as it was written (a damaged or missing model is trained again)."""
    damaged = damaged_outputs(params_path, record)
    return {k: info for k, info in record.get("steps", {}).items()
            if info.get("model") and info["model"] not in damaged}


def train(spec):
    """Trains the run of `spec` (a TrainSpec); returns its record (params.json)."""
    manifest = load_manifest(spec.data)
    check_scale(manifest, spec.scale, spec.data)
    p = plan(spec, manifest)
    run = os.path.abspath(spec.out)
    os.makedirs(os.path.join(run, "logs"), exist_ok=True)
    params_path = os.path.join(run, "params.json")
    old = load_marker(params_path)
    changed = changed_keys(old["inputs"], p) if old is not None else []
    if changed and not spec.force:
        raise TrainError(f"{run} holds a run with other parameters ({', '.join(changed)}); "
                         f"use another --out, or --force to train over it")
    steps_record = done_steps(params_path, old) if old is not None and not changed else {}
    done = set(steps_record)
    record = old
    caffe = caffe_binary()
    steps = spec.steps if spec.method == "tqn" else [1]
    for step in steps:
        iters = p["iterations"][step - 1]
        model = final_model(run, step, iters)
        if str(step) in done:
            print(f"step {step}: done ({os.path.relpath(model)})")
            continue
        if step == 2 and not os.path.exists(final_model(run, 1, p["iterations"][0])):
            raise TrainError(f"step 2 needs step 1's {final_model(run, 1, p['iterations'][0])}: "
                             f"train step 1 first (--steps 1 2)")
        state = latest_state(run, step, iters)
        resumed = state[0] if state else 0
        if step == 1 and p["weights"] and not state:
            check_weights(spec, p, manifest)
        first = p["first_triplet"][step - 1] + resumed * p["batch_triplets"]
        solver_path = step_files(run, p, step, first)
        cmd = [caffe, "train", f"-solver={solver_path}", "-sigint_effect=stop"]  # snapshot, stop
        if spec.gpu:
            cmd.append(f"-gpu={spec.gpu}")  # overrides the solvers' solver_mode: CPU
        if state:
            cmd.append(f"{caffe_log.RESUMED}{state[1]}")  # -snapshot=
            print(f"step {step}: resuming from iteration {resumed} ({os.path.relpath(state[1])})")
        what = D.STEPS[step]["loss"] if spec.method == "tqn" else spec.method.upper()
        print(f"step {step}: {what}, {iters} iterations, lr {p['base_lr'][step - 1]}, "
              f"log {os.path.relpath(caffe_log.step_log(run, step))}", flush=True)
        # A resumed step's earlier invocations, read from its log (their own time stamps).
        earlier = caffe_log.file_wall_seconds(caffe_log.step_log(run, step)) if state else 0.0
        try:
            seconds = run_caffe(cmd, caffe_log.step_log(run, step), iters,
                                f"step {step}", spec.quiet, spec.verbose, resumed=resumed)
        except Interrupted:
            raise Interrupted(stopped_message(run, step, iters)) from None
        problem = S.model_problem(model) if os.path.exists(model) else "missing"
        if problem:  # e.g. SIGINT to caffe alone: it snapshots, stops and exits 0
            raise Interrupted(stopped_message(run, step, iters, problem)) from None
        seconds += earlier  # a resumed step: its time over every invocation
        steps_record[str(step)] = dict(seconds=round(seconds, 1), resumed_from=resumed,
                                       model=os.path.basename(model))
        record = _mark(params_path, p, steps_record)
    if record is None or record.get("steps") != steps_record:
        record = _mark(params_path, p, steps_record)
    return record


def stopped_message(run, step, iters, problem=None):
    """What an interrupted step kept, and how to go on."""
    state = latest_state(run, step, iters, say=lambda _: None)
    kept = (f"its snapshot of iteration {state[0]} ({os.path.relpath(state[1])}) is kept"
            if state else "no snapshot was written yet")
    why = f" (the final model {os.path.basename(final_model(run, step, iters))} is {problem})" \
        if problem and problem != "missing" else ""
    return (f"step {step} stopped before iteration {iters}{why}; {kept}: run the same command again "
            f"to resume; step {step} is not marked done")


def check_weights(spec, p, manifest):
    """Before step 1 starts from `--weights`: every parametric layer of the backbone must be in
    the file with the net's blob shapes (tools/pipeline/snapshots.py)."""
    cfg = D.config(spec.dataset, spec.scale)
    names = G.backbone_parameter_layers(cfg["backbone"])
    mean = os.path.join(p["data"], "mean.binaryproto")
    net = G.extract_net(spec.dataset, spec.scale, spec.bits, os.path.join(p["data"], "lmdb", "train"), 1,
                        mean if os.path.exists(mean) else None, spec.method)
    expected = S.backbone_shapes(net, names, os.path.abspath(spec.out))
    S.check_initial_weights(p["weights"], expected)
    print(f"step 1: --weights {os.path.relpath(p['weights'])} holds the backbone's "
          f"{', '.join(expected)} with the net's shapes")


def _mark(params_path, p, steps_record):
    """params.json: the plan ("inputs"), the finished steps and their final models' hashes."""
    return mark_complete(params_path, p, [info["model"] for info in steps_record.values()],
                         commit=git_commit(), command=sys.argv,
                         manifest_sha256=sha256_file(os.path.join(p["data"], "dataset.json")),
                         steps=steps_record)
