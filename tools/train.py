"""Trains a run through the stock `caffe train -solver`: TQN's two steps, or DSH, DNNH or DQN.

    python -m tools.train --data data/digits --dataset digits --scale cpu --bits 12 --out runs/x
        [--method tqn|dsh|dnnh|dqn] [--steps 1 2] [--weights bvlc_alexnet.caffemodel] [--seed 1]
        [--epochs 40 40 | --iters I1 I2] [--base-lr L1 L2] [--batch-triplets 32] [--snapshots 4]
        [--tqn beta=8 gamma=1] [--method-param gradient=STRAIGHT_THROUGH]

What a run holds and how it resumes: tools/pipeline/training.py.
"""
import argparse
import sys

from prototxt import description as D
from tools.pipeline.errors import run_command
from tools.pipeline.training import TrainSpec, method_param, tqn_override, train


def parser():
    ap = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a data_prep output folder (dataset.json)")
    ap.add_argument("--dataset", required=True, choices=D.datasets())
    ap.add_argument("--scale", default="cpu", choices=D.scales())
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
    ap.add_argument("--snapshots", type=int, default=D.SNAPSHOTS_PER_STEP,
                    help="snapshots a step (for resuming)")
    ap.add_argument("--tqn", nargs="*", type=tqn_override, default=[], metavar="NAME=VALUE",
                    help="TQN overrides, e.g. beta=1")
    ap.add_argument("--method-param", nargs="*", type=method_param, default=[], metavar="KEY=VALUE",
                    help="a method's training parameter, e.g. gradient=STRAIGHT_THROUGH (dnnh); "
                         "allowed: prototxt/description.py TRAINING_OVERRIDES")
    ap.add_argument("--allow-any-bits", action="store_true")
    ap.add_argument("--force", action="store_true", help="train over a run with other parameters")
    ap.add_argument("--gpu", help="GPU id(s), passed to caffe train -gpu (a CUDA build is needed)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="Caffe's own log on the console too")
    return ap


def main(argv=None):
    a = parser().parse_args(argv)
    spec = TrainSpec(data=a.data, dataset=a.dataset, scale=a.scale, bits=a.bits, out=a.out,
                     method=a.method, steps=tuple(a.steps), weights=a.weights, seed=a.seed,
                     epochs=tuple(a.epochs), iters=tuple(a.iters) if a.iters else None,
                     base_lr=tuple(a.base_lr) if a.base_lr else None,
                     batch_triplets=a.batch_triplets, snapshots=a.snapshots, tqn=dict(a.tqn),
                     method_params=dict(a.method_param), allow_any_bits=a.allow_any_bits,
                     force=a.force, gpu=a.gpu, quiet=a.quiet,
                     verbose=a.verbose)
    return run_command("train", lambda: train(spec))


if __name__ == "__main__":
    sys.exit(main())
