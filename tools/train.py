"""Training through the stock `caffe train -solver`: TQN's two steps, or DSH, DNNH or DQN.

    python -m tools.train --data data/digits --dataset digits --scale cpu --bits 12 --out runs/x
        [--method tqn|dsh|dnnh|dqn] [--steps 1 2] [--weights bvlc_alexnet.caffemodel] [--seed 1]
        [--epochs 40 40 | --iters I1 I2] [--base-lr L1 L2] [--batch-triplets 32] [--snapshots 4]
        [--tqn beta=8 gamma=1]

The one-step methods (DSH, DNNH, DQN) train for the iterations of TQN's two steps together (the
same budget, `--epochs`/`--iters` still name TQN's two steps) at the step-1 learning rate, into
the run folder's step1_* files; DSH and DQN read the data set's shuffled.txt (random batches),
DNNH and TQN its triplets.txt.

Step 1 trains with TripletLoss (from --weights, or from scratch); step 2 fine-tunes with
TripletQuantizationLoss from step 1's final weights (SolverParameter.weights) and continues the
data set's triplet list where step 1 stopped (TripletData.first_triplet), so every epoch of both
steps sees fresh triplets. The run folder gets each step's net and solver prototxt (from
prototxt/description.py), Caffe's log (logs/step<k>.log), snapshots, and params.json with every
seed and parameter. A rerun skips finished steps and resumes an interrupted one from its latest
.solverstate (the triplet position is restored with it).
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

from prototxt import description as D
from prototxt import generate as G
from data_prep.outputs import sha256_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TrainError(RuntimeError):
    pass


def load_manifest(data_dir):
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.exists(path):
        raise TrainError(f"{path} is missing: build the data set first "
                         f"(python -m data_prep.build --out {data_dir} ...)")
    with open(path) as f:
        return json.load(f)


def caffe_binary():
    build = os.environ.get("CAFFE_BUILD")
    if not build:
        raise TrainError("CAFFE_BUILD is not set: run `. tools/env.sh` first (it builds Caffe)")
    return os.path.join(build, "tools", "caffe")


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def final_model(run, step, iters):
    return os.path.join(run, f"step{step}_iter_{iters}.caffemodel")


def latest_state(run, step, iters):
    """(iteration, path) of the newest step<k>_iter_<i>.solverstate with i < iters, or None."""
    best = None
    for path in glob.glob(os.path.join(run, f"step{step}_iter_*.solverstate")):
        m = re.search(r"_iter_(\d+)\.solverstate$", path)
        if m and int(m.group(1)) < iters and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), path)
    return best


def plan(args, manifest):
    """Every parameter of both steps, as recorded in params.json."""
    cfg = D.config(args.dataset, args.scale)
    overrides = dict(args.method_param)
    if args.method == "tqn" and overrides:
        raise TrainError("--method-param applies to dsh, dnnh and dqn; TQN's are --tqn")
    try:
        method = D.method_parameters(args.method, overrides)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if args.bits not in cfg["bits"] and not args.allow_any_bits:
        raise TrainError(f"{args.dataset}/{args.scale} is configured for {cfg['bits']} bits "
                         f"(Table I); pass --allow-any-bits to train {args.bits}")
    bs = args.batch_triplets
    n_train = manifest["counts"]["train"]
    if args.iters:
        iters = list(args.iters)
    else:
        iters = [G.iterations(e, n_train, bs) for e in args.epochs]
    lrs = list(args.base_lr) if args.base_lr else list(cfg["base_lr"])
    tqn = dict(G._tqn_param(args.dataset, args.scale, args.bits), **args.tqn)
    if args.method != "tqn":
        if args.tqn:
            raise TrainError(f"--tqn applies to method tqn, not {args.method}")
        iters, lrs, tqn = [sum(iters)], lrs[:1], None
        if method["batches"] == "shuffled" and "shuffled" not in manifest:
            raise TrainError(f"{args.data} has no shuffled.txt (the pairwise batches of "
                             f"{args.method}); rebuild it with this version of data_prep.build")
    return dict(method=args.method, dataset=args.dataset, scale=args.scale, bits=args.bits,
                data=os.path.abspath(args.data),
                protocol=manifest.get("protocol"), data_seed=manifest.get("seed"),
                triplet_seed=manifest.get("triplets", {}).get("seed"), train_size=n_train,
                batch_triplets=bs, iterations=iters, base_lr=lrs,
                solver_seeds=[args.seed, args.seed + 1], weights=args.weights,
                first_triplet=[0, iters[0] * bs][:len(iters)], margin=D.PAPER_TRAINING["margin"],
                tqn=tqn,
                # as JSON gives it back (tuples -> lists), so a rerun's plan compares equal
                method_parameters=None if args.method == "tqn" else json.loads(json.dumps(method)),
                **({"method_overrides": overrides} if overrides else {}),
                momentum=D.PAPER_TRAINING["momentum"], weight_decay=D.PAPER_TRAINING["weight_decay"],
                lr_policy=D.PAPER_TRAINING["lr_policy"], snapshots=args.snapshots)


def step_files(run, p, step, first_triplet):
    """Writes step<k>_net.prototxt and step<k>_solver.prototxt for plan `p`."""
    data = p["data"]
    mean = os.path.join(data, "mean.binaryproto")
    method = p.get("method", "tqn")
    lists = "shuffled.txt" if D.method(method)["batches"] == "shuffled" else "triplets.txt"
    net = G.train_net(p["dataset"], p["scale"], p["bits"], step, os.path.join(data, "lmdb", "train"),
                      os.path.join(data, lists), mean if os.path.exists(mean) else None,
                      p["batch_triplets"], p["tqn"], method=method, train_rows=p["train_size"],
                      total_iters=p["iterations"][step - 1],
                      method_overrides=p.get("method_overrides"))
    net = net.replace(f"batch_size: {p['batch_triplets']}\n",
                      f"batch_size: {p['batch_triplets']}\n    first_triplet: {first_triplet}\n", 1)
    net_path = os.path.join(run, f"step{step}_net.prototxt")
    write_atomic(net_path, net)
    iters = p["iterations"][step - 1]
    weights = p["weights"] if step == 1 else final_model(run, 1, p["iterations"][0])
    solver = G.solver(p["dataset"], p["scale"], step, net_path, iters, os.path.join(run, f"step{step}"),
                      p["solver_seeds"][step - 1], base_lr=p["base_lr"][step - 1],
                      display=max(1, min(50, iters // 40)), weights=weights)
    solver = re.sub(r"snapshot: \d+", f"snapshot: {max(1, iters // max(1, p['snapshots']))}", solver)
    solver_path = os.path.join(run, f"step{step}_solver.prototxt")
    write_atomic(solver_path, solver)
    return solver_path


def run_caffe(cmd, log_path, iters, label, quiet=False):
    """Runs `caffe train`, appending its log to log_path and printing progress every 10%."""
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")  # the log is a product
    next_report = 0.1
    start = time.monotonic()
    pattern = re.compile(r"\] Iteration (\d+).*loss = (\S+)")
    with open(log_path, "a") as log:
        log.write(f"# {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            m = pattern.search(line)
            if m and not quiet and int(m.group(1)) >= next_report * iters:
                print(f"  {label}: iteration {m.group(1)}/{iters}, loss {m.group(2)}, "
                      f"{time.monotonic() - start:.0f} s", flush=True)
                while next_report * iters <= int(m.group(1)):
                    next_report += 0.1
        code = proc.wait()
    if code != 0:
        with open(log_path) as f:
            tail = f.readlines()[-15:]
        raise TrainError(f"{label}: caffe exited with {code}; the log is {log_path}:\n" + "".join(tail))
    return time.monotonic() - start


def train(args):
    manifest = load_manifest(args.data)
    p = plan(args, manifest)
    run = os.path.abspath(args.out)
    os.makedirs(os.path.join(run, "logs"), exist_ok=True)
    params_path = os.path.join(run, "params.json")
    if os.path.exists(params_path):
        with open(params_path) as f:
            old = json.load(f)
        if old.get("plan") != p and not args.force:
            changed = sorted(k for k in set(p) | set(old.get("plan", {}))
                             if p.get(k) != old.get("plan", {}).get(k))
            raise TrainError(f"{run} holds a run with other parameters ({', '.join(changed)}); "
                             f"use another --out, or --force to train over it")
    record = dict(plan=p, commit=git_commit(), command=sys.argv, manifest_sha256=None, steps={})
    record["manifest_sha256"] = sha256_file(os.path.join(p["data"], "dataset.json"))
    if os.path.exists(params_path):
        with open(params_path) as f:
            record["steps"] = json.load(f).get("steps", {})
    caffe = caffe_binary()
    steps = args.steps if args.method == "tqn" else [1]
    for step in steps:
        iters = p["iterations"][step - 1]
        done = final_model(run, step, iters)
        if os.path.exists(done):
            print(f"step {step}: done ({os.path.relpath(done)})")
            continue
        if step == 2 and not os.path.exists(final_model(run, 1, p["iterations"][0])):
            raise TrainError(f"step 2 needs step 1's {final_model(run, 1, p['iterations'][0])}: "
                             f"train step 1 first (--steps 1 2)")
        state = latest_state(run, step, iters)
        resumed = state[0] if state else 0
        first = p["first_triplet"][step - 1] + resumed * p["batch_triplets"]
        solver_path = step_files(run, p, step, first)
        cmd = [caffe, "train", f"-solver={solver_path}"]  # Ctrl-C: snapshot, then stop
        if args.gpu:
            cmd.append(f"-gpu={args.gpu}")  # overrides the solvers' solver_mode: CPU
        if state:
            cmd.append(f"-snapshot={state[1]}")
            print(f"step {step}: resuming from iteration {resumed} ({os.path.relpath(state[1])})")
        what = D.STEPS[step]["loss"] if args.method == "tqn" else args.method.upper()
        print(f"step {step}: {what}, {iters} iterations, lr {p['base_lr'][step - 1]}, "
              f"log {os.path.relpath(os.path.join(run, 'logs', f'step{step}.log'))}", flush=True)
        seconds = run_caffe(cmd, os.path.join(run, "logs", f"step{step}.log"), iters,
                            f"step {step}", args.quiet)
        record["steps"][str(step)] = dict(seconds=round(seconds, 1), resumed_from=resumed,
                                          model=os.path.basename(done))
        write_atomic(params_path, json.dumps(record, indent=2) + "\n")
    write_atomic(params_path, json.dumps(record, indent=2) + "\n")
    return record


def parse_tqn(items):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if key not in ("alpha_d", "alpha_s", "delta", "beta", "gamma", "threshold") or not value:
            raise argparse.ArgumentTypeError(f"--tqn takes name=value with a TQN parameter, got {item!r}")
        out[key] = float(value)
    return out


def key_value(item):
    """One KEY=VALUE of --method-param -> (key, value) (checked against the method in plan)."""
    key, _, value = item.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"--method-param takes KEY=VALUE, got {item!r}")
    return key, value


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a data_prep output folder (dataset.json)")
    ap.add_argument("--dataset", required=True, choices=sorted({d for d, _ in D.CONFIGS}))
    ap.add_argument("--scale", default="cpu", choices=sorted({s for _, s in D.CONFIGS}))
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--out", required=True, help="the run folder")
    ap.add_argument("--method", default="tqn", choices=sorted(D.METHODS),
                    help="tqn (steps 1 and 2; step 1 alone is triplet-only), dsh, dnnh or dqn")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2], choices=[1, 2],
                    help="TQN's steps to run (the other methods have one)")
    ap.add_argument("--weights", help="initial weights of step 1 (e.g. ImageNet bvlc_alexnet.caffemodel)")
    ap.add_argument("--seed", type=int, default=1, help="Caffe's random_seed of step 1 (step 2: +1)")
    ap.add_argument("--epochs", type=int, nargs=2, default=list(D.PAPER_TRAINING["epochs"]))
    ap.add_argument("--iters", type=int, nargs=2, help="iterations of each step (overrides --epochs)")
    ap.add_argument("--base-lr", type=float, nargs=2, help="learning rate of each step")
    ap.add_argument("--batch-triplets", type=int, default=D.PAPER_TRAINING["batch_triplets"])
    ap.add_argument("--snapshots", type=int, default=4, help="snapshots a step (for resuming)")
    ap.add_argument("--tqn", nargs="*", type=str, default=[], help="TQN overrides, e.g. beta=1")
    ap.add_argument("--method-param", nargs="*", type=key_value, default=[], metavar="KEY=VALUE",
                    help="a method's training parameter, e.g. gradient=STRAIGHT_THROUGH (dnnh); "
                         "allowed: prototxt/description.py TRAINING_OVERRIDES")
    ap.add_argument("--allow-any-bits", action="store_true")
    ap.add_argument("--force", action="store_true", help="train over a run with other parameters")
    ap.add_argument("--gpu", help="GPU id(s), passed to caffe train -gpu (a CUDA build is needed)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.tqn = parse_tqn(args.tqn)
        train(args)
        return 0
    except (TrainError, KeyError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
