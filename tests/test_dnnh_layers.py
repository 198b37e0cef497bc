"""DNNH (Lai et al., CVPR 2015) from this project's layers: the PiecewiseThreshold layer (C++ and
Python) against brute-force loops, the divide-and-encode module built from stock Caffe layers
against a per-slice numpy reference, and DNNH's triplet ranking loss as TripletLoss with margin 1
and loss_weight 2."""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tqn_layers import dnnh

# (param_str / piecewise_threshold_param text, epsilon, center, gradient)
PARAMS = [
    ("", 0.1, 0.5, "EXACT"),
    ("epsilon: 0.25 gradient: STRAIGHT_THROUGH", 0.25, 0.5, "STRAIGHT_THROUGH"),
    ("epsilon: 0.25", 0.25, 0.5, "EXACT"),
    ("epsilon: 0.3 center: 0.35", 0.3, 0.35, "EXACT"),
    ("epsilon: 0.5", 0.5, 0.5, "EXACT"),
    ("epsilon: 0 center: 0.625", 0.0, 0.625, "EXACT"),
]


def f32(x):
    """A proto float parameter as the layers see it."""
    return float(np.float32(x))


def g_loop(s, epsilon, center):
    out = np.empty_like(s)
    lower, upper = center - epsilon, center + epsilon
    for idx, v in np.ndenumerate(s):
        if v < lower:
            out[idx] = 0
        elif v > upper:
            out[idx] = 1
        else:
            out[idx] = v
    return out


def backward_loop(s, top_diff, epsilon, center, gradient):
    out = np.empty_like(top_diff)
    for idx, v in np.ndenumerate(s):
        inside = center - epsilon < v < center + epsilon
        out[idx] = top_diff[idx] if gradient == "STRAIGHT_THROUGH" or inside else 0.0
    return out


def sample_values(rng, epsilon, center, shape=(6, 10)):
    """Random values in [-0.5, 1.5] plus the band's edges, its centre, 0 and 1."""
    s = rng.uniform(-0.5, 1.5, shape)
    flat = s.reshape(-1)
    specials = [center - epsilon, center + epsilon, center, 0.0, 1.0]
    flat[:len(specials)] = specials
    return s


@pytest.mark.parametrize("text, epsilon, center, gradient", PARAMS)
def test_numpy_matches_loops(text, epsilon, center, gradient):
    rng = np.random.default_rng(3)
    epsilon, center = f32(epsilon), f32(center)
    s = sample_values(rng, epsilon, center)
    g = dnnh.piecewise_threshold(s, epsilon, center)
    np.testing.assert_array_equal(g, g_loop(s, epsilon, center))
    top_diff = rng.normal(size=s.shape)
    want = backward_loop(s, top_diff, epsilon, center, gradient)
    np.testing.assert_array_equal(
        dnnh.piecewise_threshold_backward(s, top_diff, epsilon, center, gradient), want)
    # In place: the band membership read from the outputs is the inputs'.
    np.testing.assert_array_equal(
        dnnh.piecewise_threshold_backward(g, top_diff, epsilon, center, gradient), want)
    if gradient == "EXACT" and epsilon > 0:
        inside = (s > center - epsilon) & (s < center + epsilon)
        assert 0 < inside.sum() < s.size  # both cases exercised
        # Edges pass their values and get no gradient.
        assert g.flat[0] == s.flat[0] and want.flat[0] == 0 and want.flat[1] == 0


def test_numpy_hand_computed():
    # Band [0.25, 0.75]: below -> 0, edges -> themselves (g' = 0), inside -> s, above -> 1.
    s = np.array([-0.5, 0.2, 0.25, 0.3, 0.5, 0.7, 0.75, 0.8, 3.0])
    np.testing.assert_array_equal(dnnh.piecewise_threshold(s, 0.25, 0.5),
                                  [0, 0, 0.25, 0.3, 0.5, 0.7, 0.75, 1, 1])
    np.testing.assert_array_equal(dnnh.piecewise_threshold_backward(s, 2 * np.ones(9), 0.25, 0.5),
                                  [0, 0, 0, 2, 2, 2, 0, 0, 0])
    # Defaults: epsilon 0.1, center 0.5, EXACT.
    np.testing.assert_array_equal(dnnh.piecewise_threshold([0.35, 0.45, 0.65]), [0, 0.45, 1])
    np.testing.assert_array_equal(dnnh.piecewise_threshold_backward([0.35, 0.45, 0.65], [3.0] * 3),
                                  [0, 3, 0])


