"""DQN's product quantization loss: the numpy math (`tqn_layers.dqn.pq_loss`, `pq_kmeans`,
`pq_encode`, `pq_decode`) against hand computations, brute-force loops and finite differences;
the Python layer against the C++ layer ("ProductQuantizationLoss") in one pycaffe float32 net,
for the loss and gradient of set codebooks and for the k-means codebook updates; and the
errors of both layers."""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tqn_layers import dqn

from triplet_data import numeric_gradient

# The hand-computed case of the gtest (test_product_quantization_loss_layer.cpp), worked there.
HAND_Z = np.array([[0.2, 0.1, 0.9, 0.3], [0.7, 0.8, 0.4, 0.5]])
HAND_BOOKS = np.array([[[0, 0], [1, 1]], [[1, 0], [0, 1]]], dtype=np.float64)


def brute_force(z, books):
    """The loss, codes and gradient as written, one row, subspace and centroid at a time."""
    rows = [list(map(float, r)) for r in np.asarray(z).reshape(len(z), -1)]
    M, K, S = books.shape
    n = len(rows)
    loss, codes, grad = 0.0, [], []
    for row in rows:
        code, g = [], []
        for m in range(M):
            sub = row[m * S:(m + 1) * S]
            best_k, best_d = None, None
            for k in range(K):
                d = sum((a - float(c)) ** 2 for a, c in zip(sub, books[m, k]))
                if best_d is None or d < best_d:
                    best_k, best_d = k, d
            loss += best_d
            code.append(best_k)
            g += [2.0 / n * (a - float(c)) for a, c in zip(sub, books[m, best_k])]
        codes.append(code)
        grad.append(g)
    return loss / n, np.array(codes), np.array(grad)


def brute_force_kmeans(x, cent, iterations, relocate):
    """Lloyd's algorithm on one subspace (x: n x S) as the layer documents it, by loops."""
    x = [list(map(float, r)) for r in x]
    cent = [list(map(float, c)) for c in cent]
    K = len(cent)
    previous, relocated = None, False
    for _ in range(iterations):
        assign, dist = [], []
        for r in x:
            ds = [sum((a - c) ** 2 for a, c in zip(r, cent[k])) for k in range(K)]
            k = min(range(K), key=lambda k: (ds[k], k))
            assign.append(k)
            dist.append(ds[k])
        if assign == previous and not relocated:
            break
        previous, relocated = assign, False
        taken = set()
        for k in range(K):
            members = [r for r, a in zip(x, assign) if a == k]
            if members:
                cent[k] = [sum(col) / len(members) for col in zip(*members)]
            elif relocate:
                far = max((i for i in range(len(x)) if i not in taken), key=lambda i: (dist[i], -i))
                taken.add(far)
                cent[k] = list(x[far])
                relocated = True
    return np.array(cent)


def clustered(rng, n, books, noise):
    """Rows made of a random centroid per subspace plus uniform noise."""
    M, K, S = books.shape
    codes = rng.integers(0, K, (n, M))
    return dqn.pq_decode(codes, books) + rng.uniform(-noise, noise, (n, M * S)), codes


# ---[ numpy math

def test_hand_computed():
    loss, grad, codes = dqn.pq_loss(HAND_Z, HAND_BOOKS)
    assert loss == pytest.approx(0.345, abs=1e-12)
    np.testing.assert_array_equal(codes, [[0, 0], [1, 1]])
    np.testing.assert_allclose(grad, [[0.2, 0.1, -0.1, 0.3], [-0.3, -0.2, 0.4, -0.5]], atol=1e-12)
    loss, grad, _ = dqn.pq_loss(HAND_Z, HAND_BOOKS, loss_weight=3.5)
    assert loss == pytest.approx(0.345, abs=1e-12)  # the weight scales the gradient only
    np.testing.assert_allclose(grad, 3.5 * np.array([[0.2, 0.1, -0.1, 0.3],
                                                     [-0.3, -0.2, 0.4, -0.5]]), atol=1e-12)


