"""The numpy losses (what the Python layers run): hand computations, numeric gradients, and
the paper's printed gradient (Eq. 5) failing the same numeric check."""
import numpy as np
import pytest

from tqn_layers import losses

from triplet_data import numeric_gradient, off_kink_triplets

# The hand-computed cases of the C++ gtests (layers/src/caffe/test/), worked in their comments.
TRIPLET_HAND = dict(a=[[0.9, 0.1], [0.0, 1.0]], p=[[0.8, 0.3], [0.1, 0.9]], n=[[0.2, 0.7], [1.0, 0.0]])
TQN_HAND = dict(a=[[0.9, 0.2], [0.1, 0.95]], p=[[0.7, 0.6], [0.2, 0.9]], n=[[0.2, 0.3], [0.85, 0.05]])


def test_triplet_loss_hand_computed():
    loss, (da, dp, dn) = losses.triplet_loss(**TRIPLET_HAND, margin=1.6)
    assert loss == pytest.approx(0.20, abs=1e-12)
    np.testing.assert_allclose(da, [[-0.3, 0.2], [0, 0]], atol=1e-12)
    np.testing.assert_allclose(dp, [[-0.05, 0.1], [0, 0]], atol=1e-12)
    np.testing.assert_allclose(dn, [[0.35, -0.3], [0, 0]], atol=1e-12)


def test_tqn_loss_hand_computed():
    loss, loss_s, loss_d, (da, dp, dn) = losses.triplet_quantization_loss(**TQN_HAND, alpha_d=1.0)
    assert (loss, loss_s, loss_d) == pytest.approx((1.365, 0.155, 0.125), abs=1e-12)
    np.testing.assert_allclose(da, [[-1.15, -0.35], [1.2, 0]], atol=1e-12)
    np.testing.assert_allclose(dp, [[-1.6, 1.2], [1.6, 0]], atol=1e-12)
    np.testing.assert_allclose(dn, [[0.35, -0.05], [0, 0]], atol=1e-12)


def test_triplet_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    a, p, n = off_kink_triplets(rng, 12, 5)
    f = lambda a, p, n: losses.triplet_loss(a, p, n, margin=0.4)[0]
    grads = losses.triplet_loss(a, p, n, margin=0.4, loss_weight=1.0)[1]
    active = 0.4 + ((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) > 0
    assert 0 < active.sum() < len(active)  # both sides of the hinge are checked
    for k in range(3):
        np.testing.assert_allclose(grads[k], numeric_gradient(f, [a, p, n], k), atol=1e-8)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.7, 0.3, -1.1)])
def test_tqn_gradient_matches_finite_differences(weights):
    rng = np.random.default_rng(1)
    a, p, n = off_kink_triplets(rng, 10, 6)
    params = dict(alpha_d=1.2, beta=8.0, gamma=1.0)

    def objective(a, p, n):  # what Caffe's top diffs weigh: w0 L + w1 L_s + w2 L_d
        loss, loss_s, loss_d, _ = losses.triplet_quantization_loss(a, p, n, **params)
        return weights[0] * loss + weights[1] * loss_s + weights[2] * loss_d

    grads = losses.triplet_quantization_loss(a, p, n, **params, loss_weights=weights)[3]
    for k in range(3):
        np.testing.assert_allclose(grads[k], numeric_gradient(objective, [a, p, n], k), atol=1e-8)


def test_paper_printed_gradient_fails_the_numeric_check():
    """Eq. 5 as printed: L_d's anchor term has the wrong sign, and L_s is gated per triplet."""
    rng = np.random.default_rng(2)
    a, p, n = off_kink_triplets(rng, 10, 6)
    params = dict(alpha_d=1.2, beta=8.0, gamma=1.0)
    f = lambda a, p, n: losses.triplet_quantization_loss(a, p, n, **params)[0]
    numeric = [numeric_gradient(f, [a, p, n], k) for k in range(3)]
    printed = losses.paper_eq5_gradients(a, p, n, **params)
    ours = losses.triplet_quantization_loss(a, p, n, **params)[3]
    np.testing.assert_allclose(ours[0], numeric[0], atol=1e-8)
    assert np.abs(printed[0] - numeric[0]).max() > 0.1       # the anchor's gradient is wrong
    assert np.abs(printed[1] - numeric[1]).max() > 0.1       # so is the positive's (gating)
    np.testing.assert_allclose(printed[2], numeric[2], atol=1e-8)  # Eq. 7 (negative) is right


