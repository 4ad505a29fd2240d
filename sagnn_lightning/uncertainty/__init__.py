"""Uncertainty of ensemble predictions: recalibration of the members' spread on held-out rows, and the metrics
that say whether an error bar can be trusted. Plain numpy (and ``crepes`` for the conformal quantile); no torch."""

from sagnn_lightning.uncertainty.calibration import (
    Calibration,
    conformal_quantile,
    fit_calibration,
    fit_scale_and_floor,
    fit_variance_scale,
)
from sagnn_lightning.uncertainty.metrics import (
    binned_error_calibration,
    coverage,
    coverage_curve,
    gaussian_nll,
    miscalibration_area,
    uncertainty_metrics,
)

__all__ = [
    "Calibration",
    "binned_error_calibration",
    "conformal_quantile",
    "coverage",
    "coverage_curve",
    "fit_calibration",
    "fit_scale_and_floor",
    "fit_variance_scale",
    "gaussian_nll",
    "miscalibration_area",
    "uncertainty_metrics",
]
