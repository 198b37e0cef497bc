"""DQN's ProductQuantizationLoss layer at the features-scale replication's settings: this
build's C++ layer, its numpy twin (the pycaffe layer tqn_layers.ProductQuantizationLossLayer)
and, optionally, another Caffe library (an earlier build) side by side in one run, interleaved:
figures, not tests.

    . tools/env.sh
    python bench/bench_pq_layer.py [--compare-library DIR] [--rounds 2] [--passes 2094]

Each timing is a fresh one-thread interpreter running --passes TRAIN forward + backward passes
of a net holding only the layer (bottom: 96 rows of tanh'd Gaussian values of the 48-bit DQN
bottleneck, 300 = 6 x 50; K = 256; a codebook update every 1,042 passes on the latest 10,000
rows, 20 k-means iterations: the generated 48-bit DQN net's values), so the passes cover the
first update (from seeded rows), a later one (from the codebooks) and the per-pass assignment.
Every pass's loss, bottom diff and codebooks are hashed: --compare-library must give the same
bits (the assignment's arithmetic is fixed, see the layer's header), and the numpy twin's final
loss is shown beside the C++ one. DIR holds a libcaffe.so.1.0.0 (loaded through
LD_LIBRARY_PATH; the build's binaries find it first). Writes bench/results/pq_layer.json and
its section of bench/results/README.md.
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

NET = """force_backward: true
layer {{ name: "z" type: "Input" top: "z" input_param {{ shape {{ dim: {batch} dim: {dim} }} }} }}
layer {{ name: "pq" {layer} bottom: "z" top: "pq" loss_weight: 1
  param {{ lr_mult: 0 decay_mult: 0 }} param {{ lr_mult: 0 decay_mult: 0 }}
  {param} }}