def test_exact_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    epsilon, center = 0.2, 0.45
    s = rng.uniform(0, 1, 200)
    s = s[np.minimum(abs(s - (center - epsilon)), abs(s - (center + epsilon))) > 1e-3]
    h = 1e-6
    numeric = (dnnh.piecewise_threshold(s + h, epsilon, center)
               - dnnh.piecewise_threshold(s - h, epsilon, center)) / (2 * h)
    analytic = dnnh.piecewise_threshold_backward(s, np.ones_like(s), epsilon, center)
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)
    assert 0 < analytic.sum() < s.size


@pytest.mark.parametrize("epsilon, center, message", [
    (0.1, 1.5, "piecewise_threshold_param.center is 1.5; it must be a finite number in [0, 1]"),
    (0.1, math.nan, "piecewise_threshold_param.center is nan"),
    (-0.1, 0.5, "piecewise_threshold_param.epsilon is -0.1; it must be a finite number in "
                "[0, min(center, 1 - center)] = [0, 0.5]"),
    (f32(0.3), f32(0.8), "piecewise_threshold_param.epsilon is 0.3; it must be a finite number in "
                         "[0, min(center, 1 - center)] = [0, 0.2]"),
    (math.inf, 0.5, "piecewise_threshold_param.epsilon is inf"),
])
def test_numpy_parameter_errors(epsilon, center, message):
    with pytest.raises(ValueError, match="Layer 'PiecewiseThreshold'") as error:
        dnnh.piecewise_threshold([0.5], epsilon, center)
    assert message in str(error.value)


def test_numpy_non_finite_input_is_named():
    s = np.full((3, 4), 0.5)
    s[2, 3] = -math.inf
    with pytest.raises(ValueError, match=r"the bottom holds -inf at row 2, column 3"):
        dnnh.piecewise_threshold(s)
    with pytest.raises(ValueError, match="gradient is 'SIGN'"):
        dnnh.piecewise_threshold_backward(s, s, gradient="SIGN")


# ---------------------------------------------------------------- DNNH's triplet ranking loss

def ranking_loss_loop(a, p, n):
    """max(0, 1 - (|F(I) - F(I-)|^2 - |F(I) - F(I+)|^2)) per triplet (as DNNH writes it),
    averaged."""
    total = 0.0
    for i in range(a.shape[0]):
        d_neg = sum((a[i, j] - n[i, j]) ** 2 for j in range(a.shape[1]))
        d_pos = sum((a[i, j] - p[i, j]) ** 2 for j in range(a.shape[1]))
        total += max(0.0, 1.0 - (d_neg - d_pos))
    return total / a.shape[0]


