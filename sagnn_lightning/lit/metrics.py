"""Epoch metrics of :class:`~sagnn_lightning.lit.module.SAGNNModule`, as torchmetrics ``Metric`` objects.

Targets are ``[B, T]`` with NaN where a label is missing (multitask data). Every metric here takes the
whole ``[B, T]`` batch and masks by arithmetic, never by boolean indexing, so an update reads nothing
back from the device. The module logs the ``Metric`` objects themselves; Lightning computes them at
epoch end, and torchmetrics reduces their states across DDP processes inside ``compute()``. Every
collective therefore runs in Lightning's own order, the same on every rank, whatever callbacks
(progress bar included) ask for metrics first.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MultilabelAccuracy, MultilabelAUROC

RegressionKind = Literal["mae", "rmse", "r2"]
REGRESSION_KINDS: tuple[RegressionKind, ...] = ("mae", "rmse", "r2")
CLASSIFICATION_KINDS: tuple[str, ...] = ("auroc", "accuracy")
#: label value the classification metrics ignore (a missing label)
MISSING_LABEL = -1


class MaskedRegressionMetric(Metric):
    """MAE, RMSE or R² over the labelled entries of ``[B, T]`` predictions, in float64.

    Args:
        kind: ``"mae"``, ``"rmse"`` or ``"r2"``.
        num_targets: ``T``.
        target: report target ``target`` only; ``None`` (default) reports the mean over targets.

    ``update(pred [B, T], y [B, T])``: entries with a non-finite ``y`` are left out. ``compute()`` is NaN for
    a target with no labelled entry (R²: fewer than two); the DataModules make every split big enough.
    """

    is_differentiable = False
    full_state_update = False
    # states registered by add_state (declared for type checkers)
    count: Tensor
    abs_err: Tensor
    sq_err: Tensor
    y_sum: Tensor
    y_sq_sum: Tensor

    def __init__(self, kind: RegressionKind, num_targets: int, target: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in REGRESSION_KINDS:
            raise ValueError(f"kind must be one of {REGRESSION_KINDS}, got {kind!r}")
        if target is not None and not 0 <= target < num_targets:
            raise ValueError(f"target {target} out of range for num_targets={num_targets}")
        self.kind, self.num_targets, self.target = kind, num_targets, target
        for name in ("count", "abs_err", "sq_err", "y_sum", "y_sq_sum"):
            self.add_state(name, default=torch.zeros(num_targets, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, y: Tensor) -> None:
        pred, y = pred.reshape(-1, self.num_targets).double(), y.reshape(-1, self.num_targets).double()
        labelled = torch.isfinite(y)
        y = torch.where(labelled, y, torch.zeros_like(y))
        diff = torch.where(labelled, pred - y, torch.zeros_like(pred))
        self.count += labelled.double().sum(0)
        self.abs_err += diff.abs().sum(0)
        self.sq_err += diff.square().sum(0)
        self.y_sum += y.sum(0)
        self.y_sq_sum += y.square().sum(0)

    def compute(self) -> Tensor:
        count = self.count
        if self.kind == "mae":
            per_target = self.abs_err / count
        elif self.kind == "rmse":
            per_target = (self.sq_err / count).sqrt()
        else:
            total = self.y_sq_sum - self.y_sum.square() / count
            per_target = torch.where(count >= 2, 1.0 - self.sq_err / total, torch.full_like(count, float("nan")))
        value = per_target.mean() if self.target is None else per_target[self.target]
        return value.float()


def labels_with_missing(y: Tensor) -> Tensor:
    """``[B, T]`` float targets (0/1, NaN = missing) → long labels with :data:`MISSING_LABEL` for missing."""
    labelled = torch.isfinite(y)
    return torch.where(labelled, y, torch.full_like(y, MISSING_LABEL)).long()


class TargetColumn(Metric):
    """Feeds column ``target`` of ``[B, T]`` inputs to a single-target metric (``update(pred, y)``)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, metric: Metric, target: int) -> None:
        super().__init__()
        self.metric, self.target = metric, target

    def update(self, pred: Tensor, y: Tensor) -> None:
        self.metric.update(pred[:, self.target], y[:, self.target])

    def compute(self) -> Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


def make_metrics(task_type: str, target_keys: list[str]) -> dict[str, Metric]:
    """``{key suffix: Metric}`` for one stage: ``mae``/``rmse``/``r2`` or ``auroc``/``accuracy`` (the mean over
    targets) and, with several targets, ``<metric>_<target key>`` for each target.

    Classification metrics take probabilities ``[B, T]`` and labels from :func:`labels_with_missing`.
    """
    num_targets = len(target_keys)
    metrics: dict[str, Metric] = {}
    if task_type == "classification":
        for kind in CLASSIFICATION_KINDS:
            if num_targets == 1:
                binary = BinaryAUROC if kind == "auroc" else BinaryAccuracy
                metrics[kind] = TargetColumn(binary(ignore_index=MISSING_LABEL, validate_args=False), 0)
                continue
            multi = MultilabelAUROC if kind == "auroc" else MultilabelAccuracy
            metrics[kind] = multi(
                num_labels=num_targets, average="macro", ignore_index=MISSING_LABEL, validate_args=False
            )
            for t, key in enumerate(target_keys):
                binary = BinaryAUROC if kind == "auroc" else BinaryAccuracy
                metrics[f"{kind}_{key}"] = TargetColumn(binary(ignore_index=MISSING_LABEL, validate_args=False), t)
        return metrics
    for kind in REGRESSION_KINDS:
        metrics[kind] = MaskedRegressionMetric(kind, num_targets)
        if num_targets > 1:
            for t, key in enumerate(target_keys):
                metrics[f"{kind}_{key}"] = MaskedRegressionMetric(kind, num_targets, target=t)
    return metrics
