"""Calibration metrics of predictions with error bars, as the literature reports them.

For targets ``y``, predicted means ``mu`` and standard deviations ``sigma`` (all ``[n]``), with errors
``e = y − mu`` and z-scores ``z = e / sigma``:

- MAE, RMSE;
- the Gaussian negative log-likelihood, ``mean(½ log(2π σ²) + e² / 2σ²)``;
- the mean squared z-score, ≈ 1 for calibrated σ (Pernot, APL Mach. Learn. 2024);
- the miscalibration area: the area between the observed fraction of errors inside the central Gaussian interval
  of each probability ``p`` and ``p`` itself (0 = calibrated; Tran et al. 2020, the uncertainty-toolbox's metric);
- Spearman's ρ between ``|e|`` and ``σ`` (does a larger σ mean a larger error?);
- the coverage of the 68 % and 95 % intervals (``±σ`` and ``±1.96σ`` unless conformal half-widths are given);
- the error-based calibration curve (Rasmussen et al., J. Cheminform. 2023): equal-count bins of σ, the root mean
  variance of each bin against its RMSE.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

#: the central Gaussian interval of 68.27 % and 95 % in σ
GAUSSIAN_HALF_WIDTH = {"68": 1.0, "95": float(stats.norm.ppf(0.975))}


def _arrays(y: Any, mu: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray]:
    y, mu, sigma = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (y, mu, sigma))
    if not (y.shape == mu.shape == sigma.shape) or y.size == 0:
        raise ValueError(f"y, mu and sigma need the same non-zero length, got {y.size}, {mu.size}, {sigma.size}")
    if not np.all(np.isfinite(y) & np.isfinite(mu) & np.isfinite(sigma)):
        raise ValueError("y, mu and sigma must be finite (drop the rows without a target first)")
    if np.any(sigma <= 0):
        raise ValueError(f"sigma must be > 0 everywhere; {int(np.sum(sigma <= 0))} of {sigma.size} are not")
    return y - mu, sigma


def gaussian_nll(y: Any, mu: Any, sigma: Any) -> float:
    """Mean Gaussian negative log-likelihood (nats) of ``y`` under ``N(mu, sigma²)``."""
    errors, sigma = _arrays(y, mu, sigma)
    return float(np.mean(0.5 * np.log(2 * math.pi * sigma**2) + errors**2 / (2 * sigma**2)))


def coverage(y: Any, mu: Any, half_width: Any) -> float:
    """Fraction of ``y`` inside ``[mu − half_width, mu + half_width]`` (an infinite half-width covers all)."""
    half = np.asarray(half_width, dtype=np.float64).reshape(-1)
    errors, _ = _arrays(y, mu, np.where(np.isinf(half), 1.0, half))
    return float(np.mean(np.abs(errors) <= half))


def coverage_curve(y: Any, mu: Any, sigma: Any, levels: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(expected, observed)``: for ``levels + 1`` probabilities ``p`` from 0 to 1, the fraction of errors inside
    the central Gaussian interval of probability ``p`` (the coverage plot's curve)."""
    errors, sigma = _arrays(y, mu, sigma)
    expected = np.linspace(0.0, 1.0, levels + 1)
    with np.errstate(over="ignore"):
        half = stats.norm.ppf(0.5 + expected / 2)  # p = 1 → ∞: every error is inside
    return expected, np.array([np.mean(np.abs(errors) <= h * sigma) for h in half])


def miscalibration_area(y: Any, mu: Any, sigma: Any, levels: int = 100) -> float:
    """Area between the observed and the expected fraction inside the central Gaussian intervals, over
    ``levels + 1`` probabilities from 0 to 1 (trapezoid rule): 0 for calibrated σ, at most 0.5."""
    expected, observed = coverage_curve(y, mu, sigma, levels)
    return float(np.trapezoid(np.abs(observed - expected), expected))


def binned_error_calibration(y: Any, mu: Any, sigma: Any, bins: int = 10) -> dict[str, np.ndarray]:
    """Error-based calibration (Rasmussen et al. 2023): the rows sorted by σ in ``bins`` equal-count bins; per bin
    the root mean variance ``rmv = sqrt(mean σ²)``, the ``rmse`` and the row ``count``. Calibrated σ lie on
    ``rmse = rmv``."""
    errors, sigma = _arrays(y, mu, sigma)
    order = np.argsort(sigma, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, sigma.size)) if g.size]
    return {
        "rmv": np.array([np.sqrt(np.mean(sigma[g] ** 2)) for g in groups]),
        "rmse": np.array([np.sqrt(np.mean(errors[g] ** 2)) for g in groups]),
        "count": np.array([g.size for g in groups]),
    }


def uncertainty_metrics(y: Any, mu: Any, sigma: Any, half_widths: dict[str, Any] | None = None) -> dict[str, float]:
    """Every metric of the module docstring as one flat dict: ``mae, rmse, nll, mean_z2, miscalibration_area,
    spearman, coverage_68, coverage_95``. ``half_widths``: ``{"68": [n], "95": [n]}`` interval half-widths (e.g.
    conformal) used for the coverage instead of the Gaussian ``±σ``, ``±1.96σ``."""
    errors, s = _arrays(y, mu, sigma)
    out = {
        "n": float(errors.size),
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "nll": gaussian_nll(y, mu, sigma),
        "mean_z2": float(np.mean((errors / s) ** 2)),
        "miscalibration_area": miscalibration_area(y, mu, sigma),
        "spearman": float(stats.spearmanr(np.abs(errors), s).statistic) if errors.size > 2 else float("nan"),
    }
    for level, width in GAUSSIAN_HALF_WIDTH.items():
        half = half_widths[level] if half_widths and level in half_widths else width * s
        out[f"coverage_{level}"] = coverage(y, mu, np.broadcast_to(np.asarray(half, dtype=np.float64), s.shape))
    return out