def test_ties_go_to_the_smallest_index():
    loss, grad, codes = dqn.pq_loss(np.full((1, 4), 0.5), HAND_BOOKS)
    np.testing.assert_array_equal(codes, [[0, 0]])
    assert loss == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(grad, [[1, 1, -1, 1]], atol=1e-12)


@pytest.mark.parametrize("n, rest, M, K", [(7, (6,), 2, 3), (5, (2, 3), 3, 4), (9, (4,), 1, 5),
                                           (4, (8,), 8, 2)])
def test_matches_brute_force_loops(n, rest, M, K):
    rng = np.random.default_rng(n * 100 + M)
    z = rng.uniform(-1, 1, (n,) + rest)
    books = rng.uniform(-1, 1, (M, K, int(np.prod(rest)) // M))
    loss, grad, codes = dqn.pq_loss(z, books)
    want_loss, want_codes, want_grad = brute_force(z, books)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_array_equal(codes, want_codes)
    assert grad.shape == z.shape
    np.testing.assert_allclose(grad.reshape(n, -1), want_grad, atol=1e-12)
    np.testing.assert_array_equal(dqn.pq_encode(z, books), want_codes)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    books = rng.uniform(-1, 1, (2, 3, 3))
    z, _ = clustered(rng, 6, books, 0.1)  # near a centroid: away from the Voronoi boundaries
    f = lambda z: dqn.pq_loss(z, books)[0]
    grad = dqn.pq_loss(z, books, loss_weight=1.0)[1]
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(grad, numeric_gradient(f, [z], 0), atol=1e-8)


def test_encode_decode():
    rng = np.random.default_rng(4)
    books = rng.uniform(-1, 1, (3, 5, 2)).astype(np.float32)
    codes = rng.integers(0, 5, (20, 3))
    rows = dqn.pq_decode(codes, books)
    assert rows.shape == (20, 6) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[7, 2:4], books[1, codes[7, 1]])
    np.testing.assert_array_equal(dqn.pq_encode(rows, books), codes)  # exact centroids
    z = rng.uniform(-1, 1, (20, 6))
    residual = z - dqn.pq_decode(dqn.pq_encode(z, books), books)
    assert (residual ** 2).sum(1).mean() == pytest.approx(dqn.pq_loss(z, books)[0], rel=1e-6)
    with pytest.raises(ValueError, match="do not fit 3 subspaces"):
        dqn.pq_decode(codes[:, :2], books)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 5\)"):
        dqn.pq_decode(codes + 5, books)