def ranking_triplets(rng, bs, bits):
    """g outputs in [0, 1]; every triplet's hinge argument at least 0.01 from the kink, and
    both active and inactive triplets."""
    a, p, n = (rng.uniform(0, 1, (bs, bits)) for _ in range(3))
    n[: bs // 3] = 1 - a[: bs // 3]  # far negatives: inactive hinges
    for i in range(bs):
        while abs(1 - (((a[i] - n[i]) ** 2).sum() - ((a[i] - p[i]) ** 2).sum())) < 0.01:
            p[i] = rng.uniform(0, 1, bits)
    hinge = 1 - (((a - n) ** 2).sum(1) - ((a - p) ** 2).sum(1))
    assert 0 < (hinge > 0).sum() < bs
    return a, p, n


def test_ranking_loss_matches_loop_and_finite_differences():
    rng = np.random.default_rng(9)
    a, p, n = ranking_triplets(rng, 12, 8)
    loss, grads = dnnh.dnnh_triplet_ranking_loss(a, p, n)
    assert loss == pytest.approx(ranking_loss_loop(a, p, n), rel=1e-12)
    h = 1e-6
    for k in range(3):
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            args = [a.copy(), p.copy(), n.copy()]
            args[k][idx] += h
            plus = ranking_loss_loop(*args)
            args[k][idx] -= 2 * h
            numeric[idx] = (plus - ranking_loss_loop(*args)) / (2 * h)
        np.testing.assert_allclose(grads[k], numeric, atol=1e-6)


# ---------------------------------------------------------------- pycaffe nets

def load_net(tmp_path, text):
    import caffe
    caffe.set_mode_cpu()
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST)


AGREEMENT_NET = """
layer {{ name: "in" type: "Input" top: "s_cpp" top: "s_py" top: "ip_cpp" top: "ip_py"
        input_param {{ {shapes} }} }}
layer {{ name: "cpp" type: "PiecewiseThreshold" bottom: "s_cpp" top: "g_cpp"
        piecewise_threshold_param {{ {text} }} }}
layer {{ name: "py" type: "Python" bottom: "s_py" top: "g_py"
        python_param {{ module: "tqn_layers" layer: "PiecewiseThresholdLayer"
                       param_str: "{text}" }} }}
layer {{ name: "cpp_ip" type: "PiecewiseThreshold" bottom: "ip_cpp" top: "ip_cpp"
        piecewise_threshold_param {{ {text} }} }}
layer {{ name: "py_ip" type: "Python" bottom: "ip_py" top: "ip_py"
        python_param {{ module: "tqn_layers" layer: "PiecewiseThresholdLayer"
                       param_str: "{text}" }} }}
force_backward: true
"""


@pytest.mark.parametrize("text, epsilon, center, gradient", PARAMS)
def test_python_layer_matches_cpp_layer_in_pycaffe(tmp_path, caffe_build, text, epsilon, center,
                                                   gradient):
    shape = (5, 3, 4)
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in shape) + " }" for _ in range(4))
    net = load_net(tmp_path, AGREEMENT_NET.format(shapes=shapes, text=text))
    rng = np.random.default_rng(13)
    epsilon, center = f32(epsilon), f32(center)
    s = sample_values(rng, epsilon, center, shape).astype(np.float32)
    top_diff = rng.normal(size=shape).astype(np.float32)
    for name in ("s_cpp", "s_py", "ip_cpp", "ip_py"):
        net.blobs[name].data[...] = s
    net.forward()
    # float32 band edges as the layers compute them
    lower, upper = np.float32(center - epsilon), np.float32(center + epsilon)
    want_g = np.where(s < lower, 0, np.where(s > upper, 1, s)).astype(np.float32)
    for name in ("g_cpp", "g_py", "ip_cpp", "ip_py"):
        np.testing.assert_array_equal(net.blobs[name].data, want_g, err_msg=name)
    for name in ("g_cpp", "g_py", "ip_cpp", "ip_py"):
        net.blobs[name].diff[...] = top_diff
    net.backward()
    inside = (s > lower) & (s < upper)
    want = top_diff if gradient == "STRAIGHT_THROUGH" else np.where(inside, top_diff, 0)
    for name in ("s_cpp", "s_py", "ip_cpp", "ip_py"):
        np.testing.assert_array_equal(net.blobs[name].diff, want, err_msg=name)
    if epsilon > 0:
        assert 0 < inside.sum() < s.size


ERROR_SCRIPT = """
import math, sys, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
if sys.argv[2] == "nan":
    net.blobs["s"].data[...] = 0.5
    net.blobs["s"].data[1, 2] = math.nan
net.forward()
print("NO ERROR")
"""
ERROR_INPUT = 'layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 2 dim: 3 } } }\n'
ERROR_CPP = ('layer {{ name: "dnnh_g" type: "PiecewiseThreshold" bottom: "s" top: "g" '
             'piecewise_threshold_param {{ {text} }} }}')