def test_paper_eq5_sign_error_isolated():
    """With L_s switched off (beta = 0), Eq. 5's anchor term is exactly minus the true one."""
    rng = np.random.default_rng(3)
    a, p, n = off_kink_triplets(rng, 8, 4)
    params = dict(alpha_d=1.2, beta=0.0, gamma=1.0)
    printed = losses.paper_eq5_gradients(a, p, n, **params)[0]
    true = losses.triplet_quantization_loss(a, p, n, **params)[3][0]
    assert np.abs(true).max() > 0
    np.testing.assert_allclose(printed, -true, atol=1e-12)


def test_paper_eq5_per_triplet_gating_isolated():
    """With L_d switched off (gamma = 0), Eq. 5-6 move bits whose own hinge is inactive."""
    a = np.array([[0.1, 0.95]])
    p = np.array([[0.2, 0.9]])   # bit 0: 0.16 - 0.12 > 0 (active); bit 1: 0.16 - 0.18 < 0
    n = np.zeros((1, 2))
    params = dict(alpha_d=1.0, beta=8.0, gamma=0.0)
    printed_da, printed_dp, _ = losses.paper_eq5_gradients(a, p, n, **params)
    true_da, true_dp, _ = losses.triplet_quantization_loss(a, p, n, **params)[3]
    assert true_da[0, 1] == 0 and true_dp[0, 1] == 0
    assert printed_da[0, 1] == pytest.approx(8 * (0.5 - 0.9))
    assert printed_dp[0, 1] == pytest.approx(8 * (0.5 - 0.95))


@pytest.mark.parametrize("bad, message", [
    (dict(p=np.zeros((3, 4))), "must be non-empty arrays of one shape"),
    (dict(a=np.full((2, 4), np.nan)), "anchor bottom holds nan at row 0, column 0"),
    (dict(n=np.array([[0, 0, 0, np.inf]] * 2)), "negative bottom holds inf at row 0, column 3"),
])
def test_bad_inputs_are_named(bad, message):
    args = dict(a=np.zeros((2, 4)), p=np.zeros((2, 4)), n=np.zeros((2, 4)))
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        losses.triplet_quantization_loss(**args, alpha_d=1.0)


def test_identical_saturated_codes_are_a_stationary_point_of_tqn():
    """Why step 2 can collapse (README): L_d's gradient is proportional to a - n, so when every
    image has the same saturated code, L_s = 0, L_d = alpha_d / 2 and every gradient is 0; with the
    paper's beta = 8 that point lies below a typical starting loss."""
    bs, bits, alpha_d = 16, 12, 3.83
    corner = np.where(np.arange(bits) % 3 == 0, 0.97, 0.02)          # far from t = 0.5 in every bit
    a = p = n = np.tile(corner, (bs, 1))
    loss, loss_s, loss_d, grads = losses.triplet_quantization_loss(a, p, n, alpha_d=alpha_d)
    assert loss_s == 0 and loss_d == pytest.approx(alpha_d / 2) and loss == pytest.approx(alpha_d / 2)
    for g in grads:
        assert np.abs(g).max() == 0
    # a spread start (codes not yet binary) has a higher loss with beta = 8 than the collapse
    rng = np.random.default_rng(0)
    a, p, n = (rng.uniform(0.2, 0.8, (bs, bits)) for _ in range(3))
    start = losses.triplet_quantization_loss(a, p, n, alpha_d=alpha_d)[0]
    assert start > alpha_d / 2
