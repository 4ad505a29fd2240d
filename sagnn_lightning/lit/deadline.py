"""A wall-clock deadline for training that stops mid-epoch and resumes exactly (:class:`Deadline`).

For a job with a fixed allocation (a batch system's time limit, a lent machine): when the deadline passes, the
state after the current training batch is written to ``last.ckpt`` and training ends with
:class:`DeadlineReached`; the same command with ``--ckpt_path last`` continues at the next batch, exactly as if
it had not stopped (the recipes' data loaders resume mid-epoch). From a recipe's command line::

    python recipes/matbench_jdft2d.py --trainer.callbacks+=sagnn_lightning.lit.Deadline \\
        --trainer.callbacks.max_time=00:07:50:00

or an absolute time (seconds since the epoch, as ``date +%s`` prints it)::

    --trainer.callbacks+=sagnn_lightning.lit.Deadline --trainer.callbacks.at=$(date -d '+7 hours 50 min' +%s)

The command then ends with ``error: deadline reached ...`` and exit status 3 (:attr:`DeadlineReached.exit_code`).

Why not Lightning's ``Timer`` (``--trainer.max_time``): ``Timer`` restores its elapsed time from the checkpoint, so
a rerun with the same budget stops at once, and its stop ends the current epoch early *with* a validation and
counts the epoch as complete, so the rest of that epoch is never trained and the resumed run differs from an
uninterrupted one. :class:`Deadline` budgets the sitting, not the run, and resumes at the next batch.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from sagnn_lightning.errors import SAGNNError, param

__all__ = ["Deadline", "DeadlineReached", "parse_duration"]


def _clock() -> float:
    """Wall-clock seconds since the epoch (tests replace it)."""
    return time.time()


def parse_duration(text: str) -> float:
    """``"DD:HH:MM:SS"`` (Lightning's ``max_time`` format; leading fields may be left out: ``"HH:MM:SS"``,
    ``"MM:SS"``, ``"SS"``) → seconds.

    Raises:
        ValueError: another format.
    """
    parts = str(text).strip().split(":")
    if not 1 <= len(parts) <= 4 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ValueError(f"a duration must be DD:HH:MM:SS (e.g. 00:12:00:00), got {text!r}")
    units = (1, 60, 3600, 86400)
    return float(sum(int(value) * unit for value, unit in zip(reversed(parts), units)))


class DeadlineReached(SAGNNError):
    """Raised out of ``trainer.fit`` by :class:`Deadline`, once the training state is saved.

    Attributes:
        step: the global step at which training stopped.
        checkpoint: the file that holds the state at ``step`` (``None``: nothing was saved, either because no
            batch was trained in this sitting, so the checkpoint resumed from is current, or because the trainer
            has no checkpoint callback).
    """

    exit_code = 3

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class Deadline(Callback):
    """Ends training when the wall clock passes a deadline, checked after every training batch (all processes of
    a multi-process run agree on it): the state at that batch is written to the checkpoint callback's
    ``last.ckpt`` and :class:`DeadlineReached` is raised, so a rerun with ``--ckpt_path last`` continues at the
    next batch exactly as after a mid-epoch checkpoint. When the deadline has passed before the first batch,
    nothing is trained or saved. See the module docstring for why this is not Lightning's ``Timer``.

    Give exactly one of:

    Args:
        max_time: budget of this sitting, ``"DD:HH:MM:SS"`` (leading fields may be left out; quote it in a YAML
            file, where ``1:00:00:00`` would be read as a base-60 number), counted from when the callback is built
            (with the CLI: when the command starts, before the data are read). Not restored from a checkpoint:
            each rerun gets the full budget.
        at: the deadline itself, in seconds since the epoch (``time.time()``, ``date +%s``), e.g. one budget
            shared by several runs in a row.

    Attributes:
        deadline: the deadline in seconds since the epoch.
        reached: whether training was stopped by the deadline.
    """

    def __init__(self, max_time: str | None = None, at: float | None = None) -> None:
        if (max_time is None) == (at is None):
            raise ValueError("Deadline: give exactly one of max_time (a budget, DD:HH:MM:SS) and at (a time)")
        self.deadline = float(at) if at is not None else _clock() + parse_duration(str(max_time))
        self.reached = False

    def _passed(self, trainer: pl.Trainer) -> bool:
        self.reached = bool(trainer.strategy.broadcast(_clock() >= self.deadline))
        return self.reached

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._passed(trainer):  # nothing trained in this sitting: the checkpoint on disk is current
            raise DeadlineReached(
                "deadline reached before training started; nothing trained or saved",
                step=int(trainer.global_step),
                checkpoint=None,
            )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._passed(trainer):
            return
        step = int(trainer.global_step)
        checkpoint = trainer.checkpoint_callback
        dirpath = getattr(checkpoint, "dirpath", None)
        if checkpoint is None or not dirpath:
            raise DeadlineReached(
                f"deadline reached at step {step}; no checkpoint callback: nothing saved", step=step, checkpoint=None
            )
        last = Path(
            getattr(checkpoint, "last_model_path", "")
            or Path(dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"  # type: ignore[attr-defined]
        )
        trainer.save_checkpoint(last)
        raise DeadlineReached(
            f"deadline reached; training state saved at step {step} in {last}: run the same command with "
            f"{param('ckpt_path')}=last to continue",
            step=step,
            checkpoint=last,
        )
