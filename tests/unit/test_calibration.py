"""Coverage, variance-scale fitting and member re-spreading (`discovery.surrogates.calibration`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from discovery.surrogates.calibration import coverage, fit_variance_scale, rescale_members


def test_coverage_on_a_hand_example():
    # |z| = 0, 0.5, 1, 2, 4 (the last std is 0.5, so |y - mean| = 2 is 4 sigma)
    y = [1.0, 1.5, 3.0, -2.0, 2.0]
    mean = [1.0, 1.0, 2.0, 0.0, 0.0]
    std = [1.0, 1.0, 1.0, 1.0, 0.5]
    c = coverage(y, mean, std)
    assert c["n"] == 5
    assert c["within_1sigma"] == pytest.approx(3 / 5)  # 0, 0.5 and exactly 1 count
    assert c["within_2sigma"] == pytest.approx(4 / 5)  # exactly 2 counts
    assert c["mean_abs_z"] == pytest.approx((0 + 0.5 + 1 + 2 + 4) / 5)
    z2 = np.array([0, 0.25, 1, 4, 16])
    expected_nll = np.mean(0.5 * math.log(2 * math.pi) + np.log(std) + 0.5 * z2)
    assert c["nll"] == pytest.approx(expected_nll)


def test_coverage_of_empty_input_and_zero_std():
    empty = coverage([], [], [])
    assert empty["n"] == 0
    assert all(math.isnan(empty[k]) for k in ("within_1sigma", "within_2sigma", "mean_abs_z", "nll"))
    exact = coverage([1.0], [1.0], [0.0])  # a perfect point with std 0 is covered (floor 1e-9)
    assert exact["within_1sigma"] == 1.0 and exact["mean_abs_z"] == 0.0 and math.isfinite(exact["nll"])
    missed = coverage([1.0], [0.0], [0.0])
    assert missed["within_2sigma"] == 0.0 and missed["mean_abs_z"] == pytest.approx(1e9)


def test_fit_variance_scale_exact_values_and_clipping():
    # z = 2, -2, 2, -2 -> s = sqrt(mean(z^2)) = 2
    assert fit_variance_scale([2.0, -2.0, 2.0, -2.0], [0.0] * 4, [1.0] * 4) == pytest.approx(2.0)
    # z = 1, 0, 3 -> sqrt(10 / 3)
    assert fit_variance_scale([1.0, 5.0, 0.0], [0.0, 5.0, 3.0], [1.0, 2.0, 1.0]) == pytest.approx(
        math.sqrt(10 / 3))
    assert fit_variance_scale([0.0] * 5, [0.0] * 5, [1.0] * 5) == 0.1  # perfect -> floor
    assert fit_variance_scale([1e6] * 5, [0.0] * 5, [1.0] * 5) == 100.0  # hopeless -> ceil
    assert fit_variance_scale([0.0] * 5, [0.0] * 5, [1.0] * 5, floor=0.5) == 0.5
    assert fit_variance_scale([1e6] * 5, [0.0] * 5, [1.0] * 5, ceil=7.0) == 7.0
    assert fit_variance_scale([3.0, 3.0], [0.0, 0.0], [1.0, 1.0]) == 1.0  # fewer than 3 points
    assert fit_variance_scale([], [], []) == 1.0


def test_the_scale_maximises_the_likelihood():
    rng = np.random.default_rng(3)
    y, mean, std = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.2, 1.0, 50)
    s = fit_variance_scale(y, mean, std)
    best = coverage(y, mean, s * std)["nll"]
    for factor in (0.9, 0.97, 1.03, 1.1):
        assert coverage(y, mean, factor * s * std)["nll"] > best


def test_overconfident_gaussian_predictions_are_recovered():
    rng = np.random.default_rng(0)
    n = 4000
    mean = rng.normal(size=n)
    predicted_std = rng.uniform(0.05, 0.5, n)
    y = mean + rng.normal(size=n) * 2.0 * predicted_std  # the truth is twice as spread
    before = coverage(y, mean, predicted_std)
    assert before["within_1sigma"] < 0.45
    s = fit_variance_scale(y, mean, predicted_std)
    assert s == pytest.approx(2.0, rel=0.1)
    after = coverage(y, mean, s * predicted_std)
    assert after["within_1sigma"] == pytest.approx(0.683, abs=0.03)
    assert after["within_2sigma"] == pytest.approx(0.954, abs=0.02)
    assert after["mean_abs_z"] == pytest.approx(math.sqrt(2 / math.pi), abs=0.03)
    assert after["nll"] < before["nll"]


def test_rescale_members_keeps_the_mean_and_scales_the_std():
    rng = np.random.default_rng(1)
    members = rng.normal(size=(7, 11))
    out = rescale_members(members, 2.5)
    assert out.shape == (7, 11)
    np.testing.assert_allclose(out.mean(axis=0), members.mean(axis=0))
    np.testing.assert_allclose(out.std(axis=0), 2.5 * members.std(axis=0))
    np.testing.assert_array_equal(rescale_members(members, 1.0), members)
    with pytest.raises(ValueError, match="n_members, n"):
        rescale_members(np.zeros(3), 2.0)


@pytest.mark.parametrize("call", [coverage, fit_variance_scale])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError, match="same length"):
        call([1.0, 2.0], [1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        call([1.0, float("nan"), 0.0], [0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="non-negative"):
        call([1.0, 2.0, 0.0], [0.0] * 3, [1.0, -1.0, 1.0])


def test_fit_variance_scale_rejects_bad_bounds():
    with pytest.raises(ValueError, match="floor"):
        fit_variance_scale([0.0] * 3, [0.0] * 3, [1.0] * 3, floor=0.0)
    with pytest.raises(ValueError, match="floor"):
        fit_variance_scale([0.0] * 3, [0.0] * 3, [1.0] * 3, floor=2.0, ceil=1.0)