def test_splitmix64_is_the_reference_generator():
    # Vigna's splitmix64.c, seeded with 0, starts with these outputs.
    assert [int(v) for v in dqn.splitmix64(0, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4,
                                                      0x06C45D188009454F]
    state, mask, out = 2 ** 64 - 5, 2 ** 64 - 1, []   # wraps around 2^64
    for _ in range(5):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    assert [int(v) for v in dqn.splitmix64(2 ** 64 - 5, 5)] == out


def test_initial_rows_follow_the_documented_draw():
    n, K, M, seed = 11, 4, 3, 12345
    draws = iter(int(v) for v in dqn.splitmix64(seed, M * (n - 1)))
    want = []
    for _ in range(M):
        p = list(range(n))
        for j in range(n - 1, 0, -1):
            r = next(draws) % (j + 1)
            p[j], p[r] = p[r], p[j]
        want.append([p[k * n // K] for k in range(K)])
    rows = dqn.pq_initial_rows(n, K, M, seed)
    np.testing.assert_array_equal(rows, want)
    assert all(len(set(r)) == K for r in rows.tolist())
    assert not np.array_equal(rows, dqn.pq_initial_rows(n, K, M, seed + 1))
    np.testing.assert_array_equal(np.sort(dqn.pq_initial_rows(5, 5, 1, 0)[0]), np.arange(5))


@pytest.mark.parametrize("first", [True, False])
def test_kmeans_matches_brute_force(first):
    rng = np.random.default_rng(5 + first)
    M, K, S, n = 2, 4, 3, 30
    x = rng.uniform(-1, 1, (n, M * S))
    x[:6] = x[0]  # duplicate rows: equal starting centroids, so empty clusters
    books = rng.uniform(-1, 1, (M, K, S))
    got = dqn.pq_kmeans(x, books, iterations=7, first=first, seed=9)
    start = dqn.pq_initial_rows(n, K, M, 9)
    for m in range(M):
        sub = x[:, m * S:(m + 1) * S]
        cent = sub[start[m]] if first else books[m]
        np.testing.assert_allclose(got[m], brute_force_kmeans(sub, cent, 7, relocate=first),
                                   atol=1e-12)


def test_kmeans_empty_cluster_takes_the_farthest_row():
    x = np.full((10, 2), 0.25)
    x[6] = (4, -3)
    for seed in range(5):
        got = dqn.pq_kmeans(x, np.zeros((1, 2, 2)), 20, first=True, seed=seed)[0]
        assert sorted(map(tuple, got)) == [(0.25, 0.25), (4.0, -3.0)]
    # Later updates keep an empty cluster's centroid.
    got = dqn.pq_kmeans(x, np.array([[[0.0, 0.0], [9.0, 9.0]]]), 20, first=False)[0]
    np.testing.assert_allclose(got, [[0.625, -0.075], [9, 9]])


def test_kmeans_recovers_planted_centroids_and_lowers_the_error():
    rng = np.random.default_rng(6)
    planted = np.array([[[-1, 0.5], [1, -0.5]], [[0.3, 0.9], [-0.6, -0.8]]])
    x, _ = clustered(rng, 60, planted, 0.05)
    for seed in range(4):
        got = dqn.pq_kmeans(x, np.zeros_like(planted), 20, first=True, seed=seed)
        for m in range(2):
            assert np.abs(np.sort(got[m], 0) - np.sort(planted[m], 0)).max() < 0.03
    x = rng.uniform(-1, 1, (80, 6))
    errors = [dqn.pq_loss(x, dqn.pq_kmeans(x, np.zeros((2, 5, 3)), t, first=True, seed=1))[0]
              for t in (1, 2, 4, 8, 30)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] - 1e-3


def test_ring_buffer_keeps_the_most_recent_rows():
    buf = dqn.PQRingBuffer(5, 2)
    stream = np.arange(26, dtype=np.float32).reshape(13, 2)
    buf.append(stream[:3])
    np.testing.assert_array_equal(buf.rows(), stream[:3])
    buf.append(stream[3:10])
    np.testing.assert_array_equal(buf.rows(), stream[5:10])
    buf.append(stream[10:13])
    assert buf.count == 5
    np.testing.assert_array_equal(buf.rows(), stream[8:13])


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_subspaces=None, num_centroids=4, codebook_update_interval=3),
     "num_subspaces (M) is required"),
    (dict(num_subspaces=0, num_centroids=4, codebook_update_interval=3),
     "num_subspaces is 0; it must be >= 1"),
    (dict(num_subspaces=2, num_centroids=0, codebook_update_interval=3, buffer_size=5),
     "num_centroids is 0; it must be between 1 and 16777216"),
    (dict(num_subspaces=2, num_centroids=4, codebook_update_interval=None),
     "codebook_update_interval is required"),
    (dict(num_subspaces=2, num_centroids=4, codebook_update_interval=0),
     "codebook_update_interval is 0; it must be > 0"),
    (dict(num_subspaces=2, num_centroids=4, codebook_update_interval=3, buffer_size=3),
     "buffer_size is 3; it must be >= num_centroids (4): k-means needs at least K rows"),
    (dict(num_subspaces=2, num_centroids=4, codebook_update_interval=3, kmeans_iterations=0),
     "kmeans_iterations is 0; it must be >= 1"),
    (dict(num_subspaces=4, num_centroids=4, codebook_update_interval=3, dim=6),
     "num_subspaces is 4 but the bottom's rows have D = 6 values; M must divide D"),
])
def test_numpy_parameter_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        dqn.pq_check_params(**kwargs)
    assert message in str(err.value)


