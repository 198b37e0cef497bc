"""Chunk workers of the backbone feature extraction (data_prep.features --workers): one process
with two BLAS threads against two one-thread processes side by side, images a second, in one run:
figures, not tests.

    . tools/env.sh
    python bench/bench_feature_workers.py [--backbone efficientnet-lite0] [--size 128] [--rounds 2]

Each timing is a fresh interpreter (its BLAS thread count set before Caffe loads) running
--forwards batch-sized forwards of random input through the backbone's feature net after one
warm-up; "two processes" runs two such interpreters at once and counts both one's images over
the wall time of the pair. Rounds alternate the two arrangements. Writes
bench/results/feature_workers.json and its section of bench/results/README.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def worker(a):
    import numpy as np
    import caffe
    from data_prep.backbones import caffe_backbone
    from data_prep.features import feature_deploy
    caffe.set_mode_cpu()
    files = caffe_backbone(a.backbone, input_size=a.size)
    text, _ = feature_deploy(open(files["deploy"]).read(), a.size, a.batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "feature_deploy.prototxt")
        with open(path, "w") as f:
            f.write(text)
        net = caffe.Net(path, caffe.TEST, weights=files["weights"])
    net.blobs["data"].data[...] = np.random.default_rng(0).uniform(-1, 1, net.blobs["data"].data.shape)
    net.forward()                                   # warm-up
    start = time.perf_counter()
    for _ in range(a.forwards):
        net.forward()
    print(json.dumps(dict(seconds=time.perf_counter() - start, images=a.forwards * a.batch)))


def launch(a, threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               GLOG_minloglevel="2")
    env["PYTHONPATH"] = os.pathsep.join([common.ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    args = [sys.executable, os.path.abspath(__file__), "--worker", "--backbone", a.backbone, "--size", str(a.size),
            "--batch", str(a.batch), "--forwards", str(a.forwards)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process):
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"worker failed ({process.returncode}):\n{err.strip()[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--forwards", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    m = common.machine()
    rounds = []
    for r in range(a.rounds):
        one = finish(launch(a, 2))
        pair = [launch(a, 1), launch(a, 1)]
        two = [finish(p) for p in pair]
        # each worker times its own forwards (the pair ran at once): images over the slower's seconds
        rate_one = one["images"] / one["seconds"]
        rate_two = sum(w["images"] for w in two) / max(w["seconds"] for w in two)
        rounds.append(dict(one_process_2_threads=round(rate_one, 2), two_processes_1_thread=round(rate_two, 2),
                           ms_per_image=dict(one=round(1000 * one["seconds"] / one["images"], 1),
                                             two=[round(1000 * w["seconds"] / w["images"], 1) for w in two])))
        print(f"round {r + 1}: one process, 2 threads {rate_one:.1f} images/s; two processes, 1 thread "
              f"each {rate_two:.1f} images/s ({rate_two / rate_one:.2f}x)", flush=True)
    m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    ratios = [x["two_processes_1_thread"] / x["one_process_2_threads"] for x in rounds]
    result = dict(schema=common.SCHEMA, machine=m, command="python bench/bench_feature_workers.py "
                  + " ".join(argv if argv is not None else sys.argv[1:]), backbone=a.backbone, size=a.size,
                  batch=a.batch, forwards=a.forwards, rounds=rounds, ratio_min=round(min(ratios), 2),
                  ratio_max=round(max(ratios), 2))
    common.write_result("feature_workers", result)
    lines = [f"## Feature extraction: chunk workers (`{result['command']}`)", "",
             f"{a.backbone} feature net at {a.size}x{a.size}, batch {a.batch}, {a.forwards} timed forwards "
             "after a warm-up, a fresh process each; images a second.", "",
             "| round | one process, 2 BLAS threads | two processes side by side, 1 thread each | ratio |",
             "|---|---:|---:|---:|"]
    for i, (x, q) in enumerate(zip(rounds, ratios), 1):
        lines.append(f"| {i} | {x['one_process_2_threads']:.1f} | {x['two_processes_1_thread']:.1f} | {q:.2f}x |")
    lines += ["", f"Machine: {common.machine_line(m)}. "
              "`data_prep.features` therefore runs one one-thread chunk worker a core by default."]
    common.update_readme("feature_workers", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
