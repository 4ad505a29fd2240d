"""Per-target transforms and missing targets (multitask tables).

A target may be learned through a transform: ``"log"`` (natural log; for positive quantities spanning orders of
magnitude such as dielectric constants) or ``"none"``. The DataModule standardises the *transformed* training
values; :class:`~sagnn_lightning.lit.SAGNNModule` trains on them and maps its predictions back, so predictions,
metrics and plots stay in the target's own unit.

With several targets a row may lack some of them (NaN or an empty cell): it trains the targets it has (the loss and
the metrics are masked per target) and the DataModule reports how many rows lack each target. A row without any
target, an infinite value, or a value that its transform cannot take (``log`` of a value <= 0) is an invalid row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sagnn_lightning.errors import UsageError, param

TargetTransform = Literal["none", "log"]
TRANSFORMS: tuple[str, ...] = ("none", "log")


def check_transforms(transforms: Sequence[str] | None, names: Sequence[str]) -> list[str]:
    """One transform per target (``None`` → ``"none"`` for all), each one of :data:`TRANSFORMS`."""
    if transforms is None:
        return ["none"] * len(names)
    transforms = list(transforms)
    if len(transforms) != len(names):
        raise UsageError(
            f"{param('data.target_transforms')} has {len(transforms)} entries for the {len(names)} targets "
            f"{list(names)}; give one per target, e.g. {['none'] * len(names)}"
        )
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise UsageError(f"{param('data.target_transforms')}: unknown {unknown}; choose from {list(TRANSFORMS)}")
    return transforms


def transform_array(values: np.ndarray, transforms: Sequence[str]) -> np.ndarray:
    """``[n, T]`` values → their transformed values (NaN stays NaN)."""
    out = np.array(values, dtype=np.float64, copy=True)
    for k, name in enumerate(transforms):
        if name == "log":
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, k] = np.log(out[:, k])
    return out


def invalid_for_transform(values: np.ndarray, transforms: Sequence[str]) -> np.ndarray:
    """``[n, T]`` bool: finite values that their target's transform cannot take (``log`` of <= 0)."""
    bad = np.zeros(values.shape, dtype=bool)
    for k, name in enumerate(transforms):
        if name == "log":
            bad[:, k] = np.isfinite(values[:, k]) & (values[:, k] <= 0)
    return bad


def missing_counts(values: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """How many rows lack each target (NaN), for the targets that some rows lack."""
    missing = np.isnan(values).sum(axis=0)
    return {name: int(m) for name, m in zip(names, missing) if m}


class TargetTransformer:
    """The module's side: ``forward`` (targets → transformed, for the loss) and ``inverse`` (back to the target's
    unit, for predictions and metrics), batched over ``[B, T]`` without indexing per column."""

    def __init__(self, transforms: Sequence[str]) -> None:
        self.transforms = list(transforms)
        self.any = any(t != "none" for t in self.transforms)
        self._log = torch.tensor([t == "log" for t in self.transforms])

    def forward(self, y: Tensor) -> Tensor:
        """``[B, T]`` targets → transformed (missing entries must be filled before: ``log`` needs > 0)."""
        if not self.any:
            return y
        is_log = self._log.to(y.device)
        return torch.where(is_log, torch.log(torch.where(is_log, y, torch.ones_like(y))), y)

    def inverse(self, z: Tensor) -> Tensor:
        """``[B, T]`` transformed → the targets' units."""
        if not self.any:
            return z
        is_log = self._log.to(z.device)
        return torch.where(is_log, torch.exp(torch.where(is_log, z, torch.zeros_like(z))), z)


__all__ = [
    "TRANSFORMS",
    "TargetTransform",
    "TargetTransformer",
    "check_transforms",
    "invalid_for_transform",
    "missing_counts",
    "transform_array",
]
