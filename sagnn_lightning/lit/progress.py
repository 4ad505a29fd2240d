"""A progress bar for logs: one line per training epoch instead of tqdm's carriage-return refreshes.

The CLI uses it in place of Lightning's default bar (``RichProgressBar`` when ``rich`` is installed,
else ``TQDMProgressBar``) when standard output is not a terminal (a log file, a pipe, a batch job): tqdm
would write every refresh as a new chunk of text, hundreds of KB per run, and Rich only the last frame of
the bar. In a terminal Lightning's default bar stays.
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


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``, ``3 d 04 h`` (rounded down to the unit shown last)."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


class EpochLineProgressBar(ProgressBar):
    """Prints ``epoch 3/30: train/loss=0.42 val/loss=0.34 val/mae=0.37 (7.1 s, ETA 3 min 20 s)`` at the end of
    each training epoch, on global rank 0 (every rank joins the same metric reductions; only rank 0 prints).

    Shown: the progress-bar metrics (``prog_bar=True``) and the metric that selects the best checkpoint. The
    ETA (until ``max_epochs``) is the mean duration of the epochs run by this process (training + validation)
    times the epochs left; it is left out after the last epoch and when ``max_epochs`` is unset.

    Args:
        prefix: text put before every line (e.g. which run of several it belongs to).
    """

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix
        self._enabled = True
        self._start = 0.0
        self._durations: list[float] = []

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._start
        self._durations.append(seconds)
        shown: dict[str, Any] = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        monitor = getattr(pl_module, "monitor", None)
        if monitor and monitor[0] in trainer.callback_metrics:
            shown.setdefault(monitor[0], trainer.callback_metrics[monitor[0]])
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        total = f"/{max_epochs}" if max_epochs else ""
        items = " ".join(f"{k}={_format(v)}" for k, v in shown.items())
        timing = f"{seconds:.1f} s"
        left = max_epochs - (trainer.current_epoch + 1) if max_epochs else 0
        if left > 0:
            timing += f", ETA {format_duration(left * sum(self._durations) / len(self._durations))}"
        print(f"{self.prefix}epoch {trainer.current_epoch + 1}{total}: {items} ({timing})", file=sys.stdout, flush=True)
