"""Ensembles: K trained members in one folder with a manifest, predicting a mean and a calibrated error bar.

An ensemble folder holds ``ensemble.json`` (:data:`MANIFEST`) and one run folder per member. The manifest lists
the members (their best checkpoints, seeds, inner folds), how they were trained (the command) and, once fit on
held-out rows, the calibration (:class:`~sagnn_lightning.uncertainty.Calibration`). Written by
``python -m sagnn_lightning ensemble fit`` (:mod:`sagnn_lightning.lit.ensemble_fit`); read by :func:`load_ensemble`,
``predict --ckpt <folder>`` and :func:`sagnn_lightning.pretrained.load`.

Regression: the prediction is the members' mean; ``std_raw`` is their spread (sample standard deviation, ``ddof=1``;
0 when the members agree), ``std`` the calibrated one (``scale · std_raw``, or ``std_raw`` before calibration) and
``lower_95``/``upper_95`` the conformal 95 % interval (with a calibration). Classification: the mean probability and
its spread ``probability_std``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from sagnn_lightning.errors import SAGNNError, UsageError, param
from sagnn_lightning.files import atomic_write
from sagnn_lightning.lit.inference import predict_item_outputs
from sagnn_lightning.lit.loading import load_module
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.uncertainty import Calibration

#: the manifest's file name inside an ensemble folder
MANIFEST = "ensemble.json"


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ensemble folder (it holds :data:`MANIFEST`)."""
    return (Path(path).expanduser() / MANIFEST).is_file()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the ensemble in ``folder``."""
    path = Path(folder).expanduser() / MANIFEST
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise SAGNNError(f"{path} is not a readable ensemble manifest ({err}); rerun `ensemble fit` on it") from err


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as ``folder/ensemble.json``, atomically."""
    path = Path(folder).expanduser() / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    return path


def member_spread(stacked: torch.Tensor) -> torch.Tensor:
    """The members' standard deviation over dim 0 (``ddof=1``); zeros for one member."""
    if stacked.shape[0] < 2:
        return torch.zeros_like(stacked[0])
    return stacked.std(dim=0, unbiased=True)


