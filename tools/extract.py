"""Extracts a trained net's latent layer over a data set's query and database sets to saved blobs.

    python -m tools.extract --data data/digits --dataset digits --scale cpu --bits 12 \
        --weights runs/x/step2_iter_1800.caffemodel --out runs/x/blobs/step2 [--method tqn]

The blobs' format: tools/pipeline/blobs.py; the extraction: tools/pipeline/extraction.py.
"""
import argparse
import sys

from prototxt import description as D
from tools.pipeline.errors import run_command
from tools.pipeline.extraction import ExtractSpec, extract


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a data_prep output folder (dataset.json, lmdb/)")
    ap.add_argument("--dataset", required=True, choices=D.datasets())
    ap.add_argument("--scale", default="cpu", choices=D.scales())
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--weights", required=True, help="the trained model (.caffemodel)")
    ap.add_argument("--out", required=True, help="the blobs folder to write")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--method", default="tqn", choices=sorted(D.METHODS))
    ap.add_argument("--log", help="Caffe's own log (default: <out>.log)")
    ap.add_argument("--verbose", action="store_true", help="Caffe's own log on the console instead")
    a = ap.parse_args(argv)
    spec = ExtractSpec(data=a.data, dataset=a.dataset, scale=a.scale, bits=a.bits, weights=a.weights,
                       out=a.out, batch=a.batch, method=a.method, log=a.log, verbose=a.verbose)

    def call():
        meta = extract(spec)
        print(f"extracted {meta['counts']} -> {a.out}")

    return run_command("extract", call)


if __name__ == "__main__":
    sys.exit(main())