"""


def net_text(a, impl):
    settings = (f"num_subspaces: {a.subspaces} num_centroids: {a.centroids} "
                f"codebook_update_interval: {a.interval} buffer_size: {a.buffer} "
                f"kmeans_iterations: {a.kmeans_iterations} seed: 7")
    if impl == "numpy":
        layer = ('type: "Python" python_param { module: "tqn_layers" '
                 'layer: "ProductQuantizationLossLayer" param_str: "' + settings + '" }')
        return NET.format(batch=a.batch, dim=a.dim, layer=layer, param="")
    return NET.format(batch=a.batch, dim=a.dim, layer='type: "ProductQuantizationLoss"',
                      param="product_quantization_loss_param { " + settings + " }")


def worker(a):
    import hashlib
    import numpy as np
    import caffe
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pq.prototxt")
        with open(path, "w") as f:
            f.write(net_text(a, a.impl))
        net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(1)
    digest = hashlib.sha256()
    update_seconds, seconds = 0.0, 0.0
    for p in range(1, a.passes + 1):
        net.blobs["z"].data[...] = np.tanh(rng.standard_normal((a.batch, a.dim))).astype(np.float32)
        start = time.process_time()
        net.forward()
        net.backward()
        took = time.process_time() - start
        seconds += took
        if p % a.interval == 0:
            update_seconds += took
        for array in (net.blobs["pq"].data, net.blobs["z"].diff, net.params["pq"][0].data):
            digest.update(np.ascontiguousarray(array).tobytes())
    print(json.dumps(dict(seconds=seconds, update_seconds=update_seconds,
                          loss=float(net.blobs["pq"].data), sha256=digest.hexdigest())))


def run(a, impl, library=None):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    if library:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([library] + ([env["LD_LIBRARY_PATH"]]
                                                              if env.get("LD_LIBRARY_PATH") else []))
    env["PYTHONPATH"] = os.pathsep.join([common.ROOT, os.path.join(common.ROOT, "layers", "python")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    args = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl]
    for key in ("passes", "batch", "dim", "subspaces", "centroids", "interval", "buffer",
                "kmeans_iterations"):
        args += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker {impl} failed ({done.returncode}):\n{done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-library", metavar="DIR",
                    help="a folder with another libcaffe.so.1.0.0 (an earlier build) to time beside this one")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2094, help="forward + backward passes a timing "
                    "(default: two codebook updates and 10 passes more)")
    ap.add_argument("--numpy", action=argparse.BooleanOptionalAction, default=True,
                    help="time the numpy twin too (default: yes)")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--subspaces", type=int, default=6)
    ap.add_argument("--centroids", type=int, default=256)
    ap.add_argument("--interval", type=int, default=1042)
    ap.add_argument("--buffer", type=int, default=10000)
    ap.add_argument("--kmeans-iterations", type=int, default=20)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="cpp", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    if a.compare_library and not os.path.isfile(os.path.join(a.compare_library, "libcaffe.so.1.0.0")):
        print(f"bench_pq_layer: {a.compare_library} holds no libcaffe.so.1.0.0", file=sys.stderr)
        return 2
    arms = [("this build", "cpp", None)]
    if a.compare_library:
        arms.append((f"library in {a.compare_library}", "cpp", a.compare_library))
    if a.numpy:
        arms.append(("numpy twin (pycaffe layer)", "numpy", None))
    m = common.machine()
    rounds = []
    for r in range(a.rounds):
        got = {}
        for name, impl, library in arms:
            got[name] = run(a, impl, library)
            x = got[name]
            print(f"round {r + 1}: {name}: {1000 * x['seconds'] / a.passes:.2f} ms a pass "
                  f"({x['update_seconds']:.2f} s in the codebook updates), loss {x['loss']:.6g}",
                  flush=True)
        rounds.append(got)
    m["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    base = "this build"
    same_bits = {name: all(g[name]["sha256"] == g[base]["sha256"] for g in rounds)
                 for name, impl, _ in arms if impl == "cpp"}
    ratios = {name: [g[name]["seconds"] / g[base]["seconds"] for g in rounds] for name, _, _ in arms}
    result = dict(schema=common.SCHEMA, machine=m, command="python bench/bench_pq_layer.py "
                  + " ".join(argv if argv is not None else sys.argv[1:]),
                  config={k: getattr(a, k) for k in ("passes", "batch", "dim", "subspaces",
                                                      "centroids", "interval", "buffer",
                                                      "kmeans_iterations")},
                  rounds=rounds, same_bits_as_this_build=same_bits,
                  seconds_over_this_build={k: [round(v, 2) for v in vs] for k, vs in ratios.items()})
    common.write_result("pq_layer", result)
    lines = [f"## DQN's ProductQuantizationLoss layer (`{result['command']}`)", "",
             f"{a.passes} TRAIN forward + backward passes of a net holding only the layer: "
             f"{a.batch} rows of {a.dim} = {a.subspaces} x {a.dim // a.subspaces}, K = {a.centroids}, "
             f"codebook updates every {a.interval} passes on the latest {a.buffer} rows "
             f"({a.kmeans_iterations} k-means iterations), one thread, a fresh process each, "
             "interleaved; CPU seconds.", "",
             "| round | implementation | ms a pass | of which codebook updates, s | time / this build | "
             "same bits as this build |", "|---|---|---:|---:|---:|---|"]
    for i, g in enumerate(rounds, 1):
        for name, impl, _ in arms:
            x = g[name]
            bits = ("yes" if x["sha256"] == g[base]["sha256"] else "NO") if impl == "cpp" else \
                f"n/a (loss {x['loss']:.6g} vs {g[base]['loss']:.6g})"
            lines.append(f"| {i} | {name} | {1000 * x['seconds'] / a.passes:.2f} | "
                         f"{x['update_seconds']:.2f} | {x['seconds'] / g[base]['seconds']:.2f}x | {bits} |")
    lines += ["", f"Machine: {common.machine_line(m)}."]
    common.update_readme("pq_layer", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