ERROR_PY = ('layer {{ name: "dnnh_g" type: "Python" bottom: "s" top: "g" python_param {{ '
            'module: "tqn_layers" layer: "PiecewiseThresholdLayer" param_str: "{text}" }} }}')


@pytest.mark.parametrize("kind", ["cpp", "python"])
@pytest.mark.parametrize("text, nan, message", [
    ("center: 1.5", False,
     "piecewise_threshold_param.center is 1.5; it must be a finite number in [0, 1] (DNNH: 0.5)"),
    ("epsilon: -0.1", False, "piecewise_threshold_param.epsilon is -0.1; it must be a finite "
                             "number in [0, min(center, 1 - center)] = [0, 0.5]"),
    ("epsilon: 0.3 center: 0.8", False, "piecewise_threshold_param.epsilon is 0.3; it must be a "
                                        "finite number in [0, min(center, 1 - center)] = [0, 0.2]"),
    ("epsilon: nan", False, "piecewise_threshold_param.epsilon is nan; it must be a finite number"),
    ("", True, "the bottom holds nan at row 1, column 2"),
])
def test_errors_are_named(tmp_path, subprocess_env, kind, text, nan, message):
    layer = (ERROR_CPP if kind == "cpp" else ERROR_PY).format(text=text)
    path = tmp_path / "net.prototxt"
    path.write_text(ERROR_INPUT + layer)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(ERROR_SCRIPT), str(path),
                          "nan" if nan else "-"], env=subprocess_env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert message in run.stderr, run.stderr[-3000:]
    # The C++ layer names the layer; the Python layer its type.
    assert ("'dnnh_g'" if kind == "cpp" else "'PiecewiseThreshold'") in run.stderr


# ---------------------------------------------------------------- divide-and-encode

DIVIDE_AND_ENCODE_NET = """
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {n} dim: {d} }} }} }}
layer {{ name: "slices" type: "Reshape" bottom: "x" top: "x4"
        reshape_param {{ shape {{ dim: 0 dim: -1 dim: 1 dim: 1 }} }} }}
layer {{ name: "fc" type: "Convolution" bottom: "x4" top: "z"
        convolution_param {{ num_output: {bits} kernel_size: 1 group: {bits} }} }}
layer {{ name: "sigmoid" type: "Sigmoid" bottom: "z" top: "s" }}
layer {{ name: "g" type: "PiecewiseThreshold" bottom: "s" top: "{g_top}"
        piecewise_threshold_param {{ {text} }} }}
layer {{ name: "flat" type: "Flatten" bottom: "{g_top}" top: "code" }}
force_backward: true
"""


def divide_and_encode_loop(x, w, b, epsilon, center):
    """DNNH's module slice by slice: out[:, j] = g(sigmoid(x[:, j q:(j+1) q] @ w_j + b_j)).
    Also returns the sigmoid outputs."""
    bits, q = w.shape
    s = np.empty((x.shape[0], bits))
    for j in range(bits):
        s[:, j] = 1 / (1 + np.exp(-(x[:, j * q:(j + 1) * q] @ w[j] + b[j])))
    return dnnh.piecewise_threshold(s, epsilon, center), s


def divide_and_encode_grads(x, w, b, top_diff, epsilon, center, gradient):
    """dE/dx, dE/dw, dE/db of E = sum(top_diff * out), slice by slice."""
    bits, q = w.shape
    _, s = divide_and_encode_loop(x, w, b, epsilon, center)
    dz = dnnh.piecewise_threshold_backward(s, top_diff, epsilon, center, gradient) * s * (1 - s)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for j in range(bits):
        dx[:, j * q:(j + 1) * q] = np.outer(dz[:, j], w[j])
        dw[j] = dz[:, j] @ x[:, j * q:(j + 1) * q]
    return dx, dw, dz.sum(0)


