"""DQN's pairwise cosine loss: the numpy math (`tqn_layers.dqn.pairwise_cosine_loss`) against
hand computations, brute-force loops and finite differences; the Python layer against the C++
layer ("PairwiseCosineLoss") in one pycaffe float32 net; and the errors of both layers."""
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tqn_layers import dqn

from triplet_data import numeric_gradient

# The hand-computed case of the gtest (test_pairwise_cosine_loss_layer.cpp), worked in its comment.
HAND_Z = np.array([[3.0, 4.0], [4.0, -3.0], [0.0, -2.0]])
HAND_LABELS = np.array([0, 0, 1])


def brute_force_loss(z, labels, similar_value=1.0, dissimilar_value=-1.0):
    """The formula as written, one ordered pair at a time."""
    rows = [list(map(float, row)) for row in np.asarray(z).reshape(len(z), -1)]
    labels = list(np.ravel(labels))
    n = len(rows)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dot = sum(a * b for a, b in zip(rows[i], rows[j]))
            cos = dot / (math.sqrt(sum(a * a for a in rows[i])) * math.sqrt(sum(b * b for b in rows[j])))
            s = similar_value if labels[i] == labels[j] else dissimilar_value
            total += (s - cos) ** 2
    return total / (n * (n - 1))


def random_batch(rng, n, shape_rest, classes=3):
    """tanh-range rows (norms kept away from 0) and labels with both kinds of pair."""
    z = rng.uniform(-1, 1, (n,) + tuple(shape_rest))
    flat = z.reshape(n, -1)
    small = np.linalg.norm(flat, axis=1) < 0.3
    flat[small] += 0.5
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    return z, labels.astype(np.float64)


def test_hand_computed():
    loss, grad = dqn.pairwise_cosine_loss(HAND_Z, HAND_LABELS)
    assert loss == pytest.approx(1.2, abs=1e-12)
    np.testing.assert_allclose(grad, [[-1.408 / 15, 1.056 / 15], [-0.1824, -0.2432], [1.4 / 3, 0]],
                               atol=1e-12)
    assert dqn.pairwise_cosine_loss(HAND_Z, HAND_LABELS, dissimilar_value=0)[0] == \
        pytest.approx(2 / 3, abs=1e-12)
    # N = 2: one pair, both orders; c = 1/sqrt(2)
    two = dqn.pairwise_cosine_loss([[1.0, 0.0], [1.0, 1.0]], [7, 7])[0]
    assert two == pytest.approx((1 - 1 / math.sqrt(2)) ** 2, abs=1e-12)


@pytest.mark.parametrize("n, shape_rest, values", [
    (8, (5,), {}),
    (8, (5,), dict(similar_value=0.7, dissimilar_value=-0.2)),
    (2, (3,), dict(dissimilar_value=0.0)),
    (13, (2, 3, 2), {}),
    (6, (300,), {}),  # DQN's bottleneck width
])
def test_matches_brute_force_loops(n, shape_rest, values):
    rng = np.random.default_rng(n)
    z, labels = random_batch(rng, n, shape_rest)
    loss, grad = dqn.pairwise_cosine_loss(z, labels, **values)
    assert loss == pytest.approx(brute_force_loss(z, labels, **values), rel=1e-12, abs=1e-14)
    assert grad.shape == z.shape


def test_parameters_change_the_loss():
    z, labels = random_batch(np.random.default_rng(3), 8, (5,))
    default = dqn.pairwise_cosine_loss(z, labels)[0]
    assert dqn.pairwise_cosine_loss(z, labels, similar_value=1, dissimilar_value=-1)[0] == default
    assert abs(dqn.pairwise_cosine_loss(z, labels, dissimilar_value=0)[0] - default) > 0.01
    assert abs(dqn.pairwise_cosine_loss(z, labels, similar_value=0.5)[0] - default) > 0.01


