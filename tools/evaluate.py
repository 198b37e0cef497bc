"""Evaluates saved blobs: binary codes by Hamming ranking (DQN's by ADC), real-valued features by
Euclidean ranking, and the codes' health.

    python -m tools.evaluate RUN/blobs/step2 [--ks 1 10 20 100] [--out RUN/eval/step2]
        [--self-match exclude|include]

Writes <out>/metrics.json and <out>/pr_curve.png and prints a summary that names the protocol;
what is measured and how: tools/pipeline/evaluation.py and tools/hashing/metrics.py.
"""
import argparse
import sys

from tools.pipeline import evaluation as E
from tools.pipeline.errors import run_command


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("blobs", help="a blobs folder (meta.json, query/, database/)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(E.DEFAULT_KS))
    ap.add_argument("--out", help="folder for metrics.json and pr_curve.png")
    ap.add_argument("--self-match", choices=E.SELF_MATCH, default="exclude",
                    help="when database = query: leave each query out of its own ranking (default) "
                         "or keep it, as DSH's evaluation does")
    a = ap.parse_args(argv)
    return run_command("evaluate", lambda: print(E.summary(
        E.evaluate(a.blobs, tuple(a.ks), a.out, self_match=a.self_match))))


if __name__ == "__main__":
    sys.exit(main())
