"""Tests of tools/hashing/baselines.py: each baseline on data where the right answer is known.

* ITQ: on rotated hypercube vertices the optimal rotation is known (loss ~ noise), and on
  correlated Gaussian data the learned rotation must beat plain PCA sign codes (R = I);
  losses non-increasing, R orthogonal.
* LSH: for centred vectors at angle theta a bit differs with probability theta / pi.
* SDH: on digits (bundled with scikit-learn) its codes must rank far better than LSH's;
  DCC checked against brute force on a small problem.
* KSH: its objective against the direct ||B B^T - r S0||^2, its bit against brute force over all
  codes of a small separable case, its smoothed gradient against finite differences; digits vs LSH.
"""
import itertools
import json
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs
from sklearn.model_selection import train_test_split

from tools.hashing import baselines as B
from tools.pipeline import evaluation as E
from tools.hashing.codes import pack_bits
from tools.hashing.metrics import evaluate_codes

METHODS = ("lsh", "itq", "sdh", "ksh")


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=300, centers=5, n_features=20, cluster_std=2.0,
                      random_state=0)
    return x, y


@pytest.fixture(scope="module")
def digits_split():
    """Raw digits pixels / 16; a stratified 20% query set, the other 80% train = database."""
    d = load_digits()
    x = B.raw_pixel_features(d.images, max_value=16)
    xdb, xq, ydb, yq = train_test_split(x, d.target, test_size=0.2, stratify=d.target,
                                        random_state=0)
    return xdb, ydb, xq, yq


