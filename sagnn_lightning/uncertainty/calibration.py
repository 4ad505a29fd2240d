"""Recalibrating an ensemble's spread on held-out rows that no member trained on.

Two calibrations are fit on the same rows (errors ``e`` of the ensemble mean, raw spreads ``σ``):

- **variance scaling** (Levi et al. 2022; the simplest honest recalibration): ``σ' = s·σ`` with the ``s`` that
  minimises the Gaussian NLL, ``s² = mean(e² / σ²)`` (closed form); or, with ``floor=True``, **scaling with a
  floor** ``σ'² = s²·σ² + f²`` (both fit by NLL). The floor is for tasks where the members agree exactly on many
  rows that still have errors (expt_gap's metals, all predicted ≈ 0 eV): a factor alone then blows up to fit those
  rows and makes every other interval useless (fold 0 of expt_gap: ``s`` = 358, median σ' 29 eV);
- **normalised split conformal** (Papadopoulos et al. 2008; Angelopoulos & Bates 2023): the interval
  ``mu ± q·σ`` with ``q`` the ``⌈(n+1)·level⌉``-th smallest of the scores ``|e|/σ``, computed by ``crepes``'
  ``ConformalRegressor``. It covers a new exchangeable row with probability ≥ ``level`` whatever the
  distribution of the errors; variance scaling assumes Gaussian errors. With a floor, the difficulty is
  ``d = σ'/s = sqrt(σ² + (f/s)²)`` instead of ``σ`` (the same for ``f = 0``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
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


def fit_scale_and_floor(errors: Any, sigma: Any) -> tuple[float, float]:
    """The NLL-optimal ``(s, f)`` for ``σ'² = s²·σ² + f²`` (Gaussian NLL over both, from the variance-scaling fit;
    ``f`` goes to 0 where the spread alone explains the errors)."""
    from scipy.optimize import minimize

    errors, sigma = _checked(errors, sigma)
    e2, s2 = errors**2, sigma**2
    scale2 = float(np.mean(e2 / s2))

    def nll(log_params: np.ndarray) -> float:
        variance = np.exp(log_params[0]) * s2 + np.exp(log_params[1])
        return float(np.mean(np.log(variance) + e2 / variance))

    starts = [np.log([scale2, 1e-6 * float(np.mean(e2)) + 1e-300]), np.log([1.0, float(np.mean(e2))])]
    best = min(
        (minimize(nll, x0, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10}) for x0 in starts),
        key=lambda r: r.fun,
    )
    return float(np.sqrt(np.exp(best.x[0]))), float(np.sqrt(np.exp(best.x[1])))


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
    """A fitted calibration: ``scale`` (and ``floor``) for σ and ``conformal`` multipliers ``{level name: q}`` of the
    difficulty ``d = sqrt(σ² + (floor/scale)²)``, fit on ``n`` rows."""

    scale: float
    conformal: dict[str, float] = field(default_factory=dict)
    n: int = 0
    levels: dict[str, float] = field(default_factory=lambda: dict(LEVELS))
    floor: float = 0.0

    def difficulty(self, raw_std: Any) -> np.ndarray:
        """``d = sqrt(σ² + (floor/scale)²)`` (= σ without a floor): what σ' and the conformal intervals scale."""
        raw = np.asarray(raw_std, dtype=np.float64)
        return raw if self.floor == 0.0 else np.sqrt(raw**2 + (self.floor / self.scale) ** 2)

    def std(self, raw_std: Any) -> np.ndarray:
        """The recalibrated standard deviation ``sqrt(scale²·σ² + floor²)``."""
        return self.scale * self.difficulty(raw_std)

    def half_widths(self, raw_std: Any) -> dict[str, np.ndarray]:
        """The conformal interval half-widths ``q·d`` per level name."""
        difficulty = self.difficulty(raw_std)
        return {name: q * difficulty for name, q in self.conformal.items()}

    def to_dict(self) -> dict[str, Any]:
        method = "variance scaling with a floor (NLL)" if self.floor else "variance scaling (NLL)"
        return {
            "method": f"{method} + normalised split conformal (crepes)",
            "scale": self.scale,
            "floor": self.floor,
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
            floor=float(data.get("floor", 0.0)),
        )


def fit_calibration(
    errors: Any, sigma: Any, levels: dict[str, float] | None = None, floor: bool = False
) -> Calibration:
    """Variance scaling (with ``floor=True``: scaling with a floor) and conformal multipliers fit on held-out
    ``errors`` (target − ensemble mean) and raw ensemble spreads ``sigma``."""
    levels = dict(LEVELS if levels is None else levels)
    errors, sigma = _checked(errors, sigma)
    scale, floor_value = fit_scale_and_floor(errors, sigma) if floor else (fit_variance_scale(errors, sigma), 0.0)
    fitted = Calibration(scale=scale, n=int(errors.size), levels=levels, floor=floor_value)
    difficulty = fitted.difficulty(sigma)
    return replace(
        fitted, conformal={name: conformal_quantile(errors, difficulty, level) for name, level in levels.items()}
    )
