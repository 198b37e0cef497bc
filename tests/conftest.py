"""Finds the Caffe build (tools/caffe_build/build_caffe.sh writes .build/caffe-cpu.env) and puts pycaffe,
this project's Python layers and the checkout on sys.path, so `pytest tests/` works after a build
even without `. tools/env.sh`."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_env():
    env = {}
    path = os.path.join(ROOT, ".build", "caffe-cpu.env")
    if os.path.exists(path):
        with open(path) as f:
            env.update(line.strip().split("=", 1) for line in f if "=" in line)
    for key in ("CAFFE_ROOT", "CAFFE_BUILD", "TQN_PYTHON"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


BUILD = _build_env()
for path in (ROOT, os.path.join(ROOT, "layers", "python"),
             os.path.join(BUILD["CAFFE_ROOT"], "python") if "CAFFE_ROOT" in BUILD else None):
    if path and path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("GLOG_minloglevel", "2")  # pycaffe: warnings and errors only


@pytest.fixture(scope="session")
def caffe_build():
    """Paths of the Caffe build: CAFFE_ROOT (source + pycaffe), CAFFE_BUILD, TQN_PYTHON, and
    the `caffe` and gtest binaries."""
    if "CAFFE_BUILD" not in BUILD:
        pytest.fail("no Caffe build: run tools/caffe_build/build_caffe.sh (or tests/run.sh) first")
    paths = dict(BUILD)
    paths["caffe"] = os.path.join(BUILD["CAFFE_BUILD"], "tools", "caffe")
    paths["gtest"] = os.path.join(BUILD["CAFFE_BUILD"], "test", "test.testbin")
    return paths


@pytest.fixture(scope="session")
def subprocess_env(caffe_build):
    """Environment for child processes (caffe, python) that need pycaffe and the layers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, os.path.join(ROOT, "layers", "python"), os.path.join(caffe_build["CAFFE_ROOT"], "python")]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # The Python embedded in the `caffe` binary (Python layers) finds its environment through
    # the first python3 on PATH: make it the virtual environment's.
    if caffe_build.get("TQN_PYTHON"):
        env["PATH"] = os.path.dirname(caffe_build["TQN_PYTHON"]) + os.pathsep + env.get("PATH", "")
    env["GLOG_logtostderr"] = "1"
    env.pop("GLOG_minloglevel", None)
    return env


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory):
    """A data_prep build of scikit-learn's digits (the embedded default data set): 4 epochs of
    triplets, protocol "digits", seed 0."""
    from data_prep import build
    out = tmp_path_factory.mktemp("digits") / "data"
    assert build.main(["--dataset", "digits", "--out", str(out), "--epochs", "4", "--quiet"]) == 0
    return out
