"""The runner's inner-fold ensemble (``--val-folds K``): a fold records the mean of its K members' test predictions
(each member selected on one inner fold of the fold's training rows), once all K are done."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class InnerFolds:
    """Collects the K inner-fold members of each fold as they finish (in any order) until all are done."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._done: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}

    def add(self, task: str, fold: int, member: int, result: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Record ``member``'s result; returns the K results in member order once all K are in, else ``None``."""
        done = self._done.setdefault((task, fold), {})
        done[member] = result
        return [done[j] for j in range(self.k)] if len(done) == self.k else None


def ensemble_of_members(
    results: Sequence[dict[str, Any]], truth: np.ndarray, task_type: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The fold's record from its members (inner-fold members, or runs of several seeds): the mean of their test
    predictions (probabilities for classification) and parameters summing up the members (``truth``: the fold's
    test targets, used for the members' reported MAE only, never for a choice). The caller adds what kind of
    ensemble it is."""
    stacked = np.stack([np.asarray(r["predictions"], dtype=float) for r in results])
    mean = stacked.mean(axis=0)
    members = [dict(r["params"]) for r in results]
    params: dict[str, Any] = {
        "epochs_run": [m["epochs_run"] for m in members],
        "max_epochs": members[0]["max_epochs"],
        "best_epoch": [m["best_epoch"] for m in members],
        "train_seconds": round(sum(m["train_seconds"] for m in members), 2),
        "sittings": max(m["sittings"] for m in members),
        "members": members,
    }
    if task_type == "regression":
        params["member_test_mae"] = [float(np.mean(np.abs(p - truth))) for p in stacked]
    return mean, params


def member_spread(stacked: np.ndarray) -> np.ndarray:
    """The members' spread per row, ``[K, n]`` → ``[n]``: :func:`sagnn_lightning.lit.ensemble.member_spread`, the
    one that ``predict --ckpt <ensemble>`` uses."""
    import torch

    from sagnn_lightning.lit.ensemble import member_spread as spread

    return spread(torch.from_numpy(np.asarray(stacked, dtype=np.float64))).numpy()


def uncertainty_rows(
    results: Sequence[dict[str, Any]], ids: Sequence[str], truth: np.ndarray, floor: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """A regression fold's ensemble with error bars: rows ``id, target, prediction, std_raw[, std, lower_95,
    upper_95], member_<j>`` for the test set and, when the members predicted held-out calibration rows
    (``--data.init_args.calibration_fraction``), for those rows too, plus the calibration fit on them (variance
    scaling and conformal multipliers, :func:`sagnn_lightning.uncertainty.fit_calibration`) with the calibration
    metrics of the test set before and after (``floor``: scaling with a floor). Without calibration rows: ``std`` is
    left out and the third value is ``None``."""
    from sagnn_lightning.uncertainty import fit_calibration, uncertainty_metrics

    test = np.stack([np.asarray(r["predictions"], dtype=float) for r in results])
    held: list[dict[str, Any]] = [r["calibration"] for r in results if r.get("calibration") is not None]
    calibration = None
    cal_rows: list[dict[str, Any]] = []
    if len(held) == len(results) and all(h["ids"] == held[0]["ids"] for h in held):
        cal = np.stack([np.asarray(h["predictions"], dtype=float) for h in held])
        cal_truth = np.asarray(held[0]["targets"], dtype=float)
        calibration = fit_calibration(cal_truth - cal.mean(axis=0), member_spread(cal), floor=floor)
        cal_rows = _rows(held[0]["ids"], cal_truth, cal, calibration)
    rows = _rows(list(ids), truth, test, calibration)
    if calibration is None:
        return rows, cal_rows, None
    mean, raw = test.mean(axis=0), member_spread(test)
    summary = {
        "calibration": calibration.to_dict(),
        "test_before": uncertainty_metrics(truth, mean, raw),
        "test_after": uncertainty_metrics(truth, mean, calibration.std(raw), half_widths=calibration.half_widths(raw)),
    }
    return rows, cal_rows, summary


def _rows(ids: Sequence[str], truth: np.ndarray, stacked: np.ndarray, calibration: Any) -> list[dict[str, Any]]:
    mean, raw = stacked.mean(axis=0), member_spread(stacked)
    columns: dict[str, np.ndarray] = {"target": truth, "prediction": mean, "std_raw": raw}
    if calibration is not None:
        half = calibration.half_widths(raw)["95"]
        columns |= {"std": calibration.std(raw), "lower_95": mean - half, "upper_95": mean + half}
    columns |= {f"member_{j}": p for j, p in enumerate(stacked)}
    return [{"id": i, **{k: float(v[n]) for k, v in columns.items()}} for n, i in enumerate(ids)]
