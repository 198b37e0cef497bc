"""The `caffe` binary of this checkout's build: where it is, and `caffe train` run with its log
in a file and a progress line on the console every 10 %.

Caffe's own log (glog at INFO: the net's set-up, every displayed iteration) is a product of the
run and goes to the log file only; the console gets the progress lines.
"""
import os
import re
import signal
import subprocess
import time

from data_prep.errors import Interrupted
from tools.pipeline import caffe_log
from tools.pipeline.errors import PipelineError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CaffeError(PipelineError):
    """`caffe` could not be found or exited with an error."""


def caffe_binary():
    build = os.environ.get("CAFFE_BUILD")
    if not build:
        raise CaffeError("CAFFE_BUILD is not set: run `. tools/env.sh` first (it builds Caffe)")
    return os.path.join(build, "tools", "caffe")


def git_commit():
    """This checkout's commit, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


ITERATION = re.compile(r"\] Iteration (\d+).*loss = (\S+)")


def progress_line(label, done, total, seconds, extra="", since=0):
    """`label: done/total (p %), rate it/s, time left`: the one progress line format of a runner.
    `since`: the iteration the `seconds` were counted from (a resumed run's snapshot), so the
    rate is of this run's iterations only."""
    rate = (done - since) / seconds if seconds > 0 else 0.0
    left = (total - done) / rate if rate > 0 else 0.0
    return (f"  {label}: {done}/{total} ({100 * done / max(total, 1):.0f} %){extra}, "
            f"{rate:.0f} it/s, {seconds:.0f} s, {left:.0f} s left")


def run_caffe(cmd, log_path, iters, label, quiet=False, verbose=False, resumed=0):
    """Runs a `caffe train` command, appending its log to `log_path` and printing progress
    every 10 % of `iters` (with rate and time left, counted from iteration `resumed`, where a
    resumed run starts); verbose=True echoes every log line to the
    console too; returns the wall seconds. A failure is a CaffeError quoting the log's last
    lines; Ctrl-C lets caffe snapshot and stop, then raises data_prep's Interrupted."""
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")  # the log is a product
    next_report = 0.1
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"{caffe_log.INVOCATION}{' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                if verbose:
                    print(line, end="", flush=True)
                m = ITERATION.search(line)
                if m and not quiet and int(m.group(1)) >= next_report * iters \
                        and int(m.group(1)) > resumed:  # a resumed run's first line: no rate yet
                    print(progress_line(label, int(m.group(1)), iters, time.monotonic() - start,
                                        f", loss {m.group(2)}", since=resumed), flush=True)
                    while next_report * iters <= int(m.group(1)):
                        next_report += 0.1
        except KeyboardInterrupt:
            # Ctrl-C in a terminal reaches caffe too (one process group); when only this process
            # got it, pass it on. `caffe train` (-sigint_effect=stop) then snapshots the current
            # iteration and exits: wait for that, keeping its log.
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            print(f"\n  {label}: Ctrl-C: waiting for caffe to snapshot and stop ...", flush=True)
            log.write(proc.stdout.read())
            proc.wait()
            raise Interrupted(f"{label} stopped by Ctrl-C") from None
        code = proc.wait()
    if code != 0:
        with open(log_path) as f:
            tail = f.readlines()[-15:]
        raise CaffeError(f"{label}: caffe exited with {code}; the log is {log_path}:\n" + "".join(tail))
    return time.monotonic() - start
