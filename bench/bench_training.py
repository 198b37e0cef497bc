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
  vs_pytorch   (--vs-pytorch) Caffe against PyTorch CPU on the identical net, batch and thread
               count, side by side in one run: `caffe time` of the step-1 net with its data
               layer replaced by an Input of 96 x 3 x 32 x 32 against PyTorch's forward+backward;
               real `caffe train` (data layer, solver; images/s from the log's iter/s) against
               PyTorch SGD steps on an in-memory batch; the AlexNet-scale net (227 x 227) the
               same way for a few iterations; per-layer tables. PyTorch is a bench-only
               dependency: installed on demand (CPU wheel, `pip install torch==2.13.0`) into its
               own virtual environment $TQN_CACHE/bench-torch-venv, never needed by tests or CI.
               `python bench/bench_training.py --vs-pytorch [--data DIR] [--threads 2]`.
Goals (issue: evaluation and search at the hardware limit): C++ TQN loss <= 1 % of a CPU
training iteration; the Python layer within 3x of the C++ one; the data layer <= 5 %.
"""
import argparse
import json
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


BLAS_VARIANTS = {v: f"/usr/lib/x86_64-linux-gnu/openblas-{v}" for v in ("pthread", "openmp")}
TORCH_REQ = "torch==2.13.0"  # the CPU wheel; the bench never installs a CUDA build
TRAIN_LINE = re.compile(r"Iteration (\d+) \((-?[\d.e+-]+) iter/s, [\d.]+s/\d+ iters\)")


def torch_python():
    """The bench's own PyTorch environment, made on first use (tests and CI never need it)."""
    cache = os.environ.get("TQN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tqn-caffe")
    venv = os.path.join(cache, "bench-torch-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py) or subprocess.run([py, "-c", "import torch"], capture_output=True).returncode:
        print(f"[bench] installing {TORCH_REQ} (CPU) into {venv}", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH_REQ], check=True)
    return py


def _net_with_input(net_text, batch, side):
    """The net with its data layer replaced by an Input blob `data` of batch x 3 x side x side."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = text_format.Parse(net_text, caffe_pb2.NetParameter())
    first = net.layer[0]
    inp = caffe_pb2.LayerParameter(name="data", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[batch, 3, side, side])
    first.CopyFrom(inp)
    return net


def torch_spec(net, batch, side):
    """The layer list torch_net.py builds: the chain from the image to `hash`."""
    layers, margin = [], 1.0
    for ly in net.layer:
        t, name = ly.type, ly.name
        if t == "Convolution":
            c = ly.convolution_param
            layers.append(dict(name=name, op="conv", num=c.num_output, kernel=c.kernel_size[0],
                               stride=c.stride[0] if c.stride else 1, pad=c.pad[0] if c.pad else 0,
                               group=c.group))
        elif t == "Pooling":
            q = ly.pooling_param
            layers.append(dict(name=name, op="pool", kind="max" if q.pool == q.MAX else "ave",
                               kernel=q.kernel_size, stride=q.stride, pad=q.pad))
        elif t in ("ReLU", "Sigmoid", "Flatten"):
            layers.append(dict(name=name, op=t.lower()))
        elif t == "LRN":
            q = ly.lrn_param
            layers.append(dict(name=name, op="lrn", size=q.local_size, alpha=q.alpha, beta=q.beta))
        elif t == "InnerProduct":
            layers.append(dict(name=name, op="fc", num=ly.inner_product_param.num_output))
        elif t == "Dropout":
            layers.append(dict(name=name, op="dropout", ratio=ly.dropout_param.dropout_ratio))
        elif t == "TripletLoss" and (not ly.loss_weight or ly.loss_weight[0] > 0):
            margin = ly.triplet_loss_param.margin
        elif t in ("Input", "Slice", "TripletLoss", "TripletQuantizationLoss"):
            continue
        else:
            raise ValueError(f"bench: no PyTorch counterpart for layer {name} ({t})")
    return dict(input=[batch, 3, side, side], layers=layers, margin=margin)


def _caffe_train(net_text, solver_text, tmp, tag, env):
    """Real `caffe train`: returns images/s from the log's iter/s (the first display skipped)."""
    net_path, solver_path = os.path.join(tmp, f"{tag}_train.prototxt"), os.path.join(tmp, f"{tag}_solver.prototxt")
    with open(net_path, "w") as f:
        f.write(net_text)
    with open(solver_path, "w") as f:
        f.write(solver_text.replace("__NET__", net_path))
    log = os.path.join(tmp, f"{tag}_train.log")
    caffe = os.path.join(os.environ["CAFFE_BUILD"], "tools", "caffe")
    with open(log, "w") as f:
        run = subprocess.run([caffe, "train", f"-solver={solver_path}"], stdout=f, stderr=subprocess.STDOUT, env=env)
    with open(log) as f:
        text = f.read()
    if run.returncode != 0:
        raise RuntimeError(f"caffe train failed (log {log}):\n{text[-3000:]}")
    # Iteration 0's rate covers only the set-up; the later ones are steady-state training.
    rates = [float(m.group(2)) for m in TRAIN_LINE.finditer(text) if int(m.group(1)) > 0]
    if not rates:
        raise RuntimeError(f"caffe train logged no iter/s line after iteration 0 (log {log})")
    return sum(rates) / len(rates)


def vs_pytorch_run(args, tmp):
    th = args.threads
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0",
               OPENBLAS_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
    tpy = torch_python()
    out = dict(threads=th, nets={})
    for scale, side, iters in (("cpu", 32, args.iterations), ("paper", 227, args.alexnet_iterations)):
        bs = 96
        # The data layer is replaced by an Input: its sources and mean file are never read.
        text = G.train_net("cifar10", scale, args.bits, 1, "unused", "unused", "unused.binaryproto")
        net = _net_with_input(text, bs, side)
        model = os.path.join(tmp, f"{scale}_input.prototxt")
        from google.protobuf import text_format
        with open(model, "w") as f:
            f.write(text_format.MessageToString(net))
        layers, caffe_ms = caffe_time(model, iters, env)
        spec = dict(torch_spec(net, bs, side), threads=th, iterations=iters,
                    train_iterations=max(2, iters if scale == "paper" else 3 * iters))
        spec_path = os.path.join(tmp, f"{scale}_spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        run = subprocess.run([tpy, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_net.py"),
                              spec_path], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"bench/torch_net.py failed:\n{run.stderr[-3000:]}")
        t = json.loads(run.stdout.strip().splitlines()[-1])
        entry = dict(batch=bs, side=side, iterations=iters, torch=t["torch"],
                     caffe_time_ms=caffe_ms, torch_forward_backward_ms=t["forward_backward_ms"],
                     torch_train_step_ms=t["train_ms"],
                     caffe_time_images_s=bs * 1000 / caffe_ms,
                     torch_images_s=bs * 1000 / t["forward_backward_ms"],
                     torch_train_images_s=bs * 1000 / t["train_ms"],
                     ratio_caffe_time=t["forward_backward_ms"] / caffe_ms,
                     layers={f"{n}/{d}": dict(caffe=ms, torch=t["layers"].get(f"{n}/{d}"))
                             for (n, d), ms in layers.items() if n != "data" and not n.endswith("_split")})
        if scale == "cpu":
            # The BLAS lever: Debian's OpenBLAS variants (pthreads, OpenMP), picked per run
            # through the library path (Caffe links libopenblas.so.0), at 1 and `th` threads.
            entry["caffe_time_blas_ms"] = {}
            for variant, folder in BLAS_VARIANTS.items():
                if not os.path.exists(os.path.join(folder, "libopenblas.so.0")):
                    continue
                for n in sorted({1, th}):
                    venv_ = dict(env, OPENBLAS_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n),
                                 LD_LIBRARY_PATH=os.pathsep.join(
                                     [folder] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])))
                    entry["caffe_time_blas_ms"][f"{variant}/{n}"] = caffe_time(model, iters, venv_)[1]
        if scale == "cpu" and args.data:
            data = os.path.abspath(args.data)
            mean = os.path.join(data, "mean.binaryproto")
            train_text = G.train_net("cifar10", "cpu", args.bits, 1, os.path.join(data, "lmdb", "train"),
                                     os.path.join(data, "triplets.txt"), mean if os.path.exists(mean) else None)
            solver_text = G.solver("cifar10", "cpu", 1, "__NET__", args.train_iterations,
                                   os.path.join(tmp, "snap"), 0, display=10)
            ips = _caffe_train(train_text, solver_text, tmp, scale, env) * bs
            entry.update(caffe_train_images_s=ips, ratio_caffe_train=ips / entry["torch_train_images_s"],
                         train_iterations=args.train_iterations)
        out["nets"][scale] = entry
    return out


