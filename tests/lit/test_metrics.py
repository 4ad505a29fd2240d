"""Epoch metrics: masked regression metrics against numpy, classification with missing labels against
sklearn-free references, and a training step that reads nothing back from the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sagnn_lightning.lit.metrics import MaskedRegressionMetric, labels_with_missing, make_metrics


def _reference(pred: np.ndarray, y: np.ndarray, kind: str) -> float:
    keep = np.isfinite(y)
    p, t = pred[keep], y[keep]
    if kind == "mae":
        return float(np.mean(np.abs(p - t)))
    if kind == "rmse":
        return float(np.sqrt(np.mean((p - t) ** 2)))
    return float(1.0 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))


@pytest.mark.parametrize("kind", ["mae", "rmse", "r2"])
def test_masked_regression_matches_numpy_over_batches(kind):
    gen = np.random.default_rng(1)
    pred, y = gen.normal(size=(50, 3)), gen.normal(size=(50, 3)) * 2 + 1
    y[gen.random((50, 3)) < 0.3] = np.nan  # missing labels, independently per target
    metrics = [MaskedRegressionMetric(kind, 3, target=t) for t in range(3)]
    mean_metric = MaskedRegressionMetric(kind, 3)
    for start in (0, 7, 31):  # uneven batches
        stop = {0: 7, 7: 31, 31: 50}[start]
        p, t = torch.tensor(pred[start:stop], dtype=torch.float32), torch.tensor(y[start:stop], dtype=torch.float32)
        for m in (*metrics, mean_metric):
            m.update(p, t)
    y32, p32 = y.astype(np.float32).astype(float), pred.astype(np.float32).astype(float)
    expected = [_reference(p32[:, t], y32[:, t], kind) for t in range(3)]
    for t, m in enumerate(metrics):
        assert float(m.compute()) == pytest.approx(expected[t], rel=1e-5)
    assert float(mean_metric.compute()) == pytest.approx(np.mean(expected), rel=1e-5)


def test_classification_metrics_ignore_missing_labels():
    gen = np.random.default_rng(2)
    prob = gen.random((40, 2))
    y = (gen.random((40, 2)) < 0.5).astype(float)
    y[::5, 1] = np.nan
    metrics = make_metrics("classification", ["a", "b"])
    assert set(metrics) == {"auroc", "accuracy", "auroc_a", "auroc_b", "accuracy_a", "accuracy_b"}
    p, t = torch.tensor(prob, dtype=torch.float32), labels_with_missing(torch.tensor(y, dtype=torch.float32))
    for m in metrics.values():
        m.update(p, t)
    for col, key in enumerate("ab"):
        keep = np.isfinite(y[:, col])
        acc = np.mean((prob[keep, col] >= 0.5) == (y[keep, col] == 1))
        assert float(metrics[f"accuracy_{key}"].compute()) == pytest.approx(acc, rel=1e-6)
        pos, neg = prob[keep, col][y[keep, col] == 1], prob[keep, col][y[keep, col] == 0]
        auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])  # Mann-Whitney
        assert float(metrics[f"auroc_{key}"].compute()) == pytest.approx(auc, rel=1e-5)
    assert float(metrics["accuracy"].compute()) == pytest.approx(
        np.mean([float(metrics[f"accuracy_{k}"].compute()) for k in "ab"]), rel=1e-6
    )


class _HostReads(TorchDispatchMode):
    """Records the ops that copy a device value to the host (``.item()``, ``bool(t)``, boolean indexing)."""

    SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if any(name == s or name.startswith(s + ".") for s in self.SYNCING):
            self.seen.append(name)
        elif name in ("aten.index", "aten.index_put", "aten.index_put_"):  # boolean masks count their True values
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.seen.append(f"{name} (boolean mask)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_loss_and_metric_updates_read_nothing_back(task_type):
    from sagnn_lightning.lit.module import SAGNNModule
    from sagnn_lightning.models import SAGNN

    module = SAGNNModule(
        SAGNN(
            num_targets=2,
            hidden_dim=8,
            dense_hidden=16,
            conv_hidden=(16,),
            heads=2,
            num_blocks=1,
            num_gaussians=10,
            readout_hidden=(8,),
        ),
        task_type=task_type,
    )
    raw = torch.randn(6, 2)
    y = torch.tensor([[0.0, 1.0], [1.0, float("nan")], [1.0, 0.0], [0.0, 0.0], [float("nan"), 1.0], [1.0, 1.0]])
    pred = raw
    with _HostReads() as mode:
        module._loss(raw, y)
        target = labels_with_missing(y) if task_type == "classification" else y
        if task_type == "regression":  # ours; torchmetrics' classification metrics check their inputs on the host
            for metric in module.train_metrics.values():
                metric.update(pred, target)
    assert mode.seen == []
