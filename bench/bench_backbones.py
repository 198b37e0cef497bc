"""Cost of the `features` scale's backbone feature nets (data_prep.features.feature_deploy of each
named backbone), ms per image, measured side by side in one run: figures, not tests.

    . tools/env.sh
    python bench/bench_backbones.py [--sizes 96,128] [--batch 50] [--threads 2] [--rounds 3]

For each input size the backbones' feature nets run batch-sized forwards of random input in
alternating rounds (one warm-up forward each first); the figure is the median round, in ms per
image. Writes bench/results/backbones.json and its section of bench/results/README.md.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

BACKBONES = ("nsfw-resnet50-1by2", "efficientnet-lite0")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="96,128")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)          # before Caffe (and its BLAS) loads
    os.environ.setdefault("GLOG_minloglevel", "2")
    import numpy as np
    import caffe
    from data_prep.backbones import caffe_backbone
    from data_prep.features import feature_deploy
    caffe.set_mode_cpu()
    m = common.machine()
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            nets = {}
            for name in BACKBONES:
                files = caffe_backbone(name, input_size=size)
                text, top = feature_deploy(open(files["deploy"]).read(), size, args.batch)
                path = os.path.join(tmp, f"{name}-{size}.prototxt")
                with open(path, "w") as f:
                    f.write(text)
                net = caffe.Net(path, caffe.TEST, weights=files["weights"])
                net.blobs["data"].data[...] = rng.uniform(-1, 1, net.blobs["data"].data.shape)
                net.forward()                        # warm-up
                nets[name] = (net, top)
            times = {name: [] for name in BACKBONES}
            for _ in range(args.rounds):
                for name, (net, _top) in nets.items():
                    t0 = time.perf_counter()
                    net.forward()
                    times[name].append(time.perf_counter() - t0)
            for name, (net, top) in nets.items():
                ms = 1000 * float(np.median(times[name])) / args.batch
                rows.append(dict(backbone=name, input_size=size, dimension=int(net.blobs[top].data[0].size),
                                 ms_per_image=round(ms, 2), rounds_s=[round(t, 3) for t in times[name]]))
                print(f"{name:22s} {size:4d}px  {ms:7.2f} ms/image", flush=True)
    m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result = dict(schema=common.SCHEMA, machine=m, batch=args.batch, threads=args.threads,
                  rounds=args.rounds, rows=rows)
    common.write_result("backbones", result)
    lines = ["## Backbone feature nets (`bench/bench_backbones.py`)", "",
             f"Feature net (last Pooling global, classifier removed), batch {args.batch}, "
             f"{args.threads} BLAS threads, median of {args.rounds} alternating rounds, ms per image "
             "(one image; the features scale computes each image and its mirror).", "",
             "| backbone | input | dimension | ms / image |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['backbone']} | {r['input_size']} | {r['dimension']} | {r['ms_per_image']} |" for r in rows]
    lines += ["", f"Machine: {common.machine_line(m)} "
              "(shared machine: ad hoc figures; the ratio between rows of one size is the robust part)."]
    common.update_readme("backbones", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
