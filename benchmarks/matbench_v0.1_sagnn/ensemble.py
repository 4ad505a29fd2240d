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
    """The fold's record from its inner-fold members: the mean of their test predictions (probabilities for
    classification) and parameters summing up the members (``truth``: the fold's test targets, used for the
    members' reported MAE only, never for a choice)."""
    stacked = np.stack([np.asarray(r["predictions"], dtype=float) for r in results])
    mean = stacked.mean(axis=0)
    members = [dict(r["params"]) for r in results]
    params: dict[str, Any] = {
        "val_folds": len(results),
        "ensemble": "mean of the inner-fold members' test predictions",
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
