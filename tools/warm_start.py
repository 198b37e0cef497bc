"""A classification warm start of the backbone through the stock `caffe train -solver` (OURS).

    python -m tools.warm_start --data DATA --dataset cifar10 --scale cpu --iters 1500 --out RUN

The paper fine-tunes ImageNet-pretrained AlexNet; from scratch on 2 CPU cores there is no such
model, and the CPU-scale net trained from scratch with the paper's learning rate sits at the
triplet loss's symmetric saddle (every latent output equal). This trains the backbone with a
softmax classifier on the train set's labels (the same labels every method is supervised with)
at the configuration's step-1 learning rate, batch 3 x 32 images; its final weights
(RUN/warm_start_iter_<iters>.caffemodel) are the `--weights` of every method's first step, so all
start from the same backbone. Records its seed and parameters in RUN/params.json; a rerun skips it.
"""
import argparse
import json
import os
import sys

from prototxt import description as D
from prototxt import generate as G
from tools import train as T


def warm_start(data, dataset, scale, iters, out, seed=1, batch=96, base_lr=None, quiet=False):
    manifest = T.load_manifest(data)
    cfg = D.config(dataset, scale)
    out = os.path.abspath(out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    model = os.path.join(out, f"warm_start_iter_{iters}.caffemodel")
    lr = base_lr if base_lr is not None else cfg["base_lr"][0]
    plan = dict(dataset=dataset, scale=scale, data=os.path.abspath(data), iterations=iters,
                batch=batch, base_lr=lr, solver_seed=seed, protocol=manifest.get("protocol"),
                data_seed=manifest.get("seed"))
    params = os.path.join(out, "params.json")
    if os.path.exists(model) and os.path.exists(params):
        with open(params) as f:
            if json.load(f).get("plan") == plan:
                return model
    mean = os.path.join(data, "mean.binaryproto")
    net = G.warm_start_net(dataset, scale, os.path.join(os.path.abspath(data), "lmdb", "train"), batch,
                           mean if os.path.exists(mean) else None)
    net_path = os.path.join(out, "warm_start_net.prototxt")
    T.write_atomic(net_path, net)
    solver = G.solver(dataset, scale, 1, net_path, iters, os.path.join(out, "warm_start"), seed,
                      base_lr=lr, display=max(1, min(50, iters // 40)))
    solver_path = os.path.join(out, "warm_start_solver.prototxt")
    T.write_atomic(solver_path, solver)
    cmd = [T.caffe_binary(), "train", f"-solver={solver_path}"]
    if not quiet:
        print(f"warm start: {iters} iterations of softmax classification, lr {lr}", flush=True)
    seconds = T.run_caffe(cmd, os.path.join(out, "logs", "warm_start.log"), iters, "warm start", quiet)
    T.write_atomic(params, json.dumps(dict(plan=plan, seconds=round(seconds, 1), commit=T.git_commit()),
                                      indent=2) + "\n")
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", required=True, choices=sorted({d for d, _ in D.CONFIGS}))
    ap.add_argument("--scale", default="cpu", choices=sorted({s for _, s in D.CONFIGS}))
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--base-lr", type=float)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        print(warm_start(args.data, args.dataset, args.scale, args.iters, args.out, args.seed,
                         base_lr=args.base_lr))
        return 0
    except (T.TrainError, KeyError) as e:
        print(f"warm_start: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
