"""Helpers of the lit tests: callbacks used by the subprocess tests (DDP, resume) and a quiet in-process Trainer;
importable as ``tests.lit.helpers``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU ``Trainer`` that prints and writes nothing (no logger, checkpoints, progress bar or model summary);
    ``kwargs`` add to or override these settings."""
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**settings, **kwargs})


class RankRecorder(Callback):
    """Writes ``<out_dir>/rank<r>.json`` at the end of fit: samples trained on, parameter checksum,
    world size and the metrics this rank sees."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.train_ids: dict[int, list[str]] = {}
        self.val_batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_ids.setdefault(trainer.current_epoch, []).extend(str(i) for i in batch.sample_id)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_batches += 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checksum = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train_ids": [self.train_ids[e] for e in sorted(self.train_ids)],
            "val_batches": self.val_batches,
            "param_checksum": checksum,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "strategy": type(trainer.strategy).__name__,
        }
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


class KillAtStep(Callback):
    """SIGKILLs its own process right after training step ``step`` (global step), i.e. mid-epoch,
    once the checkpoint of that step is on disk (a hard crash: no clean-up, no final checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class FinalState(Callback):
    """Writes ``<path>`` (JSON) at the end of fit: metrics and a parameter checksum + a few values."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()]).double()
        record = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "param_sum": float(flat.sum()),
            "param_head": flat[:16].tolist(),
        }
        Path(self.path).write_text(json.dumps(record))


class FirstStep(Callback):
    """Writes ``<path>`` (JSON) with the global step and epoch at the first training batch of this process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._done:
            self._done = True
            Path(self.path).write_text(
                json.dumps({"global_step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx})
            )


def learning_rates(schedule: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    """The first parameter group's learning rate at the start of each of ``epochs`` epochs, stepping the optimizer
    and then ``schedule`` once per epoch as Lightning does."""
    optimizer = schedule.optimizer
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates
