"""SIGTERM in a multi-process run: stop every rank at once instead of waiting in a collective.

Lightning 2.6's own SIGTERM handler runs a ``broadcast`` *inside the signal handler* and each rank then
stops at the next place where it checks its own flag: ranks can end up waiting in different collectives
and the run hangs for ever (seen with ``--trainer.devices=2``). :class:`StopOnSigterm` replaces that
handler while a multi-process ``fit``/``validate``/``test``/``predict`` runs: the process that got the
signal forwards it to the ranks it launched, prints one line and exits with status ``128 + SIGTERM``
(143), running no collective. ``last.ckpt`` holds the end of the last epoch (or of the last N steps with
``--checkpoint.last_every_n_train_steps``): resume with the same command plus ``--ckpt_path last``.

Single-process runs keep Lightning's own graceful stop.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class StopOnSigterm(Callback):
    """Ends every rank of a multi-process run promptly on SIGTERM (see module docstring)."""

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None

    def _install(self, trainer: pl.Trainer) -> None:
        # Lightning registers its handler just before the run starts (after ``on_fit_start``) and restores the
        # original handlers at teardown; the ``*_start`` hooks below come after that registration
        if trainer.world_size > 1 and _in_main_thread() and signal.getsignal(signal.SIGTERM) != self._handle:
            self._trainer = trainer
            signal.signal(signal.SIGTERM, self._handle)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        trainer = self._trainer
        launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
        kill = getattr(launcher, "kill", None)
        if callable(kill):  # the launching process: pass the signal on to the ranks it started
            try:
                kill(signum)
            except Exception:  # noqa: BLE001 - we are exiting anyway
                pass
        rank = trainer.global_rank if trainer is not None else 0
        if rank == 0:
            print(
                f"sagnn: received signal {signum}, stopping all ranks; resume with the same command plus "
                "--ckpt_path last",
                file=sys.stderr,
                flush=True,
            )
        sys.stdout.flush()
        os._exit(128 + signum)  # no clean-up: it would enter collectives the other ranks never reach


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
