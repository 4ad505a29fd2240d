"""The metrics against a hand computation, scipy's own values, and their limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sagnn_lightning.uncertainty import binned_error_calibration, miscalibration_area, uncertainty_metrics

Y, MU, SIGMA = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0], [1.0, 1.0, 2.0, 1.0]


def test_a_hand_example():
    m = uncertainty_metrics(Y, MU, SIGMA)
    # errors -0.5, 0, 1, -1; z = -0.5, 0, 0.5, -1
    assert m["mae"] == pytest.approx(0.625)
    assert m["rmse"] == pytest.approx(0.75)
    assert m["mean_z2"] == pytest.approx(0.375)
    assert m["nll"] == pytest.approx(0.5 * math.log(2 * math.pi) + math.log(2) / 4 + 0.375 / 2)
    assert m["coverage_68"] == 1.0 and m["coverage_95"] == 1.0
    errors = np.abs(np.subtract(Y, MU))
    assert m["spearman"] == pytest.approx(stats.spearmanr(errors, SIGMA).statistic)


def test_given_interval_half_widths_replace_the_gaussian_ones():
    m = uncertainty_metrics(Y, MU, SIGMA, half_widths={"68": [0.4, 0.4, 0.4, 0.4], "95": [1.0, 1.0, 1.0, 1.0]})
    assert m["coverage_68"] == 0.25 and m["coverage_95"] == 1.0


def test_miscalibration_area_limits():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, 50_000)
    errors = rng.normal(0, sigma)
    assert miscalibration_area(errors, 0 * errors, sigma) < 0.01  # calibrated
    assert miscalibration_area(errors, 0 * errors, 1e6 * sigma) == pytest.approx(0.5, abs=0.01)  # far too wide
    assert miscalibration_area(errors, 0 * errors, 1e-6 * sigma) == pytest.approx(0.5, abs=0.01)  # far too narrow


def test_binned_rmse_follows_rmv_when_calibrated():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.1, 3.0, 40_000)
    errors = rng.normal(0, sigma)
    curve = binned_error_calibration(errors, 0 * errors, sigma, bins=8)
    assert curve["count"].sum() == 40_000 and np.all(np.diff(curve["rmv"]) > 0)
    np.testing.assert_allclose(curve["rmse"], curve["rmv"], rtol=0.05)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="same non-zero length"):
        uncertainty_metrics([1.0], [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        uncertainty_metrics([1.0, 2.0], [1.0, 2.0], [0.0, 1.0])


def test_an_infinite_interval_covers_everything():
    m = uncertainty_metrics(Y, MU, SIGMA, half_widths={"95": [math.inf] * 4})
    assert m["coverage_95"] == 1.0
