"""Smoke trainings through the stock `caffe train -solver`: a tiny net per loss, with the C++
and the Python layer, on the embedded digits data; the loss must fall."""
import subprocess

import numpy as np
import pytest

from prototxt import generate as G
from tools.pipeline import caffe_log


def train(tmp_path, caffe_build, env, data, step, implementation, iters=240):
    net = G.train_net("digits", "cpu", 12, step, str(data / "lmdb" / "train"),
                      str(data / "triplets.txt"), implementation=implementation)
    (tmp_path / "net.prototxt").write_text(net)
    solver = G.solver("digits", "cpu", step, str(tmp_path / "net.prototxt"), iters,
                      str(tmp_path / "snap"), seed=3, base_lr=0.01, display=10)
    (tmp_path / "solver.prototxt").write_text(solver)
    run = subprocess.run([caffe_build["caffe"], "train", f"-solver={tmp_path / 'solver.prototxt'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / f"snap_iter_{iters}.caffemodel").exists()
    return caffe_log.parse(run.stderr)


@pytest.mark.parametrize("implementation", ["cpp", "python"])
@pytest.mark.parametrize("step, loss_name", [(1, "triplet_loss"), (2, "tqn_loss")])
def test_loss_falls(tmp_path, caffe_build, subprocess_env, digits_data, step, loss_name,
                    implementation):
    curves = train(tmp_path, caffe_build, subprocess_env, digits_data, step, implementation)
    values = np.array([v for _, v in curves[loss_name]])
    assert len(values) == 24  # displayed at iterations 0, 10, ..., 230
    first, last = values[:3].mean(), values[-5:].mean()
    assert last < 0.7 * first, f"{loss_name} did not fall: {values.round(3).tolist()}"
    # The other loss is logged with weight 0 (the paper's Fig. 1-2 plot both).
    other = "tqn_loss" if step == 1 else "triplet_loss"
    assert len(curves[other]) == 24 and len(curves[other + ("" if step == 2 else "_s")]) == 24


def test_cpp_and_python_layers_train_alike(tmp_path, caffe_build, subprocess_env, digits_data):
    """Same seed, data and net: the two implementations give the same loss curve (to float
    rounding, which compounds over iterations)."""
    curves = {}
    for implementation in ("cpp", "python"):
        (tmp_path / implementation).mkdir()
        curves[implementation] = train(tmp_path / implementation, caffe_build, subprocess_env,
                                       digits_data, 2, implementation, iters=40)
    va = np.array([v for _, v in curves["cpp"]["tqn_loss"]])
    vb = np.array([v for _, v in curves["python"]["tqn_loss"]])
    np.testing.assert_allclose(va, vb, rtol=1e-3)
