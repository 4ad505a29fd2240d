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

from sagnn_lightning.files import atomic_write
from sagnn_lightning.lit.module import MONITOR
from sagnn_lightning.lit.predictions_csv import Predictions, write_predictions_csv
from sagnn_lightning.lit.wandb import active_run_dir


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` keeping the best checkpoint by the task's validation metric, plus ``last.ckpt``.

    Args:
        dirpath: folder of the checkpoints (the CLI sets ``<trainer.default_root_dir>/checkpoints``).
        monitor: metric key, or ``"auto"``: the module's ``monitor`` (``val/mae`` for one regression target,
            ``val/loss`` for several, ``val/auroc`` for classification, max).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (with ``monitor``).
        save_top_k: best checkpoints kept (default 1).
        save_last: also write ``last.ckpt`` at the end of every training epoch, whether or not the metric
            improved (default ``True``; ``--ckpt_path last`` resumes from it).
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
        super().__init__(
            dirpath=dirpath,
            monitor=None if monitor == "auto" else monitor,
            mode="min" if mode == "auto" else mode,
            save_top_k=save_top_k,
            save_last=save_last,
            filename=filename,
            auto_insert_metric_name=False,
            **kwargs,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        task_type = getattr(pl_module, "task_type", "regression")
        monitor, mode = getattr(pl_module, "monitor", None) or MONITOR.get(task_type, MONITOR["regression"])
        if self._auto_monitor:
            self.monitor = monitor
        if self._auto_mode:
            self.mode = mode
            torch_inf = torch.tensor(float("inf"))
            self.kth_value = torch_inf if mode == "min" else -torch_inf
            self.best_model_score = None
        super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resuming in a run dir that was moved (copied to another machine or path) keeps the best-checkpoint
        bookkeeping: Lightning drops it when ``dirpath`` differs, so paths recorded under the old folder are read
        as the same files in this one when the best checkpoint is there."""
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath and state_dict.get("best_model_path"):

            def moved(path: Any) -> Any:
                try:
                    return str(Path(str(self.dirpath)) / Path(path).relative_to(old)) if path else path
                except ValueError:  # not under the old folder
                    return path

            if Path(moved(state_dict["best_model_path"])).is_file():
                paths = ("best_model_path", "kth_best_model_path", "last_model_path")
                best_k = {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}
                state_dict = {
                    **state_dict,
                    "dirpath": self.dirpath,
                    "best_k_models": best_k,
                    **{k: moved(state_dict[k]) for k in paths if k in state_dict},
                }
        super().load_state_dict(state_dict)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if n and trainer.global_step % n == 0:
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning (2.6) rewrites last.ckpt only when a top-k checkpoint is saved; ours is the end of every epoch
        self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` now, unless this step was just saved (then last.ckpt already holds it)."""
        # ModelCheckpoint's own (non-public) save path keeps its bookkeeping (last_model_path, the step saved)
        # consistent; the Lightning range that has it is pinned in pyproject and tests/lit/test_resume.py tests it
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
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


class ParityPlot(Callback):
    """Predicted vs true values on validation (end of fit) and test: PNG in the run dir + W&B image.

    Files: ``<run dir>/parity_val.png``, ``<run dir>/parity_test.png`` (one panel per target; axes in the
    target's unit when the DataModule gives ``target_units``). The validation plot shows the validation
    epoch of the **best checkpoint** (the one the summary line reports); when that epoch was not seen by
    this process (a resumed run that never improved), the last epoch, and the title says which. For
    classification the plot shows the predicted probability against the true class.

    Args:
        max_points: at most this many points per target are drawn (random subset, fixed seed).
    """

    def __init__(self, max_points: int = 20_000) -> None:
        self.max_points = max_points
        self._rows: dict[str, list[tuple[str, list[float], list[float]]]] = {"val": [], "test": []}
        self._last: dict[str, list[tuple[str, list[float], list[float]]]] = {}
        self._labels: dict[str, str] = {}
        self._pending: tuple[int, list] | None = None  # the latest validation epoch, until the checkpoint judged it
        self._best: tuple[int, list] | None = None
        self._best_key: tuple | None = None
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

    def _gather_stage(self, trainer: pl.Trainer, stage: str) -> list[tuple]:
        rows = [r for part in _gather_objects(trainer, self._rows[stage]) for r in part]
        self._rows[stage] = []
        unique: dict[Any, tuple] = {}
        for k, row in enumerate(rows):  # DDP samplers repeat samples to even out ranks
            unique.setdefault(row[0] if row[0] is not None else k, row)
        return list(unique.values())

    def _judge_pending(self, trainer: pl.Trainer) -> None:
        """After the checkpoint callback has seen the pending validation epoch: keep it if it became the best."""
        ckpt = trainer.checkpoint_callback
        if self._pending is None or not isinstance(ckpt, ModelCheckpoint) or not ckpt.best_model_path:
            return
        key = (ckpt.best_model_path, None if ckpt.best_model_score is None else float(ckpt.best_model_score))
        if key != self._best_key:
            self._best, self._best_key = self._pending, key
        self._pending = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._judge_pending(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pending = (trainer.current_epoch, self._gather_stage(trainer, "val"))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = self._pending
        self._judge_pending(trainer)
        if self._best is not None:
            epoch, self._last["val"] = self._best
            self._labels["val"] = f"best checkpoint, epoch {epoch}"
        elif last is not None:
            epoch, self._last["val"] = last
            self._labels["val"] = f"last epoch {epoch}"
        self._plot(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last["test"] = self._gather_stage(trainer, "test")
        self._labels["test"] = ""
        self._plot(trainer, pl_module, "test")

    @rank_zero_only
    def _plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        rows = self._last.get(stage)
        if not rows:
            return
        path = run_dir(trainer) / f"parity_{stage}.png"
        names = list(getattr(pl_module, "target_names", ["target"]))
        datamodule = getattr(trainer, "datamodule", None)
        units = getattr(datamodule, "target_units", None) if datamodule is not None else None
        classification = getattr(pl_module, "task_type", "regression") == "classification"
        label = self._labels.get(stage)
        write_parity_png(
            path, rows, names, classification, f"{stage} ({label})" if label else stage, self.max_points, units=units
        )
        self.paths[stage] = path
        for logger in trainer.loggers:
            if isinstance(logger, _LightningWandbLogger):
                logger.log_image(key=f"{stage}/parity", images=[str(path)])


def write_parity_png(
    path: Path,
    rows: list[tuple],
    names: list[str],
    classification: bool,
    stage: str,
    max_points: int = 20_000,
    units: list[str | None] | None = None,
) -> None:
    """Draw ``rows`` = ``[(id, y [T], pred [T]), ...]`` as one parity panel per target into ``path``.

    ``stage`` heads each panel's title; ``units`` (one per target, ``None`` = unknown) label the axes.
    """
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
        unit = units[t] if units is not None and t < len(units) and units[t] else None
        axis = f"{name} ({unit})" if unit else name
        if classification:
            jitter = rng.uniform(-0.15, 0.15, size=yt.size)
            ax.scatter(yt + jitter, pt, s=4, alpha=0.4)
            ax.set_xticks([0, 1])
            ax.set_xlabel(f"true {axis}")
            ax.set_ylabel("predicted probability")
        else:
            ax.scatter(yt, pt, s=4, alpha=0.4)
            if yt.size:
                lo, hi = float(min(yt.min(), pt.min())), float(max(yt.max(), pt.max()))
                ax.plot([lo, hi], [lo, hi], "k--", lw=1)
                mae = float(np.mean(np.abs(yt - pt)))
                ax.set_title(f"{stage}: MAE {mae:.4g}{' ' + unit if unit else ''} (n={yt.size})", fontsize=9)
            ax.set_xlabel(f"true {axis}")
            ax.set_ylabel(f"predicted {axis}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path, "wb") as fh:  # umask respected; a replaced plot keeps its mode
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)


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
        self.last_value = per_rank * trainer.world_size  # this rank's estimate; the logged value is the exact sum
        # every rank logs its own rate; Lightning sums them across processes (a collective every rank joins)
        pl_module.log(
            "perf/train_crystals_per_s", per_rank, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum"
        )


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
        parts.append(f"W&B run dir {active_run_dir() or '(no W&B logger)'}")
        self._emit("sagnn fit done: " + " | ".join(parts))

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        shown = ", ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))
        self._emit(
            f"sagnn test done: {shown} | run dir {run_dir(trainer)} | "
            f"W&B run dir {active_run_dir() or '(no W&B logger)'}"
        )

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
        ordered = list(unique.values())
        classification = ordered[0][2] is not None
        result = Predictions(
            ids=[r[0] for r in ordered],
            prediction=torch.tensor([r[1] for r in ordered]),
            probability=torch.tensor([r[2] for r in ordered]) if classification else None,
            target_names=list(getattr(pl_module, "target_names", ["target"])),
            errors=[],
        )
        self.path = write_predictions_csv(self.output or run_dir(trainer) / "predictions.csv", result)
        print(f"sagnn predict done: wrote {len(ordered)} predictions to {self.path}", flush=True)
