"""A progress bar for logs: one line per training epoch instead of tqdm's carriage-return refreshes.

The CLI uses it in place of Lightning's default ``TQDMProgressBar`` when standard output is not a
terminal (a log file, a pipe, a batch job): tqdm would write every refresh as a new chunk of text,
hundreds of KB per run. In a terminal the usual tqdm bar stays.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar


def _format(value: Any) -> str:
    try:
        return f"{float(value):.5g}"
    except (TypeError, ValueError):
        return str(value)


class EpochLineProgressBar(ProgressBar):
    """Prints ``epoch 3/30: train/loss=0.42 val/loss=0.34 val/mae=0.37 (7.1 s)`` at the end of each
    training epoch, on global rank 0 (every rank joins the same metric reductions; only rank 0 prints).

    Shown: the progress-bar metrics (``prog_bar=True``) and the metric that selects the best checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        shown = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        monitor = getattr(pl_module, "monitor", None)
        if monitor and monitor[0] in trainer.callback_metrics:
            shown.setdefault(monitor[0], trainer.callback_metrics[monitor[0]])
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        items = " ".join(f"{k}={_format(v)}" for k, v in shown.items())
        print(f"epoch {trainer.current_epoch + 1}{total}: {items} ({time.perf_counter() - self._start:.1f} s)",
              file=sys.stdout, flush=True)
