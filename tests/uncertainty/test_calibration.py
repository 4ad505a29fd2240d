"""Recalibration: variance scaling recovers a known scale; the conformal multiplier is the textbook order
statistic and covers at least its level on exchangeable data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sagnn_lightning.uncertainty import (
    Calibration,
    conformal_quantile,
    fit_calibration,
    fit_scale_and_floor,
    fit_variance_scale,
)


@pytest.mark.parametrize("true_scale", [0.3, 1.0, 3.0])
def test_variance_scaling_recovers_a_known_scale(true_scale):
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.2, 2.0, 20_000)
    errors = rng.normal(0.0, true_scale * sigma)
    assert fit_variance_scale(errors, sigma) == pytest.approx(true_scale, rel=0.02)


# (n + 1)·level is never an integer here: there crepes rounds (1 − level)·(n + 1) in floating point and may take
# the next order statistic up (a wider, still valid interval)
@pytest.mark.parametrize("n, level", [(20, 0.9), (50, 0.6827), (200, 0.95), (1000, 0.5)])
def test_conformal_quantile_is_the_order_statistic(n, level):
    rng = np.random.default_rng(n)
    sigma = rng.uniform(0.5, 1.5, n)
    errors = rng.standard_t(3, n) * sigma
    scores = np.sort(np.abs(errors) / sigma)
    rank = math.ceil((n + 1) * level)  # independent reference: the k-th smallest normalised score
    assert conformal_quantile(errors, sigma, level) == pytest.approx(scores[rank - 1])


def test_too_few_rows_for_a_level_give_an_infinite_interval():
    assert math.isinf(conformal_quantile([0.1, -0.2, 0.3], [1.0, 1.0, 1.0], 0.95))


@pytest.mark.parametrize("level", [0.6827, 0.95])
def test_conformal_covers_at_least_its_level_on_exchangeable_data(level):
    """Heavy-tailed, heteroscedastic errors (where Gaussian scaling is off): over 300 calibration draws of 100
    rows, the mean coverage of fresh rows is >= the level (the guarantee is on average over draws)."""
    rng = np.random.default_rng(7)
    covered = []
    for _ in range(300):
        sigma = rng.uniform(0.2, 3.0, 1100)
        errors = rng.standard_t(2.5, 1100) * sigma * 0.7
        q = conformal_quantile(errors[:100], sigma[:100], level)
        covered.append(np.mean(np.abs(errors[100:]) <= q * sigma[100:]))
    assert np.mean(covered) >= level - 0.005  # Monte-Carlo error of the mean over 300 draws is ~0.003


def test_calibration_round_trips_and_applies():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.5, 1.0, 500)
    fitted = fit_calibration(rng.normal(0, 2 * sigma), sigma)
    again = Calibration.from_dict(fitted.to_dict())
    assert again == fitted and again.n == 500
    np.testing.assert_allclose(again.std([1.0, 2.0]), [fitted.scale, 2 * fitted.scale])
    assert set(again.half_widths([1.0])) == {"68", "95"} and again.conformal["95"] > again.conformal["68"]


def test_zero_spread_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="identical members"):
        fit_calibration([0.1, 0.2, 0.3], [0.0, 0.1, 0.1])


@pytest.mark.parametrize(("true_scale", "true_floor"), [(1.5, 0.4), (0.7, 0.05), (2.0, 1.0)])
def test_scaling_with_a_floor_recovers_a_known_scale_and_floor(true_scale, true_floor):
    """Errors drawn with variance s²σ² + f², many rows with a tiny spread (members that agree): the NLL fit finds
    both, where scaling alone is dragged far off by the tiny-spread rows."""
    rng = np.random.default_rng(5)
    sigma = np.where(rng.random(20_000) < 0.4, rng.uniform(1e-4, 1e-3, 20_000), rng.uniform(0.2, 2.0, 20_000))
    errors = rng.normal(0.0, np.sqrt((true_scale * sigma) ** 2 + true_floor**2))
    scale, floor = fit_scale_and_floor(errors, sigma)
    assert scale == pytest.approx(true_scale, rel=0.05) and floor == pytest.approx(true_floor, rel=0.05)
    assert fit_variance_scale(errors, sigma) > 10 * true_scale  # what one factor does with those rows


def test_the_floor_vanishes_when_the_spread_explains_the_errors():
    rng = np.random.default_rng(6)
    sigma = rng.uniform(0.5, 2.0, 20_000)
    scale, floor = fit_scale_and_floor(rng.normal(0.0, 1.3 * sigma), sigma)
    assert scale == pytest.approx(1.3, rel=0.02) and floor < 0.1


def test_a_floored_calibration_applies_round_trips_and_old_manifests_load_without_a_floor():
    rng = np.random.default_rng(8)
    sigma = np.concatenate([np.full(300, 1e-4), rng.uniform(0.5, 1.0, 700)])
    errors = rng.normal(0.0, np.sqrt(sigma**2 + 0.3**2))
    fitted = fit_calibration(errors, sigma, floor=True)
    assert fitted.floor > 0.2
    np.testing.assert_allclose(fitted.std([0.0, 1.0]), [fitted.floor, math.hypot(fitted.scale, fitted.floor)])
    difficulty = np.sqrt(sigma**2 + (fitted.floor / fitted.scale) ** 2)  # the conformal scores' denominator
    assert fitted.conformal["95"] == pytest.approx(conformal_quantile(errors, difficulty, 0.95))
    assert Calibration.from_dict(fitted.to_dict()) == fitted
    old = {"scale": 2.0, "conformal": {"95": 3.0}, "n": 10}  # a manifest written before floors existed
    loaded = Calibration.from_dict(old)
    assert loaded.floor == 0.0
    np.testing.assert_allclose(loaded.std([1.0]), [2.0])
    np.testing.assert_allclose(loaded.half_widths([1.0])["95"], [3.0])