def off_edge_inputs(rng, n, w, b, epsilon, center, gap=2e-3):
    """Inputs whose sigmoid outputs are all at least `gap` from the band edges (rows redrawn),
    with outputs inside, below and above the band."""
    x = rng.normal(size=(n, w.size))
    while True:
        _, s = divide_and_encode_loop(x, w, b, epsilon, center)
        near = (np.minimum(abs(s - (center - epsilon)), abs(s - (center + epsilon))) < gap).any(1)
        if not near.any():
            break
        x[near] = rng.normal(size=(near.sum(), w.size))
    assert (s < center - epsilon).any() and (s > center + epsilon).any()
    assert ((s > center - epsilon) & (s < center + epsilon)).sum() >= 5
    return x


@pytest.mark.parametrize("text, epsilon, center, gradient, g_top", [
    ("", 0.1, 0.5, "EXACT", "g"),
    # In place on the Sigmoid's top is right with EXACT only (the Sigmoid's backward reads its
    # top, g(s) = s wherever g' != 0): see the layer's documentation.
    ("", 0.1, 0.5, "EXACT", "s"),
    ("epsilon: 0.2 center: 0.45 gradient: STRAIGHT_THROUGH", 0.2, 0.45, "STRAIGHT_THROUGH", "g"),
])
def test_divide_and_encode_from_stock_layers(tmp_path, caffe_build, text, epsilon, center,
                                             gradient, g_top):
    n, q, bits = 8, 5, 12
    net = load_net(tmp_path, DIVIDE_AND_ENCODE_NET.format(n=n, d=q * bits, bits=bits, text=text,
                                                          g_top=g_top))
    # One q-vector of weights per unit, on its own slice: a block-diagonal fully connected layer.
    assert net.params["fc"][0].data.shape == (bits, q, 1, 1)
    rng = np.random.default_rng(17)
    w = rng.normal(scale=0.6, size=(bits, q)).astype(np.float32).astype(np.float64)
    b = rng.normal(scale=0.3, size=bits).astype(np.float32).astype(np.float64)
    epsilon, center = f32(epsilon), f32(center)
    x = off_edge_inputs(rng, n, w, b, epsilon, center).astype(np.float32).astype(np.float64)
    net.params["fc"][0].data[...] = w.reshape(bits, q, 1, 1)
    net.params["fc"][1].data[...] = b
    net.blobs["x"].data[...] = x
    net.forward()
    want, _ = divide_and_encode_loop(x, w, b, epsilon, center)
    assert net.blobs["code"].data.shape == (n, bits)
    np.testing.assert_allclose(net.blobs["code"].data, want, rtol=1e-5, atol=1e-6)

    top_diff = rng.normal(size=(n, bits)).astype(np.float32).astype(np.float64)
    net.blobs["code"].diff[...] = top_diff
    net.backward()
    dx, dw, db = divide_and_encode_grads(x, w, b, top_diff, epsilon, center, gradient)
    np.testing.assert_allclose(net.blobs["x"].diff, dx, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.params["fc"][0].diff.reshape(bits, q), dw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.params["fc"][1].diff, db, rtol=1e-4, atol=1e-6)
    if gradient == "EXACT":
        # The reference gradient itself, by finite differences of the slice loop.
        h = 1e-6
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += h
            xm[idx] -= h
            numeric[idx] = ((divide_and_encode_loop(xp, w, b, epsilon, center)[0]
                             - divide_and_encode_loop(xm, w, b, epsilon, center)[0])
                            * top_diff).sum() / (2 * h)
        np.testing.assert_allclose(dx, numeric, atol=1e-6)


# ---------------------------------------------------------------- the ranking loss in Caffe

RANKING_NET = """
layer {{ name: "in" type: "Input" top: "a" top: "p" top: "n"
        input_param {{ shape {{ dim: {bs} dim: {bits} }} shape {{ dim: {bs} dim: {bits} }}
                      shape {{ dim: {bs} dim: {bits} }} }} }}
layer {{ name: "rank" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n" top: "loss"
        triplet_loss_param {{ margin: 1 }} loss_weight: 2 }}
force_backward: true
"""


