"""A per-epoch history CSV that survives resumes (:class:`EpochHistory`).

One row per validated epoch of ``fit``, in ``<run dir>/history.csv`` by default::

    epoch,global_step,val_mae,val_auroc,val_loss,lr,train_seconds,sitting,finished_utc
    1,52,0.4127,,0.5513,0.0005,3.112,1,2026-12-01T08:00:03Z

From a recipe's command line: ``--trainer.callbacks+=sagnn_lightning.lit.EpochHistory`` (optionally
``--trainer.callbacks.path=<file>``).

Why not Lightning's ``CSVLogger``: it takes the logger slot (the recipes log to W&B), writes one row per logging
step mixing training and validation, deletes its ``metrics.csv`` when a run is resumed in the same folder, and
has no training time summed over the sittings of a resumed run.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn

__all__ = ["EpochHistory"]

FILE_NAME = "history.csv"


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


class EpochHistory(Callback):
    """Writes a CSV with one row per validated epoch of ``fit`` (rank 0 only; atomically, the whole file after
    every validation):

    ``epoch`` (1-based), ``global_step``, ``val_mae``, ``val_auroc`` (classification), ``val_loss`` (the module's
    ``val/mae``, ``val/auroc``, ``val/loss``; empty when not logged), ``lr`` (first parameter group),
    ``train_seconds`` (wall clock of ``fit``'s training and validation, summed over the sittings of a resumed
    run), ``sitting`` (1 for the first ``fit``, +1 per resume), ``finished_utc``.

    Resumes: the rows and the time are saved in the checkpoints, so a run resumed from a checkpoint continues
    them from exactly that checkpoint's epoch (later rows of a run that was killed are dropped). A checkpoint
    written without this callback keeps the rows of the existing file up to its epoch.

    Args:
        path: the CSV file (default ``<trainer.default_root_dir>/history.csv``: the run dir under the CLI).

    Attributes:
        rows: the rows written so far (dicts by column).
        sittings: ``fit`` calls so far, including those of the checkpoint resumed from.
    """

    columns: tuple[str, ...] = (
        "epoch",
        "global_step",
        "val_mae",
        "val_auroc",
        "val_loss",
        "lr",
        "train_seconds",
        "sitting",
        "finished_utc",
    )

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []
        self.sittings = 0
        self._offset = 0.0
        self._start: float | None = None
        self._restored = False

    @property
    def train_seconds(self) -> float:
        """Training wall clock summed over the sittings, up to now."""
        return self._offset + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def file(self, trainer: pl.Trainer) -> Path:
        """The CSV this callback writes for ``trainer``."""
        return self.path if self.path is not None else Path(trainer.default_root_dir) / FILE_NAME

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = trainer.global_step > 0 or trainer.current_epoch > 0
        if resumed and not self._restored:  # a checkpoint without this callback's state: keep the file's rows
            self._rows_from_file(self.file(trainer), done_epochs=trainer.current_epoch)
        self.sittings += 1
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._offset, self._start = self.train_seconds, None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or trainer.global_rank != 0:
            return
        metrics = trainer.callback_metrics
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "global_step": trainer.global_step,
                "val_mae": _float(metrics.get("val/mae")),
                "val_auroc": _float(metrics.get("val/auroc")),
                "val_loss": _float(metrics.get("val/loss")),
                "lr": lrs[0] if lrs else None,
                "train_seconds": round(self.train_seconds, 3),
                "sitting": self.sittings,
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        self._write(self.file(trainer))

    def _write(self, path: Path) -> None:
        from sagnn_lightning.files import atomic_write

        lines = [",".join(self.columns)] + [
            ",".join("" if row.get(c) in (None, "") else str(row[c]) for c in self.columns) for row in self.rows
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def _rows_from_file(self, path: Path, done_epochs: int) -> None:
        """The rows of ``path`` for the ``done_epochs`` completed epochs, and their time and sittings."""
        if not path.is_file():
            return
        with path.open(newline="") as fh:
            rows = [row for row in csv.DictReader(fh) if row.get("epoch") and int(row["epoch"]) <= done_epochs]
        self.rows = [{c: row.get(c) for c in self.columns} for row in rows]
        if rows:
            self._offset = float(rows[-1].get("train_seconds") or 0.0)
            self.sittings = int(rows[-1].get("sitting") or 0)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "train_seconds": self.train_seconds, "sittings": self.sittings}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self._offset = float(state_dict.get("train_seconds", 0.0))
        self.sittings = int(state_dict.get("sittings", 0))
        self._restored = True
