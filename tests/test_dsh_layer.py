"""DSH's pairwise loss (Liu et al., CVPR 2016): the numpy math against plain loops and finite
differences, the Python layer against the C++ DSHLoss layer in one pycaffe net, and the errors
of both layers."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tqn_layers import dsh
from triplet_data import numeric_gradient

# The hand-computed case of the gtest (test_dsh_loss_layer.cpp), worked in its comment.
HAND = dict(codes=[[0.5, -1.5], [1.5, -0.5], [1.5, 0.5]], labels=[0, 0, 1])


def loop_loss(codes, labels, margin, alpha):
    """Eq. 3 with its regularizer, pair by pair, averaged over the pairs i < j."""
    b = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1)
    n, k = b.shape
    m = margin if margin > 0 else 2 * k
    total, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            d = sum((b[i, c] - b[j, c]) ** 2 for c in range(k))
            y = 0 if labels[i] == labels[j] else 1
            reg = sum(abs(abs(b[i, c]) - 1) + abs(abs(b[j, c]) - 1) for c in range(k))
            total += 0.5 * (1 - y) * d + 0.5 * y * max(m - d, 0.0) + alpha * reg
            pairs += 1
    return total / pairs


def off_kink_codes(rng, n, k, labels, margin, gap=0.02, hinge_gap=0.1):
    """Codes around +-1 with every element >= gap from 0 and +-1 and every dissimilar pair's
    distance >= hinge_gap from the margin (0: 2k)."""
    m = margin if margin > 0 else 2 * k
    b = rng.uniform(-1.6, 1.6, (n, k))
    for _ in range(1000):
        near = (np.abs(b) < gap) | (np.abs(np.abs(b) - 1) < gap)
        b[near] = rng.uniform(-1.6, 1.6, near.sum())
        dist = ((b[:, None] - b[None]) ** 2).sum(2)
        bad = (np.abs(m - dist) < hinge_gap) & (labels[:, None] != labels[None])
        rows = np.unique(np.argwhere(np.triu(bad, 1))[:, 1])
        b[rows, 0] = rng.uniform(-1.6, 1.6, len(rows))
        if not near.any() and len(rows) == 0:
            return b
    raise AssertionError("could not move the codes off the kinks")


def hinge_counts(b, labels, margin):
    m = margin if margin > 0 else 2 * b.shape[1]
    dist = ((b[:, None] - b[None]) ** 2).sum(2)
    dissimilar = np.triu(labels[:, None] != labels[None], 1)
    return int((dissimilar & (m - dist > 0)).sum()), int((dissimilar & (m - dist < 0)).sum())


def test_hand_computed():
    loss, grad = dsh.dsh_loss(**HAND, alpha=0.1)
    assert loss == pytest.approx(2.5 / 3 + 0.2, abs=1e-12)
    np.testing.assert_allclose(grad, [[-0.4, -0.4], [0.4, 11 / 15], [1 / 15, -0.4]], atol=1e-12)


@pytest.mark.parametrize("margin, alpha", [(0.0, 0.01), (6.0, 0.0), (3.0, 0.5), (30.0, 0.01)])
def test_matches_plain_loops(margin, alpha):
    rng = np.random.default_rng(int(margin * 10 + alpha * 100))
    n, shape = 11, (3, 2)  # trailing axes are flattened: k = 6
    codes = rng.uniform(-1.6, 1.6, (n,) + shape)
    labels = rng.integers(0, 3, n).astype(np.float32)
    active, inactive = hinge_counts(codes.reshape(n, -1), labels, margin)
    assert active > 0 and (inactive > 0 or margin == 30.0)
    loss, grad = dsh.dsh_loss(codes, labels, margin=margin, alpha=alpha)
    assert loss == pytest.approx(loop_loss(codes, labels, margin, alpha), rel=1e-12)
    assert grad.shape == codes.shape


def test_default_margin_is_twice_the_code_length():
    rng = np.random.default_rng(5)
    codes, labels = rng.uniform(-1.6, 1.6, (9, 5)), rng.integers(0, 2, 9)
    default = dsh.dsh_loss(codes, labels)[0]
    assert default == pytest.approx(dsh.dsh_loss(codes, labels, margin=10.0)[0], rel=1e-12)
    assert abs(default - dsh.dsh_loss(codes, labels, margin=5.0)[0]) > 1e-3


@pytest.mark.parametrize("margin, alpha, weight", [(0.0, 0.01, 1.0), (6.0, 0.3, -2.5)])
def test_gradient_matches_finite_differences(margin, alpha, weight):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 10)
    codes = off_kink_codes(rng, 10, 6, labels, margin)
    active, inactive = hinge_counts(codes, labels, margin)
    assert active > 0 and inactive > 0  # both sides of the hinge are checked
    grad = dsh.dsh_loss(codes, labels, margin, alpha, loss_weight=weight)[1]
    numeric = numeric_gradient(lambda b: weight * dsh.dsh_loss(b, labels, margin, alpha)[0],
                               [codes], 0)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_subgradient_zero_at_kinks():
    # D12 = 4 = margin (the hinge's kink), every code at 0 or +-1: L = alpha (r1 + r2) = 0.2.
    loss, grad = dsh.dsh_loss([[1.0, 0.0], [-1.0, 0.0]], [0, 1], margin=4.0, alpha=0.1)
    assert loss == pytest.approx(0.2, abs=1e-12)
    assert np.all(grad == 0)


def test_similar_pairs_attract_dissimilar_pairs_repel():
    b = np.array([[0.5, 0.5], [0.6, 0.6]])
    g_same = dsh.dsh_loss(b, [1, 1], alpha=0.0)[1]
    g_diff = dsh.dsh_loss(b, [1, 2], alpha=0.0)[1]
    step = lambda g: np.linalg.norm((b - 0.1 * g)[0] - (b - 0.1 * g)[1])
    assert step(g_same) < np.linalg.norm(b[0] - b[1]) < step(g_diff)


@pytest.mark.parametrize("codes, labels, message", [
    (np.zeros((1, 4)), [0], "the batch has 1 row(s); DSHLoss needs at least 2"),
    (np.zeros((3, 4)), [0, 1], "the label bottom has shape (2,) but the codes bottom has 3 rows"),
    (np.array([[0.5, np.inf], [0.1, 0.2]]), [0, 1], "the codes bottom holds inf at row 0, column 1"),
    (np.zeros((2, 2)), [0, 1.5], "the label bottom holds 1.5 at row 1; labels must be integer"),
])
def test_numpy_input_errors(codes, labels, message):
    with pytest.raises(ValueError) as err:
        dsh.dsh_loss(codes, labels)
    assert message in str(err.value)


# --- the Python layer against the C++ layer, in one pycaffe float32 net -----------------------
# Both read the same Input blobs, each through its own Scale layer (a learnable scalar, 1): the
# codes then need backward without force_backward (which would ask the Python layer for the
# labels' gradient: C++ loss layers are exempt, Python layers are not), and each layer's
# gradient lands in its own blob.
NET = """
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {n} dim: {k} }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: {n} }} }} }}
layer {{ name: "scale_cpp" type: "Scale" bottom: "x" top: "codes_cpp"
        scale_param {{ axis: 0 num_axes: 0 filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "scale_py" type: "Scale" bottom: "x" top: "codes_py"
        scale_param {{ axis: 0 num_axes: 0 filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "cpp" type: "DSHLoss" bottom: "codes_cpp" bottom: "label" top: "cpp_loss"
        dsh_loss_param {{ {param} }} loss_weight: {weight} }}
layer {{ name: "py" type: "Python" bottom: "codes_py" bottom: "label" top: "py_loss"
        python_param {{ module: "tqn_layers" layer: "DSHLossLayer" param_str: "{param}" }}
        loss_weight: {weight} }}
"""


@pytest.mark.parametrize("param, margin, alpha", [("", 0.0, 0.01),
                                                  ("margin: 7 alpha: 0.2", 7.0, 0.2)])
def test_python_layer_matches_cpp_layer_in_pycaffe(tmp_path, caffe_build, param, margin, alpha):
    import caffe
    caffe.set_mode_cpu()
    n, k, weight = 16, 12, 1.5
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, n).astype(np.float32)
    codes = off_kink_codes(rng, n, k, labels, margin).astype(np.float32)
    active, inactive = hinge_counts(codes.astype(np.float64), labels, margin)
    assert active > 0 and inactive > 0
    (tmp_path / "net.prototxt").write_text(NET.format(n=n, k=k, param=param, weight=weight))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net.blobs["x"].data[...] = codes
    net.blobs["label"].data[...] = labels
    net.forward()
    loss, grad = dsh.dsh_loss(codes, labels, margin, alpha, loss_weight=weight)
    assert float(net.blobs["py_loss"].data) == pytest.approx(float(net.blobs["cpp_loss"].data),
                                                             rel=1e-5)
    assert float(net.blobs["cpp_loss"].data) == pytest.approx(loss, rel=1e-5)
    net.backward()
    cpp, py = net.blobs["codes_cpp"].diff, net.blobs["codes_py"].diff
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(cpp, py, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cpp, grad, rtol=1e-4, atol=1e-6)
    assert np.all(net.blobs["label"].diff == 0)  # no gradient to the labels


# --- errors of both layers (a glog fatal error for C++, so each case in its own process) ------
ERROR_NET = """
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {n} dim: 3 }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: {nl} }} }} }}
layer {{ name: "scale" type: "Scale" bottom: "x" top: "codes"
        scale_param {{ axis: 0 num_axes: 0 filler {{ type: "constant" value: 1 }} }} }}