# ---------------------------------------------------------------------------------------
# Common interface
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nbits", [1, 7, 16])
def test_shapes_and_packing(blobs, method, nbits):
    x, y = blobs
    hasher = B.make_hasher(method, nbits, seed=0)
    assert hasher.fit(x, y) is hasher
    bits = hasher.encode(x[:37])
    assert bits.dtype == np.bool_ and bits.shape == (37, nbits)
    assert pack_bits(bits).shape == (37, -(-nbits // 8))
    info = hasher.fit_info
    for key in ("iterations", "losses", "seconds", "method", "nbits", "n_train", "dim"):
        assert key in info
    assert info["method"] == method and info["n_train"] == len(x) and info["seconds"] >= 0


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(blobs, method):
    x, y = blobs
    kw = {"n_anchors": 100} if method == "ksh" else {}  # (all 300 items would be KSH's anchors)
    codes = [B.make_hasher(method, 16, seed=s, **kw).fit(x, y).encode(x) for s in (3, 3, 4)]
    np.testing.assert_array_equal(codes[0], codes[1])
    assert not np.array_equal(codes[0], codes[2])


def test_run_baseline(blobs):
    x, y = blobs
    qb, dbb, info = B.run_baseline("itq", 8, x[:200], y[:200], x[200:], x[:200], seed=1)
    assert qb.shape == (100, 8) and dbb.shape == (200, 8) and qb.dtype == np.bool_
    assert info["iterations"] == 50 and len(info["losses"]) == 51 and "encode_seconds" in info
    np.testing.assert_array_equal(qb, B.make_hasher("itq", 8, 1).fit(x[:200]).encode(x[200:]))
    with pytest.raises(ValueError, match="unknown hashing baseline"):
        B.run_baseline("pq", 8, x, y, x, x)


# ---------------------------------------------------------------------------------------
# ITQ
# ---------------------------------------------------------------------------------------


def correlated_gaussian(n=2000, dim=32, seed=0):
    """Correlated Gaussian features, offset from 0; PCA standard deviations ~0.4..1.9."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) * np.linspace(1.5, 0.3, dim) / np.sqrt(dim)
    return rng.standard_normal((n, dim)) @ mixing.T + 5.0


def test_itq_beats_pca_signs_and_loss_never_increases():
    x = correlated_gaussian()
    for nbits in (8, 16):
        itq = B.ITQ(nbits, seed=0).fit(x)
        info = itq.fit_info
        losses = np.array(info["losses"])
        assert len(losses) == 51
        assert np.all(np.diff(losses) <= 1e-9 * losses[0])
        assert losses[-1] < 0.97 * info["loss_pca"]  # ITQ rotation vs R = I
        r = itq.rotation_
        np.testing.assert_allclose(r.T @ r, np.eye(nbits), atol=1e-10)
        v = itq.pca_.transform(x)
        assert losses[-1] == pytest.approx(B.quantization_loss(v, r), rel=1e-12)
        assert info["loss_pca"] == pytest.approx(B.quantization_loss(v, np.eye(nbits)))
        np.testing.assert_array_equal(itq.encode(x), v @ r >= 0)


def test_itq_recovers_a_planted_rotation():
    """Rotated hypercube vertices: the best rotation maps them back onto the vertices, where
    the loss is only the noise, ~ n * nbits * noise^2 (that of R = I is tens of times more).
    ITQ is a local method: from a random start it can stop in a local minimum (about half
    the seeds here do), so the best of six seeds must reach the noise floor."""
    rng = np.random.default_rng(0)
    n, nbits, noise = 1000, 4, 0.05
    cube = rng.choice([-1.0, 1.0], size=(n, nbits))
    x = (cube + noise * rng.standard_normal((n, nbits))) @ B.random_orthogonal(nbits, rng).T
    fits = [B.ITQ(nbits, seed=s).fit(x) for s in range(6)]
    for itq in fits:
        assert itq.fit_info["losses"][-1] <= itq.fit_info["losses"][0]
    best = min(fits, key=lambda itq: itq.fit_info["losses"][-1])
    assert best.fit_info["losses"][-1] < 2 * n * nbits * noise ** 2
    assert best.fit_info["loss_pca"] > 20 * best.fit_info["losses"][-1]
    # its codes are the planted vertices up to a signed permutation of the bits
    match = np.abs((2.0 * best.encode(x) - 1).T @ cube) / n
    assert np.all(match.max(axis=1) == 1.0)


# ---------------------------------------------------------------------------------------
# LSH
# ---------------------------------------------------------------------------------------


def test_lsh_hamming_estimates_angles():
    rng = np.random.default_rng(0)
    dim, nbits = 32, 4096
    train = rng.standard_normal((500, dim))
    train = np.vstack([train, -train])  # mean exactly 0: centring keeps every angle
    lsh = B.LSH(nbits, seed=5).fit(train)
    np.testing.assert_allclose(lsh.mean_, 0.0, atol=1e-12)
    angles = np.linspace(0.0, np.pi, 25)
    u, v = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T
    a = np.tile(u, (len(angles), 1))
    b = np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v
    differing = (lsh.encode(a) != lsh.encode(b)).mean(axis=1)
    expected = angles / np.pi
    # one pair: binomial std <= sqrt(0.25 / 4096) = 0.0078
    assert np.max(np.abs(differing - expected)) < 0.04
    assert np.mean(np.abs(differing - expected)) < 0.015
    assert differing[0] == 0.0 and differing[-1] == 1.0  # same and opposite vectors


def test_lsh_centres_on_the_training_mean():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 10))
    shift = rng.standard_normal(10) * 100
    plain = B.LSH(24, seed=0).fit(x).encode(x)
    shifted = B.LSH(24, seed=0).fit(x + shift).encode(x + shift)
    np.testing.assert_array_equal(plain, shifted)


# ---------------------------------------------------------------------------------------
# SDH
# ---------------------------------------------------------------------------------------


def test_sdh_retrieves_digits_far_better_than_lsh(digits_split):
    xdb, ydb, xq, yq = digits_split
    nbits = 24
    maps = {}
    for method in ("lsh", "sdh"):
        qb, dbb, info = B.run_baseline(method, nbits, xdb, ydb, xq, xdb, seed=0)
        maps[method] = evaluate_codes(qb, yq, dbb, ydb, nbits)["map_tie_aware"]
    assert maps["sdh"] > 0.9
    assert maps["sdh"] > maps["lsh"] + 0.3, maps
    assert info["n_anchors"] == 1000 and info["iterations"] >= 1
    for sweeps in info["dcc_objectives"]:
        assert np.all(np.diff(sweeps) <= 1e-9 * abs(sweeps[0]))


def test_sdh_anchors_capped_and_kmeans(blobs):
    x, y = blobs
    sdh = B.SDH(8, seed=0, anchors="kmeans", n_anchors=50).fit(x, y)
    assert sdh.anchors_.shape == (50, x.shape[1]) and sdh.fit_info["n_anchors"] == 50
    assert B.SDH(8, seed=0).fit(x, y).fit_info["n_anchors"] == len(x)  # 1000 capped by n
    assert B.SDH(8, seed=0, sigma=2.5).fit(x, y).sigma_ == 2.5


def test_sdh_warm_start_objective_never_increases(blobs):
    x, y = blobs
    info = B.SDH(12, seed=0, dcc_init="warm", tol=0).fit(x, y).fit_info
    losses = np.array(info["losses"])
    assert len(losses) == 6
    assert np.all(np.diff(losses) <= 1e-9 * losses[0])


def test_dcc_objective_is_the_sdh_loss_up_to_a_constant():
    rng = np.random.default_rng(0)
    n, nbits, c, nu = 30, 6, 4, 0.3
    y = np.eye(c)[rng.integers(0, c, n)]
    w = rng.standard_normal((nbits, c))
    phi_p = rng.standard_normal((n, nbits))
    q = y @ w.T + nu * phi_p

    def loss(b):
        return np.sum((y - b @ w) ** 2) + nu * np.sum((b - phi_p) ** 2)

    b1, b2 = (rng.choice([-1.0, 1.0], size=(n, nbits)) for _ in range(2))
    assert loss(b1) - loss(b2) == pytest.approx(
        B.dcc_objective(b1, w, q) - B.dcc_objective(b2, w, q), rel=1e-12)


def test_dcc_descends_to_a_one_flip_optimum_above_the_brute_force_minimum():
    rng = np.random.default_rng(1)
    n, nbits, c = 40, 6, 5
    w = rng.standard_normal((nbits, c))
    q = rng.standard_normal((n, nbits)) * 2
    start = rng.choice([-1.0, 1.0], size=(n, nbits))
    b, objectives = B.dcc(start, w, q, max_sweeps=50, tol=0)
    history = np.array([B.dcc_objective(start, w, q)] + objectives)
    assert np.all(np.diff(history) <= 1e-9 * np.abs(history).max())
    assert set(np.unique(b)) <= {-1.0, 1.0}
    final = B.dcc_objective(b, w, q)
    for i, k in itertools.product(range(n), range(nbits)):  # no single flip improves
        flipped = b.copy()
        flipped[i, k] *= -1
        assert B.dcc_objective(flipped, w, q) >= final - 1e-9
    # rows are independent: the global minimum is the sum of per-row minima over 2^nbits
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=nbits)))
    per_code = np.sum((codes @ w) ** 2, axis=1)[None, :] - 2.0 * q @ codes.T
    best = per_code.min(axis=1).sum()
    assert best - 1e-9 <= final <= history[0]


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_itq_refuses_more_bits_than_dimensions(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match=r"nbits=21 exceeds the feature dimension 20"):
        B.ITQ(21).fit(x)
    with pytest.raises(ValueError, match=r"nbits=16 exceeds the 10 training items"):
        B.ITQ(16).fit(x[:10])


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_features_are_refused(blobs, method):
    x, y = blobs
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"training features contain NaN values.*rows \[3\]"):
        B.make_hasher(method, 8).fit(bad, y)
    hasher = B.make_hasher(method, 8).fit(x, y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"features contain inf"):
        hasher.encode(bad)


def test_other_bad_input(blobs):
    x, y = blobs
    with pytest.raises(ValueError, match="not fitted"):
        B.LSH(8).encode(x)
    with pytest.raises(ValueError, match="fitted on 20"):
        B.LSH(8).fit(x).encode(x[:, :5])
    with pytest.raises(ValueError, match="supervised"):
        B.SDH(8).fit(x)
    with pytest.raises(ValueError, match="one label per item"):
        B.SDH(8).fit(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        B.SDH(8).fit(x, np.zeros(len(x)))
    for sigma in ("median", -1.0, np.nan):
        with pytest.raises(ValueError, match="sigma"):
            B.SDH(8, sigma=sigma)
    with pytest.raises(ValueError, match="2-D"):
        B.LSH(8).fit(x[0])
    for nbits in (0, -3, 2.5):
        with pytest.raises(ValueError, match="nbits"):
            B.make_hasher("lsh", nbits)


# ---------------------------------------------------------------------------------------
# Saved blobs and raw pixels
# ---------------------------------------------------------------------------------------


def write_blobs(folder, sets, database_is_query=False, bits=20):
    os.makedirs(folder)
    for name, (feats, labels) in sets.items():
        os.makedirs(os.path.join(folder, name))
        np.save(os.path.join(folder, name, "features.npy"), feats.astype(np.float32))
        np.save(os.path.join(folder, name, "labels.npy"), labels.astype(np.int64))
    if database_is_query:
        os.symlink("query", os.path.join(folder, "database"))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(dict(bits=bits, protocol="test", database_is_query=database_is_query), f)


def test_run_baseline_on_blobs(tmp_path, blobs):
    x, y = blobs
    x = x.astype(np.float32)
    folder = str(tmp_path / "split")
    write_blobs(folder, {"query": (x[:50], y[:50]), "database": (x[50:], y[50:])})
    qb, dbb, info = E.run_baseline_on_blobs(folder, "sdh", 12, seed=0)
    assert info["train_set"] == "database" and not info["transductive"]
    ref_q, ref_db, _ = B.run_baseline("sdh", 12, x[50:], y[50:], x[:50], x[50:], seed=0)
    np.testing.assert_array_equal(qb, ref_q)
    np.testing.assert_array_equal(dbb, ref_db)
    assert info["metrics"]["n_queries"] == 50 and info["metrics"]["map_tie_aware"] > 0.5

    with_train = str(tmp_path / "with_train")
    write_blobs(with_train, {"query": (x[:50], y[:50]), "database": (x[50:150], y[50:150]),
                             "train": (x[150:], y[150:])})
    assert E.run_baseline_on_blobs(with_train, "lsh", 8)[2]["train_set"] == "train"

    same = str(tmp_path / "dsh")
    write_blobs(same, {"query": (x[:80], y[:80])}, database_is_query=True)
    qb, dbb, info = E.run_baseline_on_blobs(same, "itq", 8)
    np.testing.assert_array_equal(qb, dbb)
    assert info["exclude_self"] and info["transductive"]
    assert info["metrics"]["n_database"] == 79

    with pytest.raises(ValueError, match="no meta.json"):
        E.run_baseline_on_blobs(str(tmp_path), "lsh", 8)


def test_raw_pixel_features():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    feats = B.raw_pixel_features(images)
    assert feats.dtype == np.float32 and feats.shape == (2, 12)
    np.testing.assert_allclose(feats, images.reshape(2, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(B.raw_pixel_features(images.astype(float), 230).max(), 1.0)
    with pytest.raises(ValueError, match="max_value"):
        B.raw_pixel_features(images.astype(float))


# ---------------------------------------------------------------------------------------
# KSH
# ---------------------------------------------------------------------------------------


def test_ksh_residuals_are_the_direct_objective(blobs):
    x, y = blobs
    ksh = B.KSH(6, seed=1, n_anchors=40, n_labeled=120).fit(x, y)
    info = ksh.fit_info
    rows = np.asarray(info["labeled_rows"])
    codes = np.where(ksh.encode(x[rows]), 1.0, -1.0)
    s0 = np.where(y[rows][:, None] == y[rows][None, :], 1.0, -1.0)
    # direct: sum over pairs of (b_i . b_j - r s_ij)^2 with explicit loops over a few rows too
    direct = sum((codes[i] @ codes[j] - 6 * s0[i, j]) ** 2 for i in range(len(rows)) for j in range(len(rows)))
    assert info["objective"] == pytest.approx(direct)
    assert info["losses"][-1] == pytest.approx(direct)      # ||S_r||^2 after the last bit
    start = float(np.sum((6 * s0) ** 2))
    assert info["losses"][0] < start                          # every bit lowers the residual here
    assert all(b <= a + 1e-9 for a, b in zip(info["losses"], info["losses"][1:]))
    for costs in info["smooth_costs"]:                        # descent never raises the smooth cost
        assert all(b <= a for a, b in zip(costs, costs[1:]))


def test_ksh_bit_matches_brute_force_on_a_separable_case():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.3, (6, 2)) + [3, 0], rng.normal(0, 0.3, (6, 2)) - [3, 0]])
    y = np.array([0] * 6 + [1] * 6)
    s0 = np.where(y[:, None] == y[None, :], 1.0, -1.0)
    best = max(np.array(c) @ s0 @ np.array(c) for c in itertools.product([-1.0, 1.0], repeat=len(y)))
    ksh = B.KSH(1, seed=0, n_anchors=12, n_labeled=12).fit(x, y)
    code = np.where(ksh.encode(x)[:, 0], 1.0, -1.0)
    assert code @ s0 @ code == best == len(y) ** 2
    assert ksh.fit_info["objective"] == pytest.approx(ksh_objective_brute(code[:, None], s0))


def ksh_objective_brute(codes, s0):
    r = codes.shape[1]
    return sum((sum(codes[i, k] * codes[j, k] for k in range(r)) - r * s0[i, j]) ** 2
               for i in range(len(codes)) for j in range(len(codes)))


def test_ksh_smooth_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    kk = rng.normal(size=(15, 4))
    lab = rng.integers(0, 3, 15)
    s = 2 * np.where(lab[:, None] == lab[None, :], 1.0, -1.0)
    a = rng.normal(size=4)
    cost, grad = B.ksh_smooth_cost(a, kk, s)
    phi = 2 / (1 + np.exp(-(kk @ a))) - 1            # the paper's sigmoid form
    assert cost == pytest.approx(-(phi @ s @ phi))
    h = 1e-6
    numeric = [(B.ksh_smooth_cost(a + h * e, kk, s)[0] - B.ksh_smooth_cost(a - h * e, kk, s)[0]) / (2 * h)
               for e in np.eye(4)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)
    a2, costs = B.ksh_optimize_bit(kk, s, a, 200)
    assert costs[-1] < costs[0] and B.ksh_smooth_cost(a2, kk, s)[0] == pytest.approx(costs[-1])


def test_ksh_retrieves_digits_far_better_than_lsh(digits_split):
    xdb, ydb, xq, yq = digits_split
    maps = {}
    for method in ("lsh", "ksh"):
        qb, dbb, info = B.run_baseline(method, 24, xdb, ydb, xq, xdb, seed=0)
        maps[method] = evaluate_codes(qb, yq, dbb, ydb, 24)["map_tie_aware"]
    assert maps["ksh"] > maps["lsh"] + 0.3, maps
    assert info["n_anchors"] == 300 and info["n_labeled"] == len(xdb)


def test_ksh_needs_two_classes(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match="2 classes"):
        B.KSH(4).fit(x, np.zeros(len(x), int))


def test_ksh_low_rank_residual_equals_the_dense_matrix():
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 4, 30)
    onehot = np.eye(4)[lab]
    s = B.KSHResidual(onehot, 5)
    dense = 5 * np.where(lab[:, None] == lab[None, :], 1.0, -1.0)
    for _ in range(3):
        np.testing.assert_allclose(s.dense(), dense)
        assert s.frobenius2() == pytest.approx(np.sum(dense ** 2))
        v, m = rng.normal(size=30), rng.normal(size=(30, 3))
        np.testing.assert_allclose(s @ v, dense @ v)
        np.testing.assert_allclose(v @ s, v @ dense)
        np.testing.assert_allclose(m.T @ s @ m, m.T @ dense @ m)
        y = np.where(rng.normal(size=30) >= 0, 1.0, -1.0)
        s.subtract(y)
        dense = dense - np.outer(y, y)