@pytest.mark.parametrize("values, loss_weight", [
    ({}, 1.0),
    ({}, 2.5),
    (dict(similar_value=0.7, dissimilar_value=-0.2), -1.3),
])
def test_gradient_matches_finite_differences(values, loss_weight):
    rng = np.random.default_rng(5)
    z, labels = random_batch(rng, 7, (2, 2))
    grad = dqn.pairwise_cosine_loss(z, labels, loss_weight=loss_weight, **values)[1]
    f = lambda z: loss_weight * dqn.pairwise_cosine_loss(z, labels, **values)[0]
    np.testing.assert_allclose(grad, numeric_gradient(f, [z], 0), atol=1e-8)
    # The loss ignores the rows' lengths: each row's gradient is orthogonal to the row.
    flat_z, flat_g = z.reshape(7, -1), grad.reshape(7, -1)
    np.testing.assert_allclose((flat_z * flat_g).sum(1), 0, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(z=np.ones((1, 3)), labels=[0]), "the batch has N = 1; the pairwise cosine loss needs N >= 2"),
    (dict(z=np.ones((4, 3)), labels=[0] * 5),
     "the label bottom has 5 values but the feature bottom has 4 rows; give one label per row"),
    (dict(z=np.ones((4, 0)), labels=[0] * 4), "the rows of the feature bottom are empty"),
    (dict(z=np.ones((4, 3)), labels=[0] * 4, similar_value=math.inf),
     "pairwise_cosine_loss_param.similar_value is inf; it must be a finite number"),
    (dict(z=np.ones((4, 3)), labels=[0] * 4, dissimilar_value=math.nan),
     "pairwise_cosine_loss_param.dissimilar_value is nan; it must be a finite number"),
    (dict(z=[[1, 2, 3], [1, math.nan, 0], [1, 1, 1]], labels=[0, 1, 2]),
     "the feature bottom holds nan at row 1, column 1"),
    (dict(z=[[1, 2, 3], [0, 0, 0], [1, 1, 1]], labels=[0, 1, 2]),
     "row 1 of the feature bottom has norm 0"),
    (dict(z=np.ones((3, 2)), labels=[0, math.inf, 2]), "the label bottom holds inf at row 1"),
])
def test_numpy_errors(kwargs, message):
    with pytest.raises(ValueError, match="Layer 'PairwiseCosineLoss': " + re.escape(message)):
        dqn.pairwise_cosine_loss(**kwargs)


NET = """
layer {{ name: "z" type: "Input" top: "z" input_param {{ shape {{ dim: {n} dim: 3 dim: 4 }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: {n} }} }} }}
layer {{ name: "split" type: "Split" bottom: "z" top: "z_cpp" top: "z_py" }}
layer {{ name: "cpp" type: "PairwiseCosineLoss" bottom: "z_cpp" bottom: "label" top: "cpp_loss"
        pairwise_cosine_loss_param {{ {param} }} loss_weight: {w} }}
layer {{ name: "py" type: "Python" bottom: "z_py" bottom: "label" top: "py_loss"
        python_param {{ module: "tqn_layers" layer: "PairwiseCosineLossLayer" param_str: "{param}" }}
        loss_weight: {w} }}
force_backward: true
"""


@pytest.mark.parametrize("param, values", [
    ("", {}),
    ("similar_value: 0.7 dissimilar_value: 0", dict(similar_value=0.7, dissimilar_value=0.0)),
])
def test_python_layer_matches_cpp_layer_in_pycaffe(tmp_path, caffe_build, param, values):
    import caffe
    n, w = 10, 2.5
    (tmp_path / "net.prototxt").write_text(NET.format(n=n, param=param, w=w))
    caffe.set_mode_cpu()
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    rng = np.random.default_rng(17)
    z, labels = random_batch(rng, n, (3, 4))
    net.blobs["z"].data[...] = z
    net.blobs["label"].data[...] = labels
    net.forward()
    z32 = z.astype(np.float32).astype(np.float64)
    want_loss, want_grad = dqn.pairwise_cosine_loss(z32, labels, loss_weight=w, **values)
    cpp_loss, py_loss = float(net.blobs["cpp_loss"].data), float(net.blobs["py_loss"].data)
    assert cpp_loss == pytest.approx(want_loss, rel=1e-5)
    assert py_loss == pytest.approx(want_loss, rel=1e-6)
    net.backward()
    # Each layer's gradient lands in its own split top; the Input blob gets their sum.
    assert np.abs(want_grad).max() > 1e-3
    np.testing.assert_allclose(net.blobs["z_cpp"].diff, want_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.blobs["z_py"].diff, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs["z"].diff, 2 * want_grad, rtol=1e-4, atol=1e-6)


ERROR_INPUTS = """
layer {{ name: "z" type: "Input" top: "z" input_param {{ shape {{ dim: {n} dim: 3 }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: {nl} }} }} }}
"""
# Labels computed from the features by a learnable layer: Caffe asks the loss for their gradient.
LEARNED_LABELS = """
layer {{ name: "z" type: "Input" top: "z" input_param {{ shape {{ dim: {n} dim: 3 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "z" top: "label"
        inner_product_param {{ num_output: 1 weight_filler {{ type: "constant" value: 1 }} }} }}
"""
CPP = ('layer {{ name: "dqn_cos" type: "PairwiseCosineLoss" bottom: "z" bottom: "label" top: "l" '
       'pairwise_cosine_loss_param {{ {param} }} }}')
