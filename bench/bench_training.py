"""Training-time figures (not tests): the TQN loss layers and the data layer against a CPU
training iteration of the CPU-scale CIFAR-10 net, measured with Caffe's own `caffe time`.

    . tools/env.sh
    python bench/bench_training.py --data DIR [--iterations 50]

DIR is a data_prep output folder of 32x32 images (e.g. `python -m data_prep.build --dataset
cifar10 --archive cifar-10-binary.tar.gz --out DIR`). Writes bench/results/training.json and its
section of bench/results/README.md. Sections:
  loss_layers  forward+backward of TripletLoss and TripletQuantizationLoss alone (bs = 32
               triplets, 48 bits), C++ against the pycaffe Python layer;
  iteration    `caffe time` of the step-2 training net (TripletData -> cifar_quick -> hash ->
               TQN loss), with the C++ and with the Python loss layers: the loss layers' share;
  data_layer   the TripletData layer's share of the iteration: its forward (handing over a
               prefetched batch) inside `caffe time`, and the cost of loading one batch (what
               the prefetch thread spends, measured by a net holding only the data layer).
Goals (issue: evaluation and search at the hardware limit): C++ TQN loss <= 1 % of a CPU
training iteration; the Python layer within 3x of the C++ one; the data layer <= 5 %.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from prototxt import generate as G  # noqa: E402

LAYER_LINE = re.compile(r"\]\s+(\S+)\s+(forward|backward): ([\d.]+) ms\.")
TOTAL_LINE = re.compile(r"Average Forward-Backward: ([\d.]+) ms\.")


def caffe_time(model, iterations, env):
    """Runs `caffe time` and returns ({(layer, direction): ms}, forward-backward ms)."""
    caffe = os.path.join(os.environ["CAFFE_BUILD"], "tools", "caffe")
    run = subprocess.run([caffe, "time", f"-model={model}", f"-iterations={iterations}"],
                         capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"caffe time {model} failed:\n{run.stderr[-3000:]}")
    layers = {(m.group(1), m.group(2)): float(m.group(3)) for m in LAYER_LINE.finditer(run.stderr)}
    total = TOTAL_LINE.search(run.stderr)
    return layers, float(total.group(1))


NOOP = ('layer {{ name: "loss" type: "Python" bottom: "hash_a_fill" bottom: "hash_p_fill" '
        'bottom: "hash_n_fill" top: "loss" python_param {{ module: "bench.noop_layer" '
        'layer: "NoopTripletLossLayer" }} loss_weight: 1 }}')


def loss_only_net(kind, implementation, bs=32, bits=48):
    params = {"TripletLoss": dict(margin=1.6),
              "TripletQuantizationLoss": dict(alpha_d=7.62, alpha_s=0.16, delta=0.64, beta=8.0, gamma=1.0)}
    # Input blobs hold uniform values in [0, 1) so both hinges are partly active.
    filler = "\n".join(
        f'layer {{ name: "fill_{b}" type: "DummyData" top: "{b}_fill" dummy_data_param {{ '
        f'shape {{ dim: {bs} dim: {bits} }} data_filler {{ type: "uniform" min: 0 max: 1 }} }} }}'
        for b in ("hash_a", "hash_p", "hash_n"))
    if kind == "noop":
        return f"force_backward: true\n{filler}\n{NOOP.format()}\n"
    body = G.loss_layer(kind, "loss", 1.0, params[kind], implementation)
    for b in ("hash_a", "hash_p", "hash_n"):
        body = body.replace(f'bottom: "{b}"', f'bottom: "{b}_fill"')
    return f"force_backward: true\n{filler}\n{body}\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a data_prep folder of 32x32 images")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--bits", type=int, default=48)
    args = ap.parse_args(argv)
    if "CAFFE_BUILD" not in os.environ:
        sys.exit("run `. tools/env.sh` first (it builds Caffe and sets CAFFE_BUILD)")
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")
    data = os.path.abspath(args.data)
    mean = os.path.join(data, "mean.binaryproto")
    result = dict(bench="training", schema=common.SCHEMA, machine=common.machine(),
                  command="python bench/bench_training.py " + " ".join(argv or sys.argv[1:]),
                  config=dict(data=data, iterations=args.iterations, bits=args.bits,
                              batch_triplets=32), sections={}, goals=[])
    md = ["## Training: loss layers and data layer against a CPU training iteration",
          "", f"Machine: {common.machine_line(result['machine'])}.", "",
          f"Command: `{result['command']}` (`caffe time`, {args.iterations} iterations, "
          f"CIFAR-10 CPU-scale net, 32 triplets = 96 images a batch, {args.bits} bits).", ""]
    with tempfile.TemporaryDirectory() as tmp:
        # 1. The loss layers alone.
        alone = {}
        for kind in ("TripletLoss", "TripletQuantizationLoss"):
            for impl in ("cpp", "python"):
                path = os.path.join(tmp, f"{kind}_{impl}.prototxt")
                with open(path, "w") as f:
                    f.write(loss_only_net(kind, impl, bits=args.bits))
                layers, _ = caffe_time(path, max(200, args.iterations), env)
                alone[(kind, impl)] = layers[("loss", "forward")] + layers[("loss", "backward")]
        path = os.path.join(tmp, "noop.prototxt")
        with open(path, "w") as f:
            f.write(loss_only_net("noop", "python", bits=args.bits))
        layers, _ = caffe_time(path, max(200, args.iterations), env)
        alone[("noop", "python")] = layers[("loss", "forward")] + layers[("loss", "backward")]
        result["sections"]["loss_layers"] = dict(
            status="done", ms={f"{k}/{i}": v for (k, i), v in alone.items()})
        # 2. The step-2 training net, C++ and Python loss layers.
        nets = {}
        for impl in ("cpp", "python"):
            path = os.path.join(tmp, f"step2_{impl}.prototxt")
            with open(path, "w") as f:
                f.write(G.train_net("cifar10", "cpu", args.bits, 2, os.path.join(data, "lmdb", "train"),
                                    os.path.join(data, "triplets.txt"),
                                    mean if os.path.exists(mean) else None, implementation=impl))
            nets[impl] = caffe_time(path, args.iterations, env)
        shares = {}
        for impl, (layers, total) in nets.items():
            loss_ms = sum(layers.get((name, d), 0.0) for name in ("tqn_loss", "triplet_loss")
                          for d in ("forward", "backward"))
            tqn_ms = layers[("tqn_loss", "forward")] + layers[("tqn_loss", "backward")]
            shares[impl] = dict(iteration_ms=total, tqn_loss_ms=tqn_ms, both_losses_ms=loss_ms,
                                tqn_share=tqn_ms / total, data_forward_ms=layers[("data", "forward")])
        result["sections"]["iteration"] = dict(status="done", **shares)
        # 3. The data layer: loading one batch (the prefetch thread's work).
        data_only = os.path.join(tmp, "data_only.prototxt")
        with open(data_only, "w") as f:
            net = G.train_net("cifar10", "cpu", args.bits, 2, os.path.join(data, "lmdb", "train"),
                              os.path.join(data, "triplets.txt"), mean if os.path.exists(mean) else None)
            f.write(net.split("\nlayer {\n  name: \"conv1\"")[0] + "\n")
        layers, load_total = caffe_time(data_only, args.iterations, env)
        cpp = shares["cpp"]
        result["sections"]["data_layer"] = dict(
            status="done", forward_in_iteration_ms=cpp["data_forward_ms"],
            forward_share=cpp["data_forward_ms"] / cpp["iteration_ms"],
            batch_load_ms=load_total, batch_load_share=load_total / cpp["iteration_ms"])
    cpp, py = shares["cpp"], shares["python"]
    d = result["sections"]["data_layer"]
    result["goals"] = [
        dict(goal="C++ TQN loss <= 1% of a CPU training iteration", met=cpp["tqn_share"] <= 0.01,
             detail=f"{cpp['tqn_loss_ms']:.3f} ms of {cpp['iteration_ms']:.1f} ms = {cpp['tqn_share']:.3%}"),
        dict(goal="Python TQN layer within 3x of the C++ one",
             met=alone[("TripletQuantizationLoss", "python")] <= 3 * alone[("TripletQuantizationLoss", "cpp")],
             detail=f"alone: {alone[('TripletQuantizationLoss', 'python')]:.3f} ms vs "
                    f"{alone[('TripletQuantizationLoss', 'cpp')]:.3f} ms (a Python layer that computes "
                    f"nothing: {alone[('noop', 'python')]:.3f} ms); in the net: "
                    f"{py['tqn_loss_ms']:.3f} ms vs {cpp['tqn_loss_ms']:.3f} ms"),
        dict(goal="data layer <= 5% of an iteration",
             met=max(d["forward_share"], d["batch_load_share"]) <= 0.05,
             detail=f"forward {d['forward_in_iteration_ms']:.2f} ms ({d['forward_share']:.2%}); "
                    f"loading a batch {d['batch_load_ms']:.2f} ms ({d['batch_load_share']:.2%})")]
    md += ["| loss layer alone (fwd+bwd, ms) | C++ | Python | Python / C++ |", "|---|---:|---:|---:|"]
    for kind in ("TripletLoss", "TripletQuantizationLoss"):
        c, p = alone[(kind, "cpp")], alone[(kind, "python")]
        md.append(f"| {kind} | {c:.3f} | {p:.3f} | {p / c:.1f} |")
    md.append(f"| floor: a Python loss layer that computes nothing (bench/noop_layer.py) | – | "
              f"{alone[('noop', 'python')]:.3f} | – |")
    md += ["", "| step-2 net, `caffe time` | C++ loss | Python loss |", "|---|---:|---:|",
           f"| forward+backward of an iteration, ms | {cpp['iteration_ms']:.1f} | {py['iteration_ms']:.1f} |",
           f"| TQN loss layer, ms | {cpp['tqn_loss_ms']:.3f} | {py['tqn_loss_ms']:.3f} |",
           f"| TQN loss share | {cpp['tqn_share']:.3%} | {py['tqn_share']:.3%} |",
           f"| data layer forward, ms | {cpp['data_forward_ms']:.2f} | {py['data_forward_ms']:.2f} |", "",
           f"Loading one batch (96 images: LMDB read, transform; the prefetch thread's work): "
           f"{d['batch_load_ms']:.2f} ms = {d['batch_load_share']:.2%} of an iteration.", "",
           "| goal | met | measured |", "|---|---|---|"]
    md += [f"| {g['goal']} | {'yes' if g['met'] else 'NO'} | {g['detail']} |" for g in result["goals"]]
    common.write_result("training", result)
    common.update_readme("training", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
