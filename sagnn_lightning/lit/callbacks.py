"""Callbacks of the recipes: best + last checkpoints, parity plot, throughput, final summary line.

All file writes and prints happen on global rank 0; data needed from every rank (predictions for the
parity plot) is gathered first and de-duplicated by sample id (DDP samplers pad with repeats).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from sagnn_lightning.lit.module import MONITOR


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` keeping the best checkpoint by the task's validation metric, plus ``last.ckpt``.

    Args:
        dirpath: folder of the checkpoints (the CLI sets ``<trainer.default_root_dir>/checkpoints``).
        monitor: metric key, or ``"auto"``: ``val/mae`` (regression, min) / ``val/auroc``
            (classification, max), read from the module's ``task_type``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (with ``monitor``).
        save_top_k: best checkpoints kept (default 1).
        save_last: also write ``last.ckpt`` (default ``True``; ``--ckpt_path last`` resumes from it).
        filename: name pattern (default ``best-{epoch}-{step}``).
        last_every_n_train_steps: also refresh ``last.ckpt`` every this many training steps, mid-epoch
            (0 = only at the end of each epoch); a run killed mid-epoch then resumes exactly with
            ``--ckpt_path last``.
        **kwargs: other ``ModelCheckpoint`` arguments.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        monitor: str = "auto",
        mode: Literal["auto", "min", "max"] = "auto",
        save_top_k: int = 1,
        save_last: bool = True,
        filename: str | None = "best-{epoch}-{step}",
        last_every_n_train_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        if last_every_n_train_steps < 0:
            raise ValueError(f"last_every_n_train_steps must be >= 0, got {last_every_n_train_steps}")
        self.last_every_n_train_steps = last_every_n_train_steps
        self._auto_monitor, self._auto_mode = monitor == "auto", mode == "auto"
        super().__init__(dirpath=dirpath, monitor=None if monitor == "auto" else monitor,
                         mode="min" if mode == "auto" else mode, save_top_k=save_top_k, save_last=save_last,
                         filename=filename, auto_insert_metric_name=False, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        task_type = getattr(pl_module, "task_type", "regression")
        monitor, mode = MONITOR.get(task_type, MONITOR["regression"])
        if self._auto_monitor:
            self.monitor = monitor
        if self._auto_mode:
            self.mode = mode
            torch_inf = torch.tensor(float("inf"))
            self.kth_value = torch_inf if mode == "min" else -torch_inf
            self.best_model_score = None
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if n and self.save_last and trainer.global_step % n == 0 and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _gather_objects(trainer: pl.Trainer, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (list of ``world_size`` items); ``[obj]`` without DDP."""
    if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory: ``trainer.default_root_dir`` (where checkpoints, plots and W&B files go)."""
    return Path(trainer.default_root_dir)


def wandb_run_dir(trainer: pl.Trainer) -> str | None:
    """Local folder of the W&B run, if a W&B logger started one."""
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger) and logger._experiment is not None:
            directory = getattr(logger._experiment, "dir", None)
            return str(Path(directory).parent) if directory else None
    return None


class ParityPlot(Callback):
    """Predicted vs true values on validation (end of fit) and test: PNG in the run dir + W&B image.

    Files: ``<run dir>/parity_val.png``, ``<run dir>/parity_test.png`` (one panel per target). For
    classification the plot shows the predicted probability against the true class.

    Args:
        max_points: at most this many points per target are drawn (random subset, fixed seed).
    """

    def __init__(self, max_points: int = 20_000) -> None:
        self.max_points = max_points
        self._rows: dict[str, list[tuple[str, list[float], list[float]]]] = {"val": [], "test": []}
        self._last: dict[str, list[tuple[str, list[float], list[float]]]] = {}
        self.paths: dict[str, Path] = {}

    def _collect(self, stage: str, outputs: Any) -> None:
        if not isinstance(outputs, dict) or "pred" not in outputs:
            return
        pred, y = outputs["pred"].float().cpu().tolist(), outputs["y"].float().cpu().tolist()
        ids = outputs.get("sample_id") or [None] * len(pred)
        self._rows[stage].extend(zip(ids, y, pred))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._collect("val", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("test", outputs)

    def _finish_stage(self, trainer: pl.Trainer, stage: str) -> None:
        rows = [r for part in _gather_objects(trainer, self._rows[stage]) for r in part]
        self._rows[stage] = []
        unique: dict[Any, tuple] = {}
        for k, row in enumerate(rows):  # DDP samplers repeat samples to even out ranks
            unique.setdefault(row[0] if row[0] is not None else k, row)
        self._last[stage] = list(unique.values())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish_stage(trainer, "val")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._plot(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, "test")
        self._plot(trainer, pl_module, "test")

    @rank_zero_only
    def _plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        rows = self._last.get(stage)
        if not rows:
            return
        path = run_dir(trainer) / f"parity_{stage}.png"
        names = list(getattr(pl_module, "target_names", ["target"]))
        classification = getattr(pl_module, "task_type", "regression") == "classification"
        write_parity_png(path, rows, names, classification, stage, self.max_points)
        self.paths[stage] = path
        for logger in trainer.loggers:
            if isinstance(logger, _LightningWandbLogger):
                logger.log_image(key=f"{stage}/parity", images=[str(path)])


def write_parity_png(path: Path, rows: list[tuple], names: list[str], classification: bool, stage: str,
                     max_points: int = 20_000) -> None:
    """Draw ``rows`` = ``[(id, y [T], pred [T]), ...]`` as one parity panel per target into ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.asarray([r[1] for r in rows], dtype=float).reshape(len(rows), -1)
    pred = np.asarray([r[2] for r in rows], dtype=float).reshape(len(rows), -1)
    num_targets = y.shape[1]
    fig, axes = plt.subplots(1, num_targets, figsize=(4.2 * num_targets, 4.0), squeeze=False)
    rng = np.random.default_rng(0)
    for t, ax in enumerate(axes[0]):
        keep = np.isfinite(y[:, t])
        yt, pt = y[keep, t], pred[keep, t]
        if yt.size > max_points:
            pick = rng.choice(yt.size, max_points, replace=False)
            yt, pt = yt[pick], pt[pick]
        name = names[t] if t < len(names) else f"target_{t}"
        if classification:
            jitter = rng.uniform(-0.15, 0.15, size=yt.size)
            ax.scatter(yt + jitter, pt, s=4, alpha=0.4)
            ax.set_xticks([0, 1])
            ax.set_xlabel(f"true {name}")
            ax.set_ylabel("predicted probability")
        else:
            ax.scatter(yt, pt, s=4, alpha=0.4)
            if yt.size:
                lo, hi = float(min(yt.min(), pt.min())), float(max(yt.max(), pt.max()))
                ax.plot([lo, hi], [lo, hi], "k--", lw=1)
                mae = float(np.mean(np.abs(yt - pt)))
                ax.set_title(f"{stage}: MAE {mae:.4g} (n={yt.size})")
            ax.set_xlabel(f"true {name}")
            ax.set_ylabel(f"predicted {name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


class Throughput(Callback):
    """Training throughput in crystals per second (all processes), logged as ``perf/train_crystals_per_s``."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._graphs = 0
        self.last_value: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._graphs = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._graphs += int(getattr(batch, "num_graphs", 0))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None or self._graphs == 0:
            return
        per_rank = self._graphs / max(time.perf_counter() - self._start, 1e-9)
        total = per_rank * trainer.world_size  # ranks run in lock-step
        self.last_value = total
        pl_module.log("perf/train_crystals_per_s", total, on_step=False, on_epoch=True, sync_dist=False,
                      rank_zero_only=True)


class RunSummary(Callback):
    """Prints one line at the end of ``fit``/``test``: best metric, checkpoint, run dir, W&B run dir."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _checkpoint(self, trainer: pl.Trainer) -> ModelCheckpoint | None:
        return trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = self._checkpoint(trainer)
        parts = []
        if ckpt is not None and ckpt.best_model_score is not None:
            parts.append(f"best {ckpt.monitor}={float(ckpt.best_model_score):.5g}")
            parts.append(f"best checkpoint {ckpt.best_model_path}")
        if ckpt is not None and ckpt.last_model_path:
            parts.append(f"last {ckpt.last_model_path}")
        parts.append(f"run dir {run_dir(trainer)}")
        parts.append(f"W&B run dir {wandb_run_dir(trainer) or '(no W&B logger)'}")
        self._emit("sagnn fit done: " + " | ".join(parts))

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        shown = ", ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))
        self._emit(f"sagnn test done: {shown} | run dir {run_dir(trainer)} | "
                   f"W&B run dir {wandb_run_dir(trainer) or '(no W&B logger)'}")

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


class PredictionsCSV(Callback):
    """Writes the ``predict`` subcommand's outputs as CSV (``id, prediction[, probability]``).

    Predictions of every DDP process are gathered and de-duplicated by sample id (samplers pad with
    repeats), then written once, atomically, by rank 0.

    Args:
        output: CSV path (default ``<run dir>/predictions.csv``).
    """

    def __init__(self, output: str | None = None) -> None:
        self.output = output
        self._rows: list[tuple[str, list[float], list[float] | None]] = []
        self.path: Path | None = None

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or "prediction" not in outputs:
            return
        pred = outputs["prediction"].float().cpu().tolist()
        prob = outputs["probability"].float().cpu().tolist() if "probability" in outputs else [None] * len(pred)
        ids = outputs.get("sample_id") or [f"{batch_idx}-{k}" for k in range(len(pred))]
        self._rows.extend(zip(ids, pred, prob))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = [r for part in _gather_objects(trainer, self._rows) for r in part]
        self._rows = []
        if trainer.global_rank != 0 or not rows:
            return
        unique: dict[str, tuple] = {}
        for row in rows:
            unique.setdefault(row[0], row)
        from sagnn_lightning.lit.predict import Predictions, write_predictions_csv

        ordered = list(unique.values())
        classification = ordered[0][2] is not None
        result = Predictions(
            ids=[r[0] for r in ordered],
            prediction=torch.tensor([r[1] for r in ordered]),
            probability=torch.tensor([r[2] for r in ordered]) if classification else None,
            target_names=list(getattr(pl_module, "target_names", ["target"])), errors=[],
        )
        self.path = write_predictions_csv(self.output or run_dir(trainer) / "predictions.csv", result)
        print(f"sagnn predict done: wrote {len(ordered)} predictions to {self.path}", flush=True)
