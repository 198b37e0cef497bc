"""Shared plumbing of the benchmarks in bench/ (figures, not tests).

Every bench script writes one JSON file, ``bench/results/<bench>.json``, and one section of
``bench/results/README.md``, delimited by ``<!-- bench:<bench> -->`` and
``<!-- /bench:<bench> -->`` and replaced in place when the bench runs again (other benches'
sections are left alone). A JSON file holds:

    {"bench": name, "schema": 1, "machine": {...}, "command": "...", "config": {...},
     "sections": {section name: {"status": "done" | "pending" | "skipped" | "failed", ...}},
     "goals": [{"goal": ..., "met": true | false | null, "detail": ...}]}

so a later part (a new section of a bench, or a new bench) adds keys without touching the
others.
"""
import datetime
import json
import os
import platform
import resource
import subprocess
import sys

from data_prep.outputs import write_json, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
SCHEMA = 1


def machine():
    """CPU model, cores, load, library versions and date: the machine line of a result."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = dict(cpu=model, cores=os.cpu_count(),
                usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count(),
                python=platform.python_version(), platform=platform.platform(),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    return info


def machine_line(m):
    load, end = m.get("load_average"), m.get("load_average_end")
    return (f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), Python {m['python']}, "
            f"numpy {m.get('numpy')}, faiss {m.get('faiss')}, {m['date']}"
            + (f", load average {load[0]} at start" if load else "")
            + (f", load average {end[0]} at end" if end else ""))


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def run_worker(script, args, env_extra=None, timeout=None):
    """Runs ``python script --worker ...`` in a fresh interpreter (so peak memory is its
    own) and returns the JSON object it prints on its last stdout line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                  else []))
    env.update(env_extra or {})
    run = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         env=env, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed ({run.returncode}):\n"
                           f"{run.stderr.strip()[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def write_result(bench, result):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{bench}.json")
    write_json(path, result, indent=1, sort_keys=False)
    return path


def update_readme(bench, markdown):
    """Create bench/results/README.md or replace / append the section of `bench`."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "README.md")
    start, end = f"<!-- bench:{bench} -->", f"<!-- /bench:{bench} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}\n"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        text = ("# Benchmark results\n\nWritten by the scripts in `bench/` (one section and one "
                "`<bench>.json` per script; rerunning a script replaces its own section).\n\n")
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    write_text(path, text)
    return path
