"""prototxt/tqn_params.py: Eq. 9 and Eq. 16 worked by hand, and Table I's deviation from Eq. 16."""
import pytest

from prototxt import tqn_params


def test_eq9_and_clip_for_papers_Delta():
    assert tqn_params.alpha_s(0.4) == pytest.approx(0.16)      # Delta^2
    assert tqn_params.clip_delta(0.4) == pytest.approx(0.64)   # 4 Delta^2


@pytest.mark.parametrize("bits, omega, want", [
    # K = ceil(ceil(log2 10) / 2) = 2; 0.64 (K + omega) + 0.09 (N - K - omega)
    (12, 1, 0.64 * 3 + 0.09 * 9),    # 2.73
    (24, 2, 0.64 * 4 + 0.09 * 20),   # 4.36
    (48, 2, 0.64 * 4 + 0.09 * 44),   # 6.52
])
def test_eq16_cifar10_by_hand(bits, omega, want):
    assert tqn_params.alpha_d_eq16(10, bits, omega, 0.3) == pytest.approx(want)
    assert round(want, 2) in (2.73, 4.36, 6.52)


def test_eq16_inshop_by_hand():
    # K = ceil(13 / 2) = 7, omega = 3: 0.64 * 10 + 0.16 * 38 = 12.48 at 48 bits
    assert tqn_params.alpha_d_eq16(7982, 48, 3, 0.4) == pytest.approx(12.48)


def test_table_i_values_and_its_implied_flipped_bits():
    rows = {(r["dataset"], r["bits"]): r for r in tqn_params.table_rows()}
    assert [rows["cifar10", n]["table_i"] for n in (12, 24, 48)] == [3.83, 5.46, 7.62]
    assert [rows["inshop", n]["table_i"] for n in (48, 96, 192)] == [12.00, 19.68, 35.04]
    # CIFAR-10: a constant +1.10 = 0.55 * 2; In-shop: a constant -0.48 = 0.48 * 1.
    for n in (12, 24, 48):
        assert rows["cifar10", n]["difference"] == pytest.approx(1.10)
        assert rows["cifar10", n]["table_i_flipped"] == pytest.approx(rows["cifar10", n]["eq16_flipped"] + 2)
    for n in (48, 96, 192):
        assert rows["inshop", n]["difference"] == pytest.approx(-0.48)
        assert rows["inshop", n]["table_i_flipped"] == pytest.approx(rows["inshop", n]["eq16_flipped"] - 1)
    assert tqn_params.table_i_alpha_d("cifar10", 48) == 7.62


@pytest.mark.parametrize("args, message", [
    (dict(num_classes=1, bits=12, omega=1, epsilon=0.3), "number of classes must be >= 2"),
    (dict(num_classes=10, bits=12, omega=1, epsilon=0.7), "epsilon must lie in"),
    (dict(num_classes=10, bits=2, omega=1, epsilon=0.3), "do not fit in 2 bits"),
    (dict(num_classes=10, bits=12, omega=1, epsilon=0.3, Delta=0.6), "Delta must lie in"),
])
def test_bad_parameters_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        tqn_params.alpha_d_eq16(**args)


def test_table_i_lookup_names_what_exists():
    with pytest.raises(KeyError, match="no alpha_d for cifar10 at 64 bits"):
        tqn_params.table_i_alpha_d("cifar10", 64)


def test_cli_table(capsys):
    assert tqn_params.main(["--table1"]) == 0
    out = capsys.readouterr().out
    assert "| cifar10 | 10 | 12 | 1 | 0.3 | 3.83 | 2.73 | +1.10 | 3 | 5 |" in out