class Ensemble(nn.Module):
    """K trained :class:`~sagnn_lightning.lit.SAGNNModule` members of the same task and graph settings.

    ``predict_step`` has the members' interface plus the error bars (so ``predict`` and the inference stream
    treat it as one model); :meth:`predict` predicts structures in memory.

    Args:
        members: the trained modules (eval mode), same targets, task type and graph settings.
        calibration: fit on held-out rows (``None``: raw spread only).
        manifest: what the folder's manifest says (kept for the cards and the record).
    """

    def __init__(
        self,
        members: Sequence[SAGNNModule],
        calibration: Calibration | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise UsageError("an ensemble needs at least one member")
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            if list(member.target_names) != list(first.target_names) or member.task_type != first.task_type:
                raise SAGNNError(
                    f"ensemble member {k} predicts {member.target_names} ({member.task_type}), member 0 "
                    f"{first.target_names} ({first.task_type}): members must share their task"
                )
            if member.graph_settings != first.graph_settings:
                raise SAGNNError(
                    f"ensemble member {k} was trained on graphs {member.graph_settings}, member 0 on "
                    f"{first.graph_settings}: members must share their graph settings"
                )
        self.members = nn.ModuleList(members)
        self.calibration = calibration
        self.manifest = dict(manifest or {})
        self.target_names = list(first.target_names)
        self.task_type = first.task_type
        self.graph_settings = first.graph_settings
        self.model = first.model  # what the inference stream reads (composition model? embedding size)
        self.eval()  # an ensemble only predicts; its members were trained apart

    def __len__(self) -> int:
        return len(self.members)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """The members' ``predict_step`` outputs combined: ``sample_id``, ``prediction`` (mean; for
        classification the label of the mean probability), ``members [K, B, T]`` and, for regression, ``std_raw``,
        ``std`` and with a calibration ``lower_95``, ``upper_95``; for classification ``probability`` (mean) and
        ``probability_std``."""
        outs = [cast(SAGNNModule, member).predict_step(batch, batch_idx, dataloader_idx) for member in self.members]
        key = "probability" if self.task_type == "classification" else "prediction"
        stacked = torch.stack([out[key].double() for out in outs])  # [K, B, T]
        mean, spread = stacked.mean(dim=0), member_spread(stacked)
        result: dict[str, Any] = {"sample_id": outs[0]["sample_id"], "members": stacked}
        if self.task_type == "classification":
            return result | {"prediction": (mean >= 0.5).long(), "probability": mean, "probability_std": spread}
        result |= {"prediction": mean, "std_raw": spread, "std": spread}
        if self.calibration is not None:
            raw = spread.cpu().numpy()
            half = torch.as_tensor(self.calibration.half_widths(raw)["95"], dtype=mean.dtype)
            result |= {
                "std": torch.as_tensor(self.calibration.std(raw), dtype=mean.dtype).to(mean.device),
                "lower_95": mean - half.to(mean.device),
                "upper_95": mean + half.to(mean.device),
            }
        return result

    def predict(
        self,
        items: Iterable[Any],
        batch_size: int = 64,
        on_error: Literal["raise", "nan"] = "raise",
    ) -> EnsemblePredictions:
        """Predict crystals (``Structure``, CIF text or ``Structure.as_dict()``; formulas for composition members)
        in memory: the mean, its error bars and each member's prediction (:class:`EnsemblePredictions`).
        ``on_error``: as :meth:`SAGNNModule.predict`."""
        columns = predict_item_outputs(self, items, batch_size, on_error)
        return EnsemblePredictions(**{k: v for k, v in columns.items() if k in EnsemblePredictions.FIELDS})


@dataclass
class EnsemblePredictions:
    """An ensemble's predictions of ``n`` items (NaN rows for items that failed with ``on_error="nan"``):
    ``prediction [n]`` (``[n, T]`` for several targets), ``std``, ``std_raw``, ``lower_95``, ``upper_95``
    (``None`` without a calibration), ``members [K, n(, T)]``; for classification ``probability`` and
    ``probability_std`` instead of the ``std`` fields."""

    FIELDS = ("prediction", "std", "std_raw", "lower_95", "upper_95", "probability", "probability_std", "members")

    prediction: np.ndarray
    members: np.ndarray
    std: np.ndarray | None = None
    std_raw: np.ndarray | None = None
    lower_95: np.ndarray | None = None
    upper_95: np.ndarray | None = None
    probability: np.ndarray | None = None
    probability_std: np.ndarray | None = None


def load_ensemble(folder: str | os.PathLike, device: str = "cpu", name: str = "ckpt") -> Ensemble:
    """The ensemble in ``folder`` (written by ``ensemble fit``), its members in eval mode on ``device``.
    ``name``: the parameter that gave ``folder`` (named in errors)."""
    root = Path(folder).expanduser()
    if not is_ensemble(root):
        raise UsageError(
            f"{param(name)} {root} is not an ensemble folder (no {MANIFEST}); train one with `ensemble fit`"
        )
    manifest = read_manifest(root)
    members = manifest.get("members", [])
    unfinished = [m["name"] for m in members if not m.get("checkpoint")]
    if unfinished or not members:
        raise UsageError(
            f"{param(name)} {root}: members {unfinished or '(none)'} are not trained yet; run the manifest's "
            f"command again to finish them: {manifest.get('command', 'python -m sagnn_lightning ensemble fit ...')}"
        )
    modules = [load_module(root / m["checkpoint"], device, name)[0] for m in members]
    calibration = Calibration.from_dict(manifest["calibration"]) if manifest.get("calibration") else None
    return Ensemble(modules, calibration, manifest)


__all__ = [
    "MANIFEST",
    "Ensemble",
    "EnsemblePredictions",
    "is_ensemble",
    "load_ensemble",
    "member_spread",
    "read_manifest",
    "write_manifest",
]
