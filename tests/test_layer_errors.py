"""Bad configuration and bad input fail with a message that names the layer and the problem, in
the C++ layers (a glog fatal error, so each case runs in its own process) and the Python ones."""
import subprocess
import sys
import textwrap

import pytest

INPUTS = """
layer {{ name: "a" type: "Input" top: "a" input_param {{ shape {{ dim: 4 dim: 3 }} }} }}
layer {{ name: "p" type: "Input" top: "p" input_param {{ shape {{ dim: {pbs} dim: 3 }} }} }}
layer {{ name: "n" type: "Input" top: "n" input_param {{ shape {{ dim: 4 dim: 3 }} }} }}
"""
CPP = 'layer {{ name: "loss" type: "{type}" bottom: "a" bottom: "p" bottom: "n" top: "l" {param} }}'
PY = ('layer {{ name: "loss" type: "Python" bottom: "a" bottom: "p" bottom: "n" top: "l" '
      'python_param {{ module: "tqn_layers" layer: "{type}Layer" param_str: "{param_str}" }} '
      'loss_weight: 1 }}')

SCRIPT = """
import math, sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
if sys.argv[2] == "nan":
    net.blobs["a"].data[...] = 0.5
    net.blobs["a"].data[0, 1] = math.nan
net.forward()
print("NO ERROR")
"""

CASES = [
    # (type, parameter text, positive batch, poke NaN, expected message)
    ("TripletLoss", "margin: 1.6", 5, False,
     "the positive bottom has shape 5 3 (15) but the anchor bottom has 4 3 (12)"),
    ("TripletLoss", "margin: -1", 4, False,
     "triplet_loss_param.margin is -1; it must be a finite number >= 0"),
    ("TripletQuantizationLoss", "beta: 8", 4, False,
     "triplet_quantization_loss_param.alpha_d is required"),
    ("TripletQuantizationLoss", "alpha_d: 3.83 delta: 0", 4, False,
     "triplet_quantization_loss_param.delta is 0; it must be a finite number > 0"),
    ("TripletQuantizationLoss", "alpha_d: 3.83 alpha_s: -0.1", 4, False,
     "triplet_quantization_loss_param.alpha_s is -0.1; it must be a finite number >= 0"),
    ("TripletQuantizationLoss", "alpha_d: 3.83", 4, True,
     "the anchor bottom holds nan at row 0, column 1"),
    ("TripletLoss", "", 4, True, "the anchor bottom holds nan at row 0, column 1"),
]
PARAM_MESSAGE = {"TripletLoss": "triplet_loss_param", "TripletQuantizationLoss":
                 "triplet_quantization_loss_param"}


def run_net(tmp_path, env, layer_text, pbs, nan):
    path = tmp_path / "net.prototxt"
    path.write_text(INPUTS.format(pbs=pbs) + layer_text)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(path),
                           "nan" if nan else "-"], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("kind", ["cpp", "python"])
@pytest.mark.parametrize("layer_type, param, pbs, nan, message", CASES)
def test_bad_configuration_is_named(tmp_path, subprocess_env, kind, layer_type, param, pbs, nan,
                                    message):
    if kind == "cpp":
        text = CPP.format(type=layer_type, param=f"{PARAM_MESSAGE[layer_type]} {{ {param} }}")
    else:
        text = PY.format(type=layer_type, param_str=param)
        # The Python layers list the three shapes as tuples.
        if message.startswith("the positive bottom has shape"):
            message = "bottoms have shapes [(4, 3), (5, 3), (4, 3)]"
    run = run_net(tmp_path, subprocess_env, text, pbs, nan)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert message in run.stderr, run.stderr[-3000:]
    assert "loss" in run.stderr or "Triplet" in run.stderr  # names the layer