"""
CPP = ('layer {{ name: "dshloss" type: "DSHLoss" bottom: "codes" bottom: "label" top: "l" '
       'dsh_loss_param {{ {param} }} {extra} }}')
PY = ('layer {{ name: "dshloss" type: "Python" bottom: "codes" bottom: "label" top: "l" '
      'python_param {{ module: "tqn_layers" layer: "DSHLossLayer" param_str: "{param}" }} '
      'loss_weight: 1 {extra} }}')
SCRIPT = """
import math, sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
net.blobs["x"].data[...] = 0.5
net.blobs["label"].data[...] = np.arange(net.blobs["label"].data.size)
if sys.argv[2] == "nan":
    net.blobs["x"].data[2, 1] = math.nan
if sys.argv[2] == "label":
    net.blobs["label"].data[1] = 0.5
net.forward()
net.backward()
print("NO ERROR")
"""
LABELS_GRADIENT = "propagate_down: true propagate_down: true"
ERROR_CASES = [
    # (parameter text, rows, labels, poke, extra layer text, message for C++, for Python)
    ("margin: -1", 4, 4, "-", "",
     "dsh_loss_param.margin is -1; it must be a finite number >= 0", None),
    ("alpha: -0.5", 4, 4, "-", "",
     "dsh_loss_param.alpha is -0.5; it must be a finite number >= 0", None),
    ("", 1, 1, "-", "", "the batch has 1 row(s); DSHLoss needs at least 2 to form a pair", None),
    ("", 4, 5, "-", "", "the label bottom has shape 5 (5) but the codes bottom has 4 rows",
     "the label bottom has shape (5,) but the codes bottom has 4 rows"),
    ("", 4, 4, "nan", "", "the codes bottom holds nan at row 2, column 1", None),
    ("", 4, 4, "label", "", "the label bottom holds 0.5 at row 1; labels must be integer", None),
    ("", 4, 4, "-", LABELS_GRADIENT, "DSHLoss cannot backpropagate to the labels (bottom 1)", None),
]


def run_net(tmp_path, env, text, poke):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(path), poke],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["cpp", "python"])
@pytest.mark.parametrize("param, n, nl, poke, extra, cpp_message, py_message", ERROR_CASES)
def test_errors_are_named(tmp_path, subprocess_env, kind, param, n, nl, poke, extra, cpp_message,
                          py_message):
    layer = (CPP if kind == "cpp" else PY).format(param=param, extra=extra)
    run = run_net(tmp_path, subprocess_env, ERROR_NET.format(n=n, nl=nl) + layer, poke)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    message = cpp_message if kind == "cpp" or py_message is None else py_message
    assert message in run.stderr, run.stderr[-3000:]
    assert ("Layer 'dshloss'" if kind == "cpp" else "Layer 'DSHLoss'") in run.stderr


def test_cpp_layer_is_exempt_from_force_backward_on_labels(tmp_path, subprocess_env):
    """As Caffe's loss layers: force_backward does not ask for the labels' gradient."""
    text = ERROR_NET.format(n=4, nl=4) + CPP.format(param="", extra="") + "\nforce_backward: true\n"
    run = run_net(tmp_path, subprocess_env, text, "-")
    assert run.returncode == 0 and "NO ERROR" in run.stdout, run.stderr[-3000:]