def test_dnnh_ranking_loss_is_triplet_loss_margin_1_weight_2(tmp_path, caffe_build):
    bs, bits = 10, 12
    net = load_net(tmp_path, RANKING_NET.format(bs=bs, bits=bits))
    rng = np.random.default_rng(19)
    a, p, n = (x.astype(np.float32).astype(np.float64) for x in ranking_triplets(rng, bs, bits))
    for name, value in zip("apn", (a, p, n)):
        net.blobs[name].data[...] = value
    weighted_loss = net._forward(0, len(net.layers) - 1)  # the net's loss: weights applied
    loss, grads = dnnh.dnnh_triplet_ranking_loss(a, p, n)
    assert weighted_loss == pytest.approx(loss, rel=1e-5)
    assert ranking_loss_loop(a, p, n) == pytest.approx(loss, rel=1e-12)
    net.backward()
    for name, grad in zip("apn", grads):
        np.testing.assert_allclose(net.blobs[name].diff, grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- why DNNH can stop learning

SATURATED_NET = """
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: {n} dim: {bits} }} }} }}
layer {{ name: "sig" type: "Sigmoid" bottom: "x" top: "s" }}
layer {{ name: "g" type: "PiecewiseThreshold" bottom: "s" top: "code"
        piecewise_threshold_param {{ gradient: {gradient} }} }}
layer {{ name: "split" type: "Slice" bottom: "code" top: "a" top: "p" top: "n"
        slice_param {{ axis: 0 }} }}
layer {{ name: "rank" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n" top: "loss"
        triplet_loss_param {{ margin: 1 }} loss_weight: 2 }}
force_backward: true
"""


@pytest.mark.parametrize("gradient", ["EXACT", "STRAIGHT_THROUGH"])
def test_saturated_codes_get_no_gradient_only_with_the_exact_gradient(tmp_path, caffe_build, gradient):
    """Why DNNH's CIFAR-10 CPU-scale run (12 bits, our default EXACT gradient) stopped learning:
    its sigmoid outputs ended outside the band [0.4, 0.6] (every image on one code, its
    real-valued mAP equal to the binary one) and g's exact derivative is 0 there, so even a wrongly
    ranked triplet sends no gradient back: a wrong saturated bit can never be corrected by the
    loss. The straight-through gradient passes the ranking loss's gradient on."""
    n, bits = 3 * 4, 12
    net = load_net(tmp_path, SATURATED_NET.format(n=n, bits=bits, gradient=gradient))
    rng = np.random.default_rng(23)
    code = np.where(rng.random(bits) < 0.5, -6.0, 6.0)            # sigmoid 0.0025 / 0.9975
    x = np.tile(code, (n, 1)) + rng.uniform(-1, 1, (n, bits))    # every value outside the band
    x[n // 3: 2 * n // 3, :3] *= -1                              # positives: 3 bits flipped
    net.blobs["x"].data[...] = x                                 # negatives: the anchors' code
    loss = net.forward()["loss"]
    assert set(np.unique(net.blobs["code"].data)) == {0.0, 1.0}
    # The top blob is TripletLoss's mean / 2 (loss_weight 2 is applied by the net): margin
    # + d+ - d- = 1 + 3 - 0, every triplet wrongly ranked.
    assert loss == pytest.approx((1 + 3 - 0) / 2)
    net.backward()
    dx = net.blobs["x"].diff
    if gradient == "EXACT":
        assert not dx.any()                                      # nothing reaches the net
    else:
        # Anchors' and positives' flipped bits get the gradient 2 (a - p) / N (times sigmoid');
        # the negatives equal the anchors, where d(a - n)^2 / dn = 0, as are agreeing bits.
        assert (np.abs(dx[:2 * n // 3, :3]) > 1e-4).all()
        assert not dx[:, 3:].any() and not dx[2 * n // 3:].any()