PY = ('layer {{ name: "dqn_cos" type: "Python" bottom: "z" bottom: "label" top: "l" '
      'python_param {{ module: "tqn_layers" layer: "PairwiseCosineLossLayer" '
      'param_str: "{param}" }} loss_weight: 1 }}')

SCRIPT = """
import math, sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
n = net.blobs["z"].data.shape[0]
net.blobs["z"].data[...] = np.random.default_rng(0).uniform(0.2, 1, net.blobs["z"].data.shape)
if "label" in net.blobs and net.blobs["label"].data.ndim == 1:
    net.blobs["label"].data[...] = np.arange(net.blobs["label"].data.size) % 2
poke = sys.argv[2]
if poke == "nan":
    net.blobs["z"].data[0, 1] = math.nan
elif poke == "zero":
    net.blobs["z"].data[2] = 0
elif poke == "nanlabel":
    net.blobs["label"].data[3] = math.nan
net.forward()
if poke == "labeldiff":  # what the loss layer must overwrite
    net.blobs["label"].diff[...] = 5
net.backward()
print("NO ERROR")
"""

ERROR_CASES = [
    # (net inputs, (rows, labels), parameter text, poke, expected message)
    (ERROR_INPUTS, (1, 1), "", "-", "the batch has N = 1; the pairwise cosine loss needs N >= 2 rows"),
    (ERROR_INPUTS, (4, 5), "", "-",
     "the label bottom has 5 values but the feature bottom has 4 rows; give one label per row"),
    (ERROR_INPUTS, (4, 4), "similar_value: inf", "-",
     "pairwise_cosine_loss_param.similar_value is inf; it must be a finite number"),
    (ERROR_INPUTS, (4, 4), "dissimilar_value: nan", "-",
     "pairwise_cosine_loss_param.dissimilar_value is nan; it must be a finite number"),
    (ERROR_INPUTS, (4, 4), "", "nan", "the feature bottom holds nan at row 0, column 1"),
    (ERROR_INPUTS, (4, 4), "", "zero",
     "row 2 of the feature bottom has norm 0 (all its values are 0, or their squares underflow); "
     "its cosine with the other rows is undefined"),
    (ERROR_INPUTS, (4, 4), "", "nanlabel", "the label bottom holds nan at row 3; labels must be finite"),
]


def run_net(tmp_path, env, text, poke):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(path), poke], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["cpp", "python"])
@pytest.mark.parametrize("inputs, sizes, param, poke, message", ERROR_CASES)
def test_errors_are_named(tmp_path, subprocess_env, kind, inputs, sizes, param, poke, message):
    layer = (CPP if kind == "cpp" else PY).format(param=param)
    run = run_net(tmp_path, subprocess_env, inputs.format(n=sizes[0], nl=sizes[1]) + layer, poke)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert message in run.stderr, run.stderr[-3000:]
    assert ("Layer 'dqn_cos'" if kind == "cpp" else "Layer 'PairwiseCosineLoss'") in run.stderr


def test_cpp_layer_refuses_a_label_gradient(tmp_path, subprocess_env):
    run = run_net(tmp_path, subprocess_env, LEARNED_LABELS.format(n=4) + CPP.format(param=""), "-")
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert "Layer 'dqn_cos': cannot backpropagate to the label bottom" in run.stderr, \
        run.stderr[-3000:]


def test_python_layer_gives_labels_a_zero_gradient(tmp_path, subprocess_env):
    """pycaffe layers cannot refuse a label gradient (force_backward asks every Python layer):
    the Python layer writes zeros, so the learnable layer below gets nothing from it."""
    script = SCRIPT.replace('print("NO ERROR")',
                            'print("LABEL DIFF", float(np.abs(net.blobs["label"].diff).max()))\n'
                            'print("IP DIFF", float(np.abs(net.params["ip"][0].diff).max()))')
    path = tmp_path / "net.prototxt"
    path.write_text(LEARNED_LABELS.format(n=4) + PY.format(param=""))
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(path), "labeldiff"],
                         env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LABEL DIFF 0.0" in run.stdout and "IP DIFF 0.0" in run.stdout, run.stdout
