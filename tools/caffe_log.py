"""Reads `caffe train` logs: every displayed iteration's net outputs, and loss-curve plots.

Caffe prints, every `display` iterations,

    ... solver.cpp:...] Iteration 40 (21.5 iter/s, 0.93s/20 iters), loss = 0.61
    ... solver.cpp:...]     Train net output #0: triplet_loss = 0.61 (* 1 = 0.61 loss)
    ... solver.cpp:...]     Train net output #1: tqn_loss = 9.87 (* 0 = 0 loss)

`parse` turns that into {output name: [(iteration, value), ...]} ("loss" is the weighted total).
"""
import re

ITERATION = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
OUTPUT = re.compile(r"\]\s+Train net output #\d+: (\S+) = (\S+)")


def parse(text):
    curves = {}
    iteration = None
    for line in text.splitlines():
        m = ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
            curves.setdefault("loss", []).append((iteration, float(m.group(2))))
            continue
        m = OUTPUT.search(line)
        if m and iteration is not None:
            curves.setdefault(m.group(1), []).append((iteration, float(m.group(2))))
    return curves


def parse_file(path):
    with open(path, errors="replace") as f:
        return parse(f.read())


def plot_curves(panels, path, title):
    """panels: [(panel title, {label: [(iteration, value), ...]}), ...] -> one PNG, a panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (panel_title, curves) in zip(axes[0], panels):
        for label, points in curves.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    import os
    os.replace(tmp, path)
