"""Recalibrating an ensemble's spread on held-out rows that no member trained on.

Two calibrations are fit on the same rows (errors ``e`` of the ensemble mean, raw spreads ``σ``):

- **variance scaling** (Levi et al. 2022; the simplest honest recalibration): ``σ' = s·σ`` with the ``s`` that
  minimises the Gaussian NLL, ``s² = mean(e² / σ²)`` (closed form);
- **normalised split conformal** (Papadopoulos et al. 2008; Angelopoulos & Bates 2023): the interval
  ``mu ± q·σ`` with ``q`` the ``⌈(n+1)·level⌉``-th smallest of the scores ``|e|/σ``, computed by ``crepes``'
  ``ConformalRegressor``. It covers a new exchangeable row with probability ≥ ``level`` whatever the
  distribution of the errors; variance scaling assumes Gaussian errors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the interval levels fitted by default, named as in :func:`~sagnn_lightning.uncertainty.uncertainty_metrics`
LEVELS = {"68": 0.6827, "95": 0.95}


def _checked(errors: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray]:
    errors, sigma = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (errors, sigma))
    if errors.shape != sigma.shape or errors.size < 2:
        raise ValueError(f"errors and sigma need the same length >= 2, got {errors.size} and {sigma.size}")
    if not np.all(np.isfinite(errors) & np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ValueError(
            "calibration needs finite errors and spreads > 0; a spread of 0 means identical members "
            "(train them with different seeds or on different inner folds)"
        )
    return errors, sigma


def fit_variance_scale(errors: Any, sigma: Any) -> float:
    """The NLL-optimal factor ``s`` for ``σ' = s·σ``: ``sqrt(mean((e/σ)²))``."""
    errors, sigma = _checked(errors, sigma)
    return float(np.sqrt(np.mean((errors / sigma) ** 2)))


def conformal_quantile(errors: Any, sigma: Any, level: float) -> float:
    """The normalised split-conformal multiplier ``q`` of ``sigma`` for coverage ``level`` (``inf`` when there are
    too few rows for that level: fewer than ``1/(1 − level) − 1``)."""
    from crepes import ConformalRegressor

    errors, sigma = _checked(errors, sigma)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    regressor = ConformalRegressor().fit(residuals=np.abs(errors), sigmas=sigma)
    with warnings.catch_warnings():  # "too few calibration examples": the documented inf
        warnings.simplefilter("ignore", UserWarning)
        lower, upper = regressor.predict_int(y_hat=np.zeros(1), sigmas=np.ones(1), confidence=level)[0]
    return float(upper)


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: ``scale`` for σ and ``conformal`` multipliers ``{level name: q}``, fit on ``n`` rows."""

    scale: float
    conformal: dict[str, float] = field(default_factory=dict)
    n: int = 0
    levels: dict[str, float] = field(default_factory=lambda: dict(LEVELS))

    def std(self, raw_std: Any) -> np.ndarray:
        """The recalibrated standard deviation ``scale·σ``."""
        return self.scale * np.asarray(raw_std, dtype=np.float64)

    def half_widths(self, raw_std: Any) -> dict[str, np.ndarray]:
        """The conformal interval half-widths ``q·σ`` per level name."""
        raw = np.asarray(raw_std, dtype=np.float64)
        return {name: q * raw for name, q in self.conformal.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "variance scaling (NLL) + normalised split conformal (crepes)",
            "scale": self.scale,
            "conformal": {k: (v if np.isfinite(v) else None) for k, v in self.conformal.items()},  # JSON: no inf
            "levels": dict(self.levels),
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            scale=float(data["scale"]),
            conformal={k: float("inf") if v is None else float(v) for k, v in data.get("conformal", {}).items()},
            n=int(data.get("n", 0)),
            levels={k: float(v) for k, v in data.get("levels", LEVELS).items()},
        )


def fit_calibration(errors: Any, sigma: Any, levels: dict[str, float] | None = None) -> Calibration:
    """Variance scaling and conformal multipliers fit on held-out ``errors`` (target − ensemble mean) and raw
    ensemble spreads ``sigma``."""
    levels = dict(LEVELS if levels is None else levels)
    errors, sigma = _checked(errors, sigma)
    return Calibration(
        scale=fit_variance_scale(errors, sigma),
        conformal={name: conformal_quantile(errors, sigma, level) for name, level in levels.items()},
        n=int(errors.size),
        levels=levels,
    )