def vs_pytorch_markdown(sec, command, machine_line):
    md = ["## Training: Caffe against PyTorch CPU on the same net", "",
          f"Machine: {machine_line}.", "", f"Command: `{command}`; both with {sec['threads']} threads "
          "(OpenBLAS / OpenMP threads for Caffe, `torch.set_num_threads` for PyTorch), batch 96 "
          "(32 triplets), one run, side by side. PyTorch's training steps read an in-memory batch; "
          "`caffe train` reads its LMDB through the TripletData layer (prefetch thread).", "",
          "| net | Caffe `caffe time` img/s | PyTorch fwd+bwd img/s | ratio | Caffe `caffe train` img/s "
          "| PyTorch SGD step img/s | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for scale, e in sec["nets"].items():
        label = "CPU-scale (cifar_quick, 32x32)" if scale == "cpu" else "AlexNet-scale (227x227)"
        tr = (f"{e['caffe_train_images_s']:.0f} | {e['torch_train_images_s']:.0f} | {e['ratio_caffe_train']:.2f}x"
              if "caffe_train_images_s" in e else f"– | {e['torch_train_images_s']:.0f} | –")
        md.append(f"| {label} | {e['caffe_time_images_s']:.0f} | {e['torch_images_s']:.0f} | "
                  f"{e['ratio_caffe_time']:.2f}x | {tr} |")
    blas = sec["nets"].get("cpu", {}).get("caffe_time_blas_ms", {})
    if blas:
        md += ["", "Caffe's `caffe time` on the CPU-scale net by Debian OpenBLAS variant / threads "
               "(LD_LIBRARY_PATH picks the variant):", "", "| OpenBLAS / threads | ms per batch | images/s |",
               "|---|---:|---:|"]
        md += [f"| {k} | {v:.1f} | {96000 / v:.0f} |" for k, v in blas.items()]
    for scale, e in sec["nets"].items():
        md += ["", f"Per layer, {scale} net (ms per batch; PyTorch from module hooks, PyTorch {e['torch']}):", "",
               "| layer | Caffe | PyTorch |", "|---|---:|---:|"]
        for k, v in e["layers"].items():
            tv = f"{v['torch']:.2f}" if v["torch"] is not None else "–"
            md.append(f"| {k} | {v['caffe']:.2f} | {tv} |")
    return md


def vs_pytorch_main(args, argv):
    command = "python bench/bench_training.py " + " ".join(argv or sys.argv[1:])
    machine = common.machine()
    path = os.path.join(common.RESULTS, "training.json")
    result = dict(bench="training", schema=common.SCHEMA, machine=machine, command=command,
                  config={}, sections={}, goals=[])
    if os.path.exists(path):  # keep the other sections of the last full run
        with open(path) as f:
            result = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        sec = vs_pytorch_run(args, tmp)
    sec.update(status="done", machine=machine, command=command)
    result["sections"]["vs_pytorch"] = sec
    md = vs_pytorch_markdown(sec, command, common.machine_line(machine))
    common.write_result("training", result)
    common.update_readme("training_vs_pytorch", "\n".join(md))
    print("\n".join(md))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a data_prep folder of 32x32 images (required unless --vs-pytorch)")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--vs-pytorch", action="store_true",
                    help="only the side-by-side Caffe / PyTorch section (real training needs --data)")
    ap.add_argument("--threads", type=int, default=2, help="--vs-pytorch: threads of both")
    ap.add_argument("--train-iterations", type=int, default=60, help="--vs-pytorch: caffe train iterations")
    ap.add_argument("--alexnet-iterations", type=int, default=3, help="--vs-pytorch: AlexNet-scale iterations")
    args = ap.parse_args(argv)
    if "CAFFE_BUILD" not in os.environ:
        sys.exit("run `. tools/env.sh` first (it builds Caffe and sets CAFFE_BUILD)")
    if args.vs_pytorch:
        return vs_pytorch_main(args, argv)
    if not args.data:
        ap.error("--data is required (unless --vs-pytorch)")
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