def test_numpy_input_errors():
    z = np.ones((3, 4))
    z[2, 1] = math.inf
    with pytest.raises(ValueError, match="the z bottom holds inf at row 2, column 1"):
        dqn.pq_loss(z, HAND_BOOKS)
    with pytest.raises(ValueError, match="must be M x K x D/M"):
        dqn.pq_loss(np.ones((3, 6)), HAND_BOOKS)
    with pytest.raises(ValueError, match=r"the state blob holds \(-3, 1\)"):
        dqn.pq_read_state(np.array([-3.0, 1.0]))
    assert dqn.pq_read_state(np.array([4.0, 1.0])) == (4, 1)


# ---[ Python layer vs C++ layer in one pycaffe net

FROZEN = "param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }"
NET = """
layer {{ name: "z" type: "Input" top: "z" input_param {{ shape {{ dim: {n} dim: {d} }} }} }}
layer {{ name: "split" type: "Split" bottom: "z" top: "z_cpp" top: "z_py" }}
layer {{ name: "cpp" type: "ProductQuantizationLoss" bottom: "z_cpp" top: "cpp_loss" {frozen}
        product_quantization_loss_param {{ {param} }} loss_weight: {w} }}
layer {{ name: "py" type: "Python" bottom: "z_py" top: "py_loss" {frozen}
        python_param {{ module: "tqn_layers" layer: "ProductQuantizationLossLayer"
                        param_str: "{param}" }} loss_weight: {w} }}
force_backward: true
"""


def make_net(tmp_path, phase, n, d, param, w=1.0):
    import caffe
    (tmp_path / "net.prototxt").write_text(NET.format(n=n, d=d, param=param, w=w, frozen=FROZEN))
    caffe.set_mode_cpu()
    return caffe.Net(str(tmp_path / "net.prototxt"), phase)


def test_python_layer_matches_cpp_loss_and_gradient(tmp_path, caffe_build):
    import caffe
    n, w = 12, 2.5
    net = make_net(tmp_path, caffe.TEST, n, 6,
                   "num_subspaces: 2 num_centroids: 3 codebook_update_interval: 5", w)
    rng = np.random.default_rng(8)
    books = rng.uniform(-1, 1, (2, 3, 3)).astype(np.float32)
    z, _ = clustered(rng, n, books.astype(np.float64), 0.3)
    net.blobs["z"].data[...] = z
    for layer in ("cpp", "py"):
        assert net.params[layer][0].data.shape == (2, 3, 3)
        assert not net.params[layer][0].data.any()  # 0 at setup
    net.forward()  # no codebooks yet: loss and gradient 0
    assert float(net.blobs["cpp_loss"].data) == 0 and float(net.blobs["py_loss"].data) == 0
    net.backward()
    assert not net.blobs["z"].diff.any()
    for layer in ("cpp", "py"):
        net.params[layer][0].data[...] = books
        net.params[layer][1].data[...] = (0, 1)
    net.forward()
    z32 = z.astype(np.float32).astype(np.float64)
    want_loss, want_grad, _ = dqn.pq_loss(z32, books, loss_weight=w)
    assert want_loss > 0.01
    assert float(net.blobs["cpp_loss"].data) == pytest.approx(want_loss, rel=1e-6)
    assert float(net.blobs["py_loss"].data) == pytest.approx(want_loss, rel=1e-6)
    net.backward()
    np.testing.assert_allclose(net.blobs["z_cpp"].diff, want_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["z_py"].diff, want_grad, rtol=1e-5, atol=1e-6)
    for layer in ("cpp", "py"):  # TEST phase: nothing counted
        np.testing.assert_array_equal(net.params[layer][1].data, [0, 1])
    # force_backward asks the C++ layer for the codebooks' gradient too (lr_mult 0: the solver
    # ignores it): dL/dC_m[k] = -sum of the rows' gradients coded k; the pycaffe layer writes none.
    codes = dqn.pq_encode(z32, books)
    want_dc = np.zeros((2, 3, 3))
    for i in range(n):
        for m in range(2):
            want_dc[m, codes[i, m]] -= want_grad[i, 3 * m:3 * m + 3]
    np.testing.assert_allclose(net.params["cpp"][0].diff, want_dc, rtol=1e-5, atol=1e-6)
    assert not net.params["py"][0].diff.any() and not net.params["cpp"][1].diff.any()


