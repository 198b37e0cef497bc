"""Reads `caffe train` logs: every displayed iteration's net outputs (report.py plots them).

Caffe prints, every `display` iterations,

    ... solver.cpp:...] Iteration 40 (21.5 iter/s, 0.93s/20 iters), loss = 0.61
    ... solver.cpp:...]     Train net output #0: triplet_loss = 0.61 (* 1 = 0.61 loss)
    ... solver.cpp:...]     Train net output #1: tqn_loss = 9.87 (* 0 = 0 loss)

`parse` turns that into {output name: [(iteration, value), ...]} ("loss" is the weighted total).
A log may hold several invocations of `caffe train` (a run resumed from a snapshot appends to
its step's log): tools.pipeline.caffe.run_caffe starts each with a line `# <command>`. A resumed
invocation computes again the iterations after its snapshot, so `parse` drops the earlier
invocation's points from the resumed one's first iteration on, and `wall_seconds` sums the
invocations' own spans (glog's time stamps, first to last line of each).
"""
import datetime
import os
import re

ITERATION = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
OUTPUT = re.compile(r"\]\s+Train net output #\d+: (\S+) = (\S+)")
INVOCATION = "# "  # run_caffe's first line of each invocation: "# <command>"
RESUMED = "-snapshot="  # in that command: the invocation resumes from a snapshot
STAMP = re.compile(r"^[IWEF](\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?) ")


def parse(text):
    curves = {}
    iteration = None
    resumed = False  # the next iteration line is an invocation's first
    for line in text.splitlines():
        if line.startswith(INVOCATION):
            resumed, iteration = True, None
            continue
        m = ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
            if resumed:  # this invocation recomputes everything from `iteration` on
                for name in curves:
                    curves[name] = [(i, v) for i, v in curves[name] if i < iteration]
                resumed = False
            curves.setdefault("loss", []).append((iteration, float(m.group(2))))
            continue
        m = OUTPUT.search(line)
        if m and iteration is not None:
            curves.setdefault(m.group(1), []).append((iteration, float(m.group(2))))
    return curves


def _stamp(match):
    """A glog time stamp as (datetime, whether it names its year). glog >= 0.6 writes
    yyyymmdd, older versions mmdd: those are read on a leap year's calendar."""
    year = match.group(1)
    month, day, hour, minute = (int(match.group(k)) for k in range(2, 6))
    t = datetime.datetime(int(year) if year else 2000, month, day, hour, minute)
    return t + datetime.timedelta(seconds=float(match.group(6))), bool(year)


def wall_seconds(text):
    """Wall seconds of the `caffe train` invocations that made the step's current training:
    per invocation its latest time stamp less its first, summed from the last invocation that
    started afresh (a `# ` line without `-snapshot=`) on; a log without `# ` lines is read as
    one invocation. Stamps out of order (glog threads, a clock step back, the autumn
    daylight-saving hour) never lengthen a span beyond its latest stamp; the repeated autumn
    hour (glog writes local time) can shorten it by up to that hour. Where the
    stamps carry no year (glog < 0.6), a stamp more than 300 days before the latest one is the
    next year's (366 days on, exact on the leap-year calendar such stamps are read on; only a
    span over 28 February - 1 March of a common year reads a day too long)."""
    total, first, last, years = 0.0, None, None, 0
    for line in text.splitlines():
        if line.startswith(INVOCATION):
            if first is not None:
                total += (last - first).total_seconds()
            if RESUMED not in line:
                total = 0.0  # a fresh start: what came before trained another model
            first = last = None
            years = 0
            continue
        m = STAMP.match(line)
        if m:
            t, dated = _stamp(m)
            if not dated:
                t += datetime.timedelta(days=366 * years)
                if last is not None and t < last - datetime.timedelta(days=300):
                    years += 1
                    t += datetime.timedelta(days=366)
            first = t if first is None else first
            last = t if last is None else max(last, t)
    return total + ((last - first).total_seconds() if first is not None else 0.0)


def step_log(run, step):
    """The log of step `step` of the run folder `run` (every invocation appended)."""
    return os.path.join(run, "logs", f"step{step}.log")


def file_wall_seconds(path):
    """wall_seconds of the log at `path` (0 when there is no log)."""
    if not os.path.exists(path):
        return 0.0
    with open(path, errors="replace") as f:
        return wall_seconds(f.read())


def parse_file(path):
    with open(path, errors="replace") as f:
        return parse(f.read())
