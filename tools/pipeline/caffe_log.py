"""Reads `caffe train` logs: every displayed iteration's net outputs (report.py plots them).

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
