"""The C++ and Python layers of each loss agree: in float64 (the C++ double layers run by the
gtest harness on cases written here) and inside one pycaffe float32 net."""
import os
import subprocess

import numpy as np
import pytest

from tqn_layers import losses
from triplet_data import off_kink_triplets

CASES = [
    # (prototxt of the C++ layer, number of tops, numpy function, its keyword arguments)
    ('type: "TripletLoss" triplet_loss_param { margin: 0.4 }', 1, "triplet", dict(margin=0.4)),
    ('type: "TripletLoss"', 1, "triplet", dict(margin=1.6)),
    ('type: "TripletQuantizationLoss" triplet_quantization_loss_param { alpha_d: 1.2 }', 3, "tqn",
     dict(alpha_d=1.2)),
    ('type: "TripletQuantizationLoss" triplet_quantization_loss_param { alpha_d: 1.2 beta: 2 '
     'gamma: 1.5 threshold: 0.4 alpha_s: 0.09 delta: 0.25 }', 2, "tqn",
     dict(alpha_d=1.2, beta=2.0, gamma=1.5, threshold=0.4, alpha_s=0.09, delta=0.25)),
]


def python_outputs(kind, kwargs, a, p, n, top_diff):
    if kind == "triplet":
        loss, grads = losses.triplet_loss(a, p, n, loss_weight=top_diff[0], **kwargs)
        return [loss], grads
    weights = tuple(top_diff) + (0.0,) * (3 - len(top_diff))
    loss, loss_s, loss_d, grads = losses.triplet_quantization_loss(a, p, n, loss_weights=weights,
                                                                  **kwargs)
    return [loss, loss_s, loss_d][:len(top_diff)], grads


def fmt(values):
    return " ".join(repr(float(v)) for v in np.ravel(values))


def test_cpp_double_layers_agree_with_python_float64(caffe_build, tmp_path):
    rng = np.random.default_rng(7)
    expected = []
    with open(tmp_path / "cases.txt", "w") as f:
        for repeat in range(3):
            for proto, ntops, kind, kwargs in CASES:
                bs, dim = int(rng.integers(1, 40)), int(rng.integers(1, 50))
                a, p, n = off_kink_triplets(rng, bs, dim, alpha_d=kwargs.get("alpha_d", 1.2),
                                            alpha_s=kwargs.get("alpha_s", 0.16),
                                            delta=kwargs.get("delta", 0.64),
                                            t=kwargs.get("threshold", 0.5),
                                            margin=kwargs.get("margin", 0.4))
                top_diff = rng.uniform(-2, 2, ntops)
                f.write(f"layer {proto}\ntops {ntops}\nshape {bs} {dim}\n"
                        f"a {fmt(a)}\np {fmt(p)}\nn {fmt(n)}\ntopdiff {fmt(top_diff)}\n")
                expected.append(python_outputs(kind, kwargs, a, p, n, top_diff))
    env = dict(os.environ, TQN_LAYER_CASES=str(tmp_path / "cases.txt"),
               TQN_LAYER_RESULTS=str(tmp_path / "results.txt"))
    run = subprocess.run([caffe_build["gtest"], "--gtest_filter=TripletLayersExternalCases.*"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    with open(tmp_path / "results.txt") as f:
        lines = [line.split() for line in f if line.strip()]
    assert len(lines) == 4 * len(expected)
    for case, (tops, grads) in enumerate(expected):
        got = {line[0]: np.array(line[1:], dtype=np.float64) for line in lines[4 * case:4 * case + 4]}
        np.testing.assert_allclose(got["tops"], tops, rtol=1e-6, atol=1e-6, err_msg=f"case {case}")
        for key, grad in zip(("da", "dp", "dn"), grads):
            np.testing.assert_allclose(got[key], grad.ravel(), rtol=1e-6, atol=1e-6,
                                       err_msg=f"case {case} {key}")


NET = """
layer {{ name: "a" type: "Input" top: "a" input_param {{ shape {{ dim: {bs} dim: {dim} }} }} }}
layer {{ name: "p" type: "Input" top: "p" input_param {{ shape {{ dim: {bs} dim: {dim} }} }} }}
layer {{ name: "n" type: "Input" top: "n" input_param {{ shape {{ dim: {bs} dim: {dim} }} }} }}
layer {{ name: "cpp" type: "{cpp_type}" bottom: "a" bottom: "p" bottom: "n" {cpp_tops}
        {cpp_param} }}
layer {{ name: "py" type: "Python" bottom: "a" bottom: "p" bottom: "n" {py_tops}
        python_param {{ module: "tqn_layers" layer: "{py_layer}" param_str: "{param_str}" }}
        loss_weight: 1 {py_extra_weights} }}
force_backward: true
"""


@pytest.mark.parametrize("cpp_type, py_layer, message, param_str, tops", [
    ("TripletLoss", "TripletLossLayer", "triplet_loss_param", "margin: 0.4", ["loss"]),
    ("TripletQuantizationLoss", "TripletQuantizationLossLayer", "triplet_quantization_loss_param",
     "alpha_d: 1.2 beta: 8 gamma: 1", ["loss", "loss_s", "loss_d"]),
])
def test_python_layer_matches_cpp_layer_in_pycaffe(tmp_path, caffe_build, cpp_type, py_layer,
                                                   message, param_str, tops):
    import caffe
    bs, dim = 16, 12
    net_text = NET.format(
        bs=bs, dim=dim, cpp_type=cpp_type, py_layer=py_layer, param_str=param_str,
        cpp_param=f"{message} {{ {param_str} }}",
        cpp_tops=" ".join(f'top: "cpp_{t}"' for t in tops),
        py_tops=" ".join(f'top: "py_{t}"' for t in tops),
        py_extra_weights=" ".join("loss_weight: 0" for _ in tops[1:]))
    # Both layers feed the same bottoms: each contributes its gradient once, so the summed
    # bottom diff is twice either's; compare each against the numpy reference instead.
    (tmp_path / "net.prototxt").write_text(net_text)
    caffe.set_mode_cpu()
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    rng = np.random.default_rng(11)
    a, p, n = off_kink_triplets(rng, bs, dim)
    for name, value in zip("apn", (a, p, n)):
        net.blobs[name].data[...] = value
    net.forward()
    for t in tops:
        assert net.blobs[f"py_{t}"].data == pytest.approx(float(net.blobs[f"cpp_{t}"].data), rel=1e-5)
    net.backward()
    a32, p32, n32 = (x.astype(np.float32).astype(np.float64) for x in (a, p, n))
    if cpp_type == "TripletLoss":
        grads = losses.triplet_loss(a32, p32, n32, margin=0.4)[1]
    else:
        grads = losses.triplet_quantization_loss(a32, p32, n32, alpha_d=1.2)[3]
    for name, grad in zip("apn", grads):
        np.testing.assert_allclose(net.blobs[name].diff, 2 * grad, rtol=1e-4, atol=1e-6)
