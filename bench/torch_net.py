"""PyTorch side of bench/bench_training.py (run in the bench's own PyTorch environment, never by
tests or CI): builds the net described by a JSON layer list (written by bench_training.py from
the Caffe prototxt: the same layers, shapes and batch) and times it on the CPU.

    python bench/torch_net.py SPEC.json     # prints one JSON line

SPEC: {"input": [N, C, H, W], "layers": [{"name", "op", ...}], "threads": T, "iterations": I,
"train_iterations": J, "margin": m}. Timed, after two warm-up iterations:
  forward_backward_ms  forward + backward of one batch (what `caffe time` measures);
  train_ms             one SGD step (momentum, weight decay) on an in-memory batch;
  layers               per-layer forward / backward ms (module hooks, a separate timed pass).
Only the standard library and torch are imported here.
"""
import json
import sys
import time

import torch
from torch import nn


def build(spec):
    """nn.Sequential from the layer list; in-channels are found by running a dummy batch."""
    x = torch.zeros(spec["input"])
    mods = []
    for ly in spec["layers"]:
        op = ly["op"]
        if op == "conv":
            m = nn.Conv2d(x.shape[1], ly["num"], ly["kernel"], stride=ly["stride"], padding=ly["pad"],
                          groups=ly["group"])
        elif op == "pool":
            cls = nn.MaxPool2d if ly["kind"] == "max" else nn.AvgPool2d
            m = cls(ly["kernel"], stride=ly["stride"], padding=ly["pad"], ceil_mode=True)
        elif op == "relu":
            m = nn.ReLU()
        elif op == "sigmoid":
            m = nn.Sigmoid()
        elif op == "lrn":
            m = nn.LocalResponseNorm(ly["size"], alpha=ly["alpha"], beta=ly["beta"], k=1.0)
        elif op == "fc":
            m = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), ly["num"]))
        elif op == "dropout":
            m = nn.Dropout(ly["ratio"])
        elif op == "flatten":
            m = nn.Flatten()
        else:
            raise ValueError(f"layer {ly['name']}: unsupported op {op!r}")
        with torch.no_grad():
            x = m(x)
        mods.append((ly["name"], m))
    return nn.Sequential(*[m for _, m in mods]), [n for n, _ in mods]


def triplet_loss(h, margin):
    a, p, n = h.chunk(3)
    return torch.relu(margin + ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1)).mean()


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    net, names = build(spec)
    net.train()
    x = torch.rand(spec["input"])
    margin = float(spec.get("margin", 1.0))

    def fb():
        net.zero_grad(set_to_none=False)
        triplet_loss(net(x), margin).backward()

    for _ in range(2):
        fb()
    t0 = time.perf_counter()
    for _ in range(spec["iterations"]):
        fb()
    fb_ms = (time.perf_counter() - t0) * 1000 / spec["iterations"]

    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        fb()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(spec["train_iterations"]):
        fb()
        opt.step()
    train_ms = (time.perf_counter() - t0) * 1000 / spec["train_iterations"]

    # Per-layer times: forward/backward hooks record wall-clock stamps around each module.
    stamps = {}

    def mark(key):
        def hook(*_):
            stamps.setdefault(key, []).append(time.perf_counter())
        return hook
    handles = []
    for name, m in zip(names, net):
        handles += [m.register_forward_pre_hook(mark((name, "fs"))), m.register_forward_hook(mark((name, "fe"))),
                    m.register_full_backward_pre_hook(mark((name, "bs"))),
                    m.register_full_backward_hook(mark((name, "be")))]
    reps = max(3, spec["iterations"] // 3)
    for _ in range(reps):
        x.requires_grad_(True)  # so the first layer's backward hook fires
        fb()
    for h in handles:
        h.remove()
    layers = {}
    for name in names:
        for d, (s, e) in (("forward", ("fs", "fe")), ("backward", ("bs", "be"))):
            if (name, s) in stamps and (name, e) in stamps:
                layers[f"{name}/{d}"] = 1000 * sum(b - a for a, b in zip(stamps[(name, s)], stamps[(name, e)])) / reps
    print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(),
                          forward_backward_ms=fb_ms, train_ms=train_ms, layers=layers)))


if __name__ == "__main__":
    main()