@pytest.mark.parametrize("fields, n, passes", [
    # buffer 20 of batches of 8: the buffer wraps mid-batch; updates at passes 3 and 6
    (dict(num_subspaces=2, num_centroids=4, codebook_update_interval=3, buffer_size=20,
          kmeans_iterations=10, seed=7), 8, 7),
    # empty clusters at the first update (K close to the buffer's rows, repeated rows)
    (dict(num_subspaces=3, num_centroids=6, codebook_update_interval=2, buffer_size=8,
          kmeans_iterations=5, seed=123456789012345), 4, 5),
])
def test_kmeans_updates_match_cpp(tmp_path, caffe_build, fields, n, passes):
    import caffe
    param = " ".join(f"{k}: {v}" for k, v in fields.items())
    net = make_net(tmp_path, caffe.TRAIN, n, 6, param)
    rng = np.random.default_rng(9)
    books = rng.uniform(-1, 1, (3, 4, 2))
    stream = []
    for p in range(1, passes + 1):
        z, _ = clustered(rng, n, books, 0.2)
        if p == 1:
            z[1:3] = z[0]  # equal rows
        net.blobs["z"].data[...] = z
        stream.append(net.blobs["z"].data.copy())
        net.forward()
        net.backward()
        cpp_books, py_books = net.params["cpp"][0].data, net.params["py"][0].data
        np.testing.assert_allclose(py_books, cpp_books, rtol=1e-6, atol=1e-6, err_msg=f"pass {p}")
        np.testing.assert_array_equal(net.params["cpp"][1].data, net.params["py"][1].data)
        assert float(net.blobs["py_loss"].data) == pytest.approx(
            float(net.blobs["cpp_loss"].data), rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(net.blobs["z_py"].diff, net.blobs["z_cpp"].diff, rtol=1e-5,
                                   atol=1e-6)
    interval, size = fields["codebook_update_interval"], fields["buffer_size"]
    assert list(net.params["cpp"][1].data) == [passes, passes // interval]
    assert float(net.blobs["cpp_loss"].data) > 0
    # The numpy updates on the buffers the layer held reproduce the C++ codebooks.
    rows = np.concatenate(stream)
    chain = np.zeros(net.params["cpp"][0].data.shape, np.float32)
    for update in range(1, passes // interval + 1):
        buffer = rows[:update * interval * n][-size:]
        chain = dqn.pq_kmeans(buffer, chain, fields["kmeans_iterations"], first=update == 1,
                              seed=fields["seed"]).astype(np.float32)
    np.testing.assert_allclose(chain, net.params["cpp"][0].data, rtol=1e-6, atol=1e-6)


# ---[ errors of both layers

ERROR_INPUT = 'layer { name: "z" type: "Input" top: "z" input_param { shape { dim: 4 dim: 6 } } }\n'
CPP = ('layer {{ name: "pq" type: "ProductQuantizationLoss" bottom: "z" top: "l" {frozen} '
       'product_quantization_loss_param {{ {param} }} }}')
PY = ('layer {{ name: "pq" type: "Python" bottom: "z" top: "l" {frozen} '
      'python_param {{ module: "tqn_layers" layer: "ProductQuantizationLossLayer" '
      'param_str: "{param}" }} loss_weight: 1 }}')

SCRIPT = """
import math, sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TRAIN if sys.argv[2] == "train" else caffe.TEST)
net.blobs["z"].data[...] = np.random.default_rng(0).uniform(-1, 1, net.blobs["z"].data.shape)
poke = sys.argv[3]
if poke == "nan":
    net.blobs["z"].data[0, 1] = math.nan
elif poke == "state":
    net.params["pq"][1].data[...] = (-5, 0)
net.forward()
print("NO ERROR")
"""

OK = "num_subspaces: 2 num_centroids: 4 codebook_update_interval: 3 buffer_size: 8"
ERROR_CASES = [
    # (parameter text, phase, poke, expected message)
    ("num_centroids: 4 codebook_update_interval: 3", "test", "-",
     "product_quantization_loss_param.num_subspaces (M) is required"),
    ("num_subspaces: 4 codebook_update_interval: 3 num_centroids: 4", "test", "-",
     "product_quantization_loss_param.num_subspaces is 4 but the bottom's rows have D = 6 values; "
     "M must divide D"),
    ("num_subspaces: 2 num_centroids: 4", "test", "-",
     "product_quantization_loss_param.codebook_update_interval is required"),
    ("num_subspaces: 2 num_centroids: 4 codebook_update_interval: 0", "test", "-",
     "product_quantization_loss_param.codebook_update_interval is 0; it must be > 0"),
    ("num_subspaces: 2 num_centroids: 0 codebook_update_interval: 3 buffer_size: 8", "test", "-",
     "product_quantization_loss_param.num_centroids is 0; it must be between 1 and 16777216"),
    ("num_subspaces: 2 num_centroids: 16 codebook_update_interval: 3 buffer_size: 8", "test", "-",
     "product_quantization_loss_param.buffer_size is 8; it must be >= num_centroids (16): "
     "k-means needs at least K rows"),
    (OK + " kmeans_iterations: 0", "test", "-",
     "product_quantization_loss_param.kmeans_iterations is 0; it must be >= 1"),
    ("num_subspaces: 2 num_centroids: 6 codebook_update_interval: 1 buffer_size: 8", "train", "-",
     "a codebook update is due at forward pass 1 but the buffer holds only 4 rows, fewer than "
     "product_quantization_loss_param.num_centroids (6); raise codebook_update_interval or "
     "lower num_centroids"),
    (OK, "train", "nan", "the z bottom holds nan at row 0, column 1"),
    (OK, "test", "state", "the state blob holds (-5, 0); it must hold whole numbers >= 0"),
]


def run_net(tmp_path, env, text, phase, poke):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(path), phase, poke],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["cpp", "python"])
@pytest.mark.parametrize("param, phase, poke, message", ERROR_CASES)
def test_errors_are_named(tmp_path, subprocess_env, kind, param, phase, poke, message):
    layer = (CPP if kind == "cpp" else PY).format(param=param, frozen=FROZEN)
    run = run_net(tmp_path, subprocess_env, ERROR_INPUT + layer, phase, poke)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert message in run.stderr, run.stderr[-3000:]
    assert ("Layer 'pq'" if kind == "cpp" else "Layer 'ProductQuantizationLoss'") in run.stderr


@pytest.mark.parametrize("frozen, message", [
    ("", "add `param { lr_mult: 0 decay_mult: 0 }` twice to the layer"),
    ("param { lr_mult: 0 decay_mult: 0 }", "add `param { lr_mult: 0 decay_mult: 0 }` twice"),
    ("param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }",
     "param 1 has lr_mult 1 and decay_mult 0; both blobs (codebooks, state) are updated by "
     "k-means, never by the solver"),
    ("param { lr_mult: 0 } param { lr_mult: 0 decay_mult: 0 }",
     "param 0 has lr_mult 0 and decay_mult 1;"),
])
def test_cpp_layer_requires_frozen_blobs(tmp_path, subprocess_env, frozen, message):
    run = run_net(tmp_path, subprocess_env, ERROR_INPUT + CPP.format(param=OK, frozen=frozen),
                  "test", "-")
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert "Layer 'pq'" in run.stderr and message in run.stderr, run.stderr[-3000:]
