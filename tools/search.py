"""Top-k search of new images with a trained run, in one command (tools/pipeline/search.py).

    python -m tools.search RUN IMAGE|FOLDER|LIST [-k 10] [--step 2] [--root DIR] [--json]

RUN is a training run folder (the main job's <out>/<bits>bits, or python -m tools.train --out);
the images are encoded with its model and answered from its database codes (faiss binary index).
"""
import argparse
import json
import sys

from tools.pipeline.errors import run_command
from tools.pipeline.search import SearchSpec, format_results, search


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.search", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a trained run folder (params.json)")
    ap.add_argument("images", help="an image file, a folder of images (or of class folders), or a "
                                   "\"path label\" list file")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--step", type=int, help="the run's step whose model encodes (default: the last)")
    ap.add_argument("--root", help="the base of a list file's relative paths (default: its folder)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="Caffe's own log on the console")
    a = ap.parse_args(argv)
    if a.k < 1:
        ap.error("-k must be >= 1")
    spec = SearchSpec(run=a.run, images=a.images, step=a.step, k=a.k, root=a.root, verbose=a.verbose)

    def call():
        answer = search(spec)
        print(json.dumps(answer, indent=1) if a.json else format_results(answer))

    return run_command("search", call)


if __name__ == "__main__":
    sys.exit(main())
