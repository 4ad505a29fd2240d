"""Matbench v0.1 leaderboard runner for SA-GNN (and its w/o-MHSA ablation).

Every fold is trained by the recipes' own pipeline: the CLI (:func:`sagnn_lightning.cli.cli_main`) builds
``MatbenchDataModule`` (official fold, validation carved from the fold's training rows) + ``SAGNNModule`` +
``Trainer`` from ``recipes/configs/sagnn.yaml`` + ``recipes/configs/<task>.yaml``, then the runner calls
``trainer.fit`` and ``trainer.predict`` (best checkpoint by validation MAE) on the test rows. Matbench's own API
records and scores the predictions::

    mb = MatbenchBenchmark(autoload=False, subset=[...])
    task.df = <ids + targets of the task, read by the DataModule>
    for fold in task.folds:  ... train + predict as above ...
        task.record(fold, predictions, params={...})                      # matbench scores it
    mb.add_metadata({...}); mb.to_file(...)

* Hyper-parameters are fixed in advance (the recipes' YAML; more ``--config`` files and ``--model.*``
  options after ``--``; ``--max-epochs`` sets the budget); no test data is used for any choice.
* Each fold has its own run dir ``<work dir>/<task>/fold_<k>/`` (default work dir ``<out>/work``) holding what a
  recipe run holds: ``checkpoints/last.ckpt`` (end of every epoch), ``checkpoints/best-*.ckpt``,
  ``config.yaml``, ``parity_val.png``, ``predictions.csv`` (test rows), plus ``history.csv`` (validation MAE and
  cumulative training seconds per epoch, all sittings) and ``runner_config.json``.
* Resumable: a fold that was killed, or cut by ``--max-time``, continues from its ``last.ckpt`` when the same
  command is run again (on this machine or another one that has the work dir). After each fold,
  ``results.json.gz`` (``MatbenchBenchmark.to_file``, written to a temporary file then renamed) and
  ``info.json`` are saved; recorded folds are skipped. Training folds into a results file or a fold dir that
  holds another configuration is refused.
* ``--jobs N`` trains N folds at once, each in its own process with ``--threads`` threads (default 1).
* ``--val-folds K`` selects on inner cross-validation instead of one validation carve: each fold trains K
  members in ``<work dir>/<task>/fold_<k>/inner_<j>/``, member ``j`` validating on inner fold ``j`` of the fold's
  training rows (``--data.val_folds=K --data.val_fold=j``), and the fold records the mean of the K members'
  test predictions (probabilities for classification); each member's epochs, best epoch, best validation
  score and test MAE are in the fold's ``parameters``.
* Progress: one line per epoch and fold, ``[sagnn] matbench_jdft2d fold 0: epoch 3/300: ... val/mae=... (2.9 s,
  ETA 14 min 10 s)``.
* The DataModule reads the whole task, targets included (the graph cache is the recipes' one); test targets are
  used by matbench's scoring only: the runner never runs ``test`` and selects the checkpoint on validation.
* matbench's ``to_file``/``from_file`` write and read *plain* JSON whatever the file name — the
  ``results.json.gz`` of matbench submissions is that file, so this runner keeps matbench's format.
* Classification (``matbench_mp_is_metal``): probabilities are recorded; matbench's stored ``rocauc``
  is computed after its ``accuracy`` step has turned the predictions into 0/1 labels, so it equals the
  balanced accuracy. The true ROC-AUC from the probabilities is stored beside it in each fold's
  ``parameters`` (``rocauc_from_probabilities``) and in the metadata.

Usage (offline, shared data)::

    python benchmarks/matbench_v0.1_sagnn/run.py --tasks matbench_jdft2d --variant sagnn \
        --max-epochs 50 --data-home ../shared/data/matbench --jobs 2 --max-time 00:08:00:00 \
        [-- --config my.yaml --model.optimizer.lr=5e-4 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ProgressBar

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG_DIR = HERE.parents[1] / "recipes" / "configs"
RESULTS_FILE = "results.json.gz"
INFO_FILE = "info.json"
FOLD_CONFIG_FILE = "runner_config.json"
HISTORY_FILE = "history.csv"
#: exit status when every fold ran without error but some were stopped by --max-time (rerun to continue)
EXIT_UNFINISHED = 3

#: the two variants of issue 7: SA-GNN (8 heads, MHSA after the last block) and the w/o-MHSA ablation
VARIANTS: dict[str, dict[str, Any]] = {
    "sagnn": {"attention": "last", "heads": 8},
    "no_mhsa": {"attention": "none"},
}
ALGORITHM_NAMES = {"sagnn": "SA-GNN", "no_mhsa": "SA-GNN w/o MHSA"}

BIBTEX_REFS = r"""@article{Goodall2020Roost,
  author = {Goodall, Rhys E. A. and Lee, Alpha A.},
  title = {Predicting materials properties without crystal structure: deep representation learning from stoichiometry},
  journal = {Nature Communications},
  volume = {11},
  pages = {6280},
  year = {2020},
  doi = {10.1038/s41467-020-19964-7}
}
@article{Tshitoyan2019,
  author = {Tshitoyan, Vahe and Dagdelen, John and Weston, Leigh and Dunn, Alexander and Rong, Ziqin and Kononova, Olga and Persson, Kristin A. and Ceder, Gerbrand and Jain, Anubhav},
  title = {Unsupervised word embeddings capture latent knowledge from materials science literature},
  journal = {Nature},
  volume = {571},
  pages = {95--98},
  year = {2019},
  doi = {10.1038/s41586-019-1335-8}
}
@article{Cui2024SAGNN,
  author = {Cui, Yasen and Zhu, Jian and Zhou, Wei and Zang, Huaijuan and Ren, Yongsheng and Xu, Jiajia and Zhan, Shu and Ma, Wenhui},
  title = {{SA-GNN}: Prediction of material properties using graph neural network based on multi-head self-attention optimization},
  journal = {AIP Advances},
  volume = {14},
  number = {5},
  year = {2024},
  publisher = {AIP Publishing},
  doi = {10.1063/5.0186891}
}
@article{Chen2019MEGNet,
  author = {Chen, Chi and Ye, Weike and Zuo, Yunxing and Zheng, Chen and Ong, Shyue Ping},
  title = {Graph Networks as a Universal Machine Learning Framework for Molecules and Crystals},
  journal = {Chemistry of Materials},
  volume = {31},
  number = {9},
  pages = {3564--3572},
  year = {2019},
  doi = {10.1021/acs.chemmater.9b01294}
}
@article{Dunn2020,
  author = {Dunn, Alexander and Wang, Qi and Ganose, Alex and Dopp, Daniel and Jain, Anubhav},
  title = {Benchmarking materials property prediction methods: the Matbench test set and Automatminer reference algorithm},
  journal = {npj Computational Materials},
  volume = {6},
  number = {1},
  pages = {138},
  year = {2020},
  doi = {10.1038/s41524-020-00406-3}
}"""

log = logging.getLogger("matbench_v0.1_sagnn")


def _clock() -> float:
    """Wall-clock seconds since the epoch (``--max-time`` deadlines; tests replace it)."""
    return time.time()


def parse_max_time(text: str | None) -> float | None:
    """``"DD:HH:MM:SS"`` (Lightning's ``max_time`` format; leading fields may be left out) → seconds."""
    if text is None:
        return None
    parts = str(text).strip().split(":")
    if not 1 <= len(parts) <= 4 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise argparse.ArgumentTypeError(f"--max-time must be DD:HH:MM:SS (e.g. 00:12:00:00), got {text!r}")
    seconds = 0
    for value, unit in zip(reversed([int(p) for p in parts]), (1, 60, 3600, 86400)):
        seconds += value * unit
    return float(seconds)


# ---------------------------------------------------------------------------------------------- configuration
def fold_cli_args(
    task: str,
    fold: int,
    run_dir: Path,
    *,
    variant: str,
    max_epochs: int | None,
    seed: int,
    data_home: Path | None = None,
    cache_dir: Path | None = None,
    graph_workers: int = 0,
    model_overrides: dict[str, Any] | None = None,
    cli_args: Sequence[str] = (),
    val_folds: int | None = None,
    member: int | None = None,
) -> list[str]:
    """The CLI options of one fold, after the recipe's YAML files.

    Order (later wins): runner defaults (no W&B logger, no DataLoader workers), the user's ``cli_args``
    (``--config`` files and overrides), then what the runner's own flags fix: variant, ``model_overrides``,
    ``--max-epochs``, fold, seeds (validation carve and shuffle: ``seed``; weights: ``seed + fold``), run dir
    and data location; with ``val_folds``, the inner fold ``member`` that validates.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {max_epochs}")
    model = {**VARIANTS[variant], **(model_overrides or {})}
    args = [
        "--trainer.logger=false",
        "--data.init_args.num_workers=0",
        "--data.init_args.progress=false",
        *cli_args,
        *(f"--model.model.init_args.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in model.items()),
        *([f"--trainer.max_epochs={int(max_epochs)}"] if max_epochs is not None else []),
        f"--data.init_args.task={task}",
        f"--data.init_args.fold={int(fold)}",
        f"--data.init_args.split_seed={int(seed)}",
        f"--seed_everything={int(seed) + int(fold)}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.init_args.graph_workers={int(graph_workers)}",
    ]
    if val_folds is not None:
        args += [f"--data.init_args.val_folds={int(val_folds)}", f"--data.init_args.val_fold={int(member or 0)}"]
    if data_home is not None:
        args.append(f"--data.init_args.data_home={Path(data_home).expanduser()}")
    if cache_dir is not None:
        args.append(f"--data.init_args.cache_dir={Path(cache_dir).expanduser()}")
    return args


def recipe_configs(task: str, config_dir: Path) -> list[Path]:
    """The recipe's YAML files of ``task``: ``sagnn.yaml`` (``composition.yaml`` for a composition task) then
    ``<task>.yaml`` in ``config_dir``."""
    from sagnn_lightning.data.tasks import get_task

    base = "composition.yaml" if get_task(task).input_type == "composition" else "sagnn.yaml"
    files = [Path(config_dir) / base, Path(config_dir) / f"{task}.yaml"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"recipe config files not found: {missing}; pass --config-dir <recipes/configs>")
    return files


def build_cli(spec: dict[str, Any]) -> Any:
    """The recipes' CLI with the fold's objects built (``run=False``): ``.model``, ``.datamodule``, ``.trainer``."""
    from sagnn_lightning.cli import cli_main

    return cli_main(spec["cli_args"], name=f"matbench_v0.1_{spec['task']}", configs=spec["configs"], run=False)


def _plain(value: Any) -> Any:
    """JSON-ready copy (jsonargparse Namespaces → dicts, tuples → lists)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=lambda v: v.as_dict() if hasattr(v, "as_dict") else str(v)))


def config_summary(cli: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """What defines a fold's training, from the parsed CLI config (not from any copy of the YAML).

    ``model``: the SAGNN arguments (``SAGNN(num_targets=1, **model)`` rebuilds the network; ``cutoff`` is
    the DataModule's); ``training``: loss, optimizer, scheduler, trainer options that change the result,
    data options that change the graphs or the split. ``config_files`` and ``cli_args`` are recorded for
    reference and not compared (:func:`comparable`).
    """
    config = cli.config
    model = _plain(config.model.model.init_args)
    model.pop("num_targets", None)
    data = _plain(config.data.init_args)
    trainer = _plain(config.trainer)
    training = {
        "model_class": config.model.model.class_path,
        "data_class": config.data.class_path,
        "loss": config.model.loss,
        "optimizer": _plain(config.model.optimizer),
        "scheduler": _plain(config.model.scheduler),
        **{
            k: trainer.get(k)
            for k in ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "precision")
        },
        **{
            k: data.get(k)
            for k in ("batch_size", "val_fraction", "cutoff", "max_neighbors", "max_isolated_radius", "on_error")
        },
        "checkpoint": {k: _plain(config.checkpoint.get(k)) for k in ("monitor", "mode")},
    }
    if data.get("val_folds") is not None:  # only when set: configs recorded before the option stay comparable
        training["val_folds"] = data["val_folds"]
    return {
        "task": spec["task"],
        "variant": spec["variant"],
        "model": model,
        "training": training,
        "max_epochs": int(trainer["max_epochs"]),
        "seed": int(data["split_seed"]),
        "config_files": [Path(c).name for c in spec["configs"]],
        "cli_args": list(spec["user_cli_args"]),
    }


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a :func:`config_summary` two runs must share to be mixed in one submission or one fold."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("config_files", "cli_args")}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    old, new = comparable(old), comparable(new)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


# ---------------------------------------------------------------------------------------------- one fold
class DeadlineReached(Exception):
    """Raised out of ``trainer.fit`` by :class:`Deadline` once the fold's state is saved in ``last.ckpt``."""


class Deadline(Callback):
    """Ends training when the wall clock passes ``deadline`` (seconds since the epoch), checked after every
    training batch: the state at that batch is written to ``last.ckpt`` and :class:`DeadlineReached` is raised, so
    a rerun continues at the next batch exactly as after a mid-epoch checkpoint.

    Not Lightning's ``Timer`` (``Trainer(max_time=...)``): it restores its elapsed time from the checkpoint, so a
    rerun with the same budget would stop at once; and its ``should_stop`` ends the current epoch early (with a
    validation) and counts it as complete, so the rest of that epoch would never be trained.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = float(deadline)
        self.reached = False

    def _reached(self, trainer: pl.Trainer) -> bool:
        self.reached = bool(trainer.strategy.broadcast(_clock() >= self.deadline))
        return self.reached

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reached(trainer):  # nothing trained in this sitting: the checkpoint on disk is current
            raise DeadlineReached("--max-time reached before training started")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._reached(trainer):
            return
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not getattr(checkpoint, "dirpath", None):
            raise DeadlineReached("--max-time reached (no checkpoint callback: nothing saved)")
        last = checkpoint.last_model_path or str(
            Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        )
        trainer.save_checkpoint(last)
        raise DeadlineReached(f"--max-time reached; state saved at step {trainer.global_step} in {last}")


class EpochHistory(Callback):
    """Writes ``history.csv`` in the fold's run dir: one row per validated epoch (``epoch, global_step, val_mae,
    val_auroc, val_loss, lr, train_seconds, sitting, finished_utc``; ``val_auroc`` for classification). ``train_seconds`` is the training wall clock (training +
    validation) summed over the sittings; rows and sum are saved in the checkpoints, so a resumed fold continues
    them from exactly where its ``last.ckpt`` stopped."""

    columns = (
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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.offset = 0.0
        self.sittings = 0
        self._start: float | None = None

    @property
    def train_seconds(self) -> float:
        return self.offset + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sittings += 1
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.offset, self._start = self.train_seconds, None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = trainer.callback_metrics
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "global_step": trainer.global_step,
                "val_mae": _float(metrics.get("val/mae")),
                "val_auroc": _float(metrics.get("val/auroc")),  # classification tasks
                "val_loss": _float(metrics.get("val/loss")),
                "lr": lrs[0] if lrs else None,
                "train_seconds": round(self.train_seconds, 3),
                "sitting": self.sittings,
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        from sagnn_lightning.files import atomic_write

        lines = [",".join(self.columns)] + [
            ",".join("" if row.get(c) is None else str(row[c]) for c in self.columns) for row in self.rows
        ]
        with atomic_write(self.path, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "train_seconds": self.train_seconds, "sittings": self.sittings}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.offset = float(state_dict.get("train_seconds", 0.0))
        self.sittings = int(state_dict.get("sittings", 0))


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


def check_fold_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """A fold dir is continued only with the configuration it was started with (``runner_config.json``)."""
    path = run_dir / FOLD_CONFIG_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = _difference(stored, config)
        if diff:
            raise ValueError(
                f"{run_dir} holds a fold started with another configuration (stored vs requested: "
                f"{diff}); rerun with the stored settings, or delete {run_dir} (or pass another "
                "--work-dir) to train this fold from the start."
            )
        return
    from sagnn_lightning.files import atomic_write

    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _last_checkpoint(run_dir: Path) -> Path | None:
    from sagnn_lightning.errors import SAGNNError
    from sagnn_lightning.lit.predict import resolve_checkpoint

    if not (run_dir / "checkpoints").is_dir():
        return None
    try:
        return resolve_checkpoint("last", run_dir)
    except SAGNNError:
        return None


def _best_checkpoint(callback: Any, run_dir: Path) -> Path:
    """The best checkpoint recorded by the checkpoint callback (or, if the work dir was moved, the same name in
    this run dir's ``checkpoints``)."""
    recorded = Path(callback.best_model_path) if callback.best_model_path else None
    for candidate in [recorded, run_dir / "checkpoints" / recorded.name] if recorded else []:
        if candidate.is_file():
            return candidate
    raise RuntimeError(f"{run_dir}: no best checkpoint recorded (best_model_path={callback.best_model_path!r})")


def train_fold(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Train one fold and predict its test rows (:func:`_train_fold`), without upstream warnings."""
    with warnings.catch_warnings():
        _ignore_expected_warnings()
        return _train_fold(spec, prefix)


def _train_fold(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Train one fold through the recipes' CLI (resuming from the fold's ``last.ckpt``), then predict its test rows
    with the best checkpoint by validation.

    ``spec``: ``task, fold, variant, configs, cli_args, user_cli_args, run_dir, config, threads, deadline,
    checkpoint_dir`` (see :func:`fold_spec`). Returns ``{"status": "done", "ids", "predictions", "params",
    "checkpoint"}``, or ``{"status": "stopped", "epoch", "global_step", "max_epochs", "reason"}`` when ``--max-time`` ended
    training (:class:`Deadline`): nothing is predicted then, and a rerun continues from ``last.ckpt``.
    """
    import torch

    from sagnn_lightning.lit.progress import EpochLineProgressBar

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    run_dir = Path(spec["run_dir"])
    check_fold_dir(run_dir, spec["config"])
    last = _last_checkpoint(run_dir)
    t0 = time.perf_counter()
    cli = build_cli(spec)
    trainer, module, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ProgressBar)]
    history = EpochHistory(run_dir / HISTORY_FILE)
    trainer.callbacks += [EpochLineProgressBar(prefix=prefix), history]
    deadline = Deadline(spec["deadline"]) if spec.get("deadline") is not None else None
    if deadline is not None:
        trainer.callbacks.append(deadline)
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        print(
            f"{prefix}resuming from {last} (saved at step {state.get('global_step')}, epoch "
            f"{state.get('epoch', 0) + 1} of {trainer.max_epochs})",
            flush=True,
        )
        del state
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last is not None else None)
    except DeadlineReached as stop:
        return {
            "status": "stopped",
            "epoch": int(trainer.current_epoch) + 1,
            "global_step": int(trainer.global_step),
            "max_epochs": int(trainer.max_epochs or 0),
            "reason": str(stop),
        }
    epochs, max_epochs = int(trainer.current_epoch), int(trainer.max_epochs)
    # read before predict: predicting from a checkpoint restores the callbacks' states saved in that file
    checkpoint = trainer.checkpoint_callback
    best, monitor, score = _best_checkpoint(checkpoint, run_dir), checkpoint.monitor, checkpoint.best_model_score
    train_seconds, sittings = history.train_seconds, history.sittings
    t1 = time.perf_counter()
    outputs = trainer.predict(module, datamodule=datamodule, ckpt_path=str(best), weights_only=False)
    t_predict = time.perf_counter() - t1
    ids = [str(i) for out in outputs for i in out["sample_id"]]
    key = "probability" if module.task_type == "classification" else "prediction"
    predictions = torch.cat([out[key] for out in outputs]).reshape(-1).double().numpy()
    if not np.all(np.isfinite(predictions)):
        raise RuntimeError(
            f"{spec['task']} fold {spec['fold']}: {int((~np.isfinite(predictions)).sum())} non-finite "
            "predictions; training diverged (lower the learning rate)."
        )
    best_state = torch.load(best, map_location="cpu", weights_only=False, mmap=True)
    params = {
        "epochs_run": epochs,
        "max_epochs": max_epochs,
        "best_epoch": int(best_state.get("epoch", -1)) + 1,
        "best_val_" + monitor.split("/")[-1]: float(score) if score is not None else float("nan"),
        "n_train": len(datamodule.train_dataset),
        "n_val": len(datamodule.val_dataset),
        "n_test": len(ids),
        "train_seconds": round(train_seconds, 2),
        "sittings": int(sittings),
        "predict_seconds": round(t_predict, 2),
        "seconds_per_epoch": round(train_seconds / max(epochs, 1), 3),
        "torch_threads": int(torch.get_num_threads()),
        "seed": int(spec["config"]["seed"]) + int(spec["fold"]),
    }
    del best_state
    if spec.get("checkpoint_dir"):
        inner = f"_inner_{spec['member']}" if spec.get("member") is not None else ""
        kept = Path(spec["checkpoint_dir"]) / spec["task"] / f"fold_{spec['fold']}{inner}.ckpt"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, kept)
    params["fold_seconds_this_sitting"] = round(time.perf_counter() - t0, 2)
    return {
        "status": "done",
        "ids": ids,
        "predictions": predictions.tolist(),
        "params": params,
        "checkpoint": str(best),
    }


# ---------------------------------------------------------------------------------------------- several folds
def _tag(variant: str, task: str, fold: int, member: int | None = None, val_folds: int | None = None) -> str:
    inner = f" (inner {member + 1}/{val_folds})" if member is not None and val_folds else ""
    return f"[{variant}] {task} fold {fold}{inner}: "


def _spec_tag(spec: dict[str, Any]) -> str:
    return _tag(spec["variant"], spec["task"], spec["fold"], spec.get("member"), spec.get("val_folds"))


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_folds(specs: list[dict[str, Any]], jobs: int) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, str]]:
    """Train the folds of ``specs``, ``jobs`` at a time; yields ``(spec, result, error)`` as folds end.

    ``jobs == 1``: in this process, one after the other (an exception propagates). ``jobs > 1``: each fold in a
    subprocess (this script with ``--fold-worker``, ``spec["threads"]`` threads); its output is relayed line by
    line with the fold's tag; a failed fold gives ``result=None`` and the reason, and the others go on. A fold is
    not started once ``spec["deadline"]`` has passed.
    """
    if jobs <= 1:
        for spec in specs:
            if spec.get("deadline") is not None and _clock() >= spec["deadline"]:
                yield spec, {"status": "not started", "reason": "--max-time reached"}, ""
                continue
            yield spec, train_fold(spec, prefix=_spec_tag(spec)), ""
        return
    pending = list(specs)
    running: dict[int, tuple[dict[str, Any], subprocess.Popen, Path]] = {}
    finished: queue.Queue = queue.Queue()
    print_lock = threading.Lock()

    def relay(key: int, proc: subprocess.Popen, tag: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with print_lock:
                print(tag + line.rstrip("\n"), flush=True)
        finished.put((key, proc.wait()))

    try:
        key = 0
        while pending or running:
            while pending and len(running) < jobs:
                spec = pending.pop(0)
                if spec.get("deadline") is not None and _clock() >= spec["deadline"]:
                    yield spec, {"status": "not started", "reason": "--max-time reached"}, ""
                    continue
                run_dir = Path(spec["run_dir"])
                run_dir.mkdir(parents=True, exist_ok=True)
                spec_path, result_path = run_dir / "worker_spec.json", run_dir / "worker_result.json"
                result_path.unlink(missing_ok=True)
                spec_path.write_text(json.dumps({**spec, "result_path": str(result_path), "parent_pid": os.getpid()}))
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--fold-worker", str(spec_path)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    env=_worker_env(int(spec.get("threads") or 1)),
                )
                running[key] = (spec, proc, result_path)
                threading.Thread(target=relay, args=(key, proc, _spec_tag(spec)), daemon=True).start()
                key += 1
            if not running:
                continue
            done, rc = finished.get()
            spec, proc, result_path = running.pop(done)
            if rc == 0 and result_path.is_file():
                yield spec, json.loads(result_path.read_text()), ""
            else:
                how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
                yield spec, None, how
    finally:
        for _spec, proc, _ in running.values():  # this process is stopping: stop the folds it started
            if proc.poll() is None:
                proc.terminate()
        for _spec, proc, _ in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _die_with_parent(parent_pid: int) -> None:
    """A fold worker ends when the runner that started it ends (Linux: ``PR_SET_PDEATHSIG``)."""
    import signal

    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_main(spec_path: Path) -> int:
    """``--fold-worker <spec.json>``: train one fold (:func:`train_fold`), write the result JSON, exit 0."""
    spec = json.loads(Path(spec_path).read_text())
    _die_with_parent(int(spec["parent_pid"]))
    _quiet()
    result = train_fold(spec)
    from sagnn_lightning.files import atomic_write

    with atomic_write(Path(spec["result_path"]), "w") as fh:
        fh.write(json.dumps(result))
    return 0


def classification_extras(truth: Sequence[bool], probabilities: np.ndarray) -> dict[str, float]:
    """Scores stored beside matbench's for a classification fold.

    matbench's ``score_array`` turns float predictions into 0/1 labels for ``accuracy`` and then scores
    ``rocauc`` on those labels, so its ``rocauc`` equals the balanced accuracy. Returns
    ``{"rocauc_from_probabilities": ROC-AUC of the probabilities [n] against the 0/1 truth [n]}``.
    """
    from sklearn.metrics import roc_auc_score

    return {
        "rocauc_from_probabilities": float(
            roc_auc_score(np.asarray(truth, dtype=bool), np.asarray(probabilities, dtype=float))
        )
    }


# ---------------------------------------------------------------------------------------------- data
def matbench_frame(datamodule: Any, meta: Any, task_name: str) -> Any:
    """The task's frame for matbench's fold API and scoring: index = matbench ids, ``[structure, <target>]``, with
    the ids and targets the DataModule read (structures are not needed: the graphs are in the graph cache)."""
    import pandas as pd

    from sagnn_lightning.data.matbench_format import matbench_ids

    table = datamodule.table
    n = int(meta.n_samples)
    expected = set(matbench_ids(task_name, range(n), n))
    if set(table.ids) != expected:
        raise ValueError(
            f"{table.source}: {len(table.ids)} usable rows, but {task_name} has {n}; the runner needs the "
            "whole task (every fold's test rows). Give the full matbench file (--data-home)."
        )
    targets = table.targets[:, 0]
    if meta.task_type == "classification":
        targets = targets.astype(bool)
    return pd.DataFrame({meta.input_type: [None] * n, meta.target: targets}, index=pd.Index(list(table.ids)))


def prepare_task_data(cli: Any) -> tuple[Any, bool, float]:
    """Build (or read) the task's graph cache through the DataModule; returns ``(graphs, built now?, seconds)``."""
    datamodule = cli.datamodule
    t0 = time.perf_counter()
    cache = Path(datamodule.cache_dir)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("*.graphs")} if cache.is_dir() else {}
    datamodule.prepare_data()
    graphs = datamodule.graph_dataset()
    path = Path(graphs.path)
    built = before.get(path.name) != (path.stat().st_ino, path.stat().st_mtime_ns)
    return graphs, built, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- files
def _atomic_write(path: Path, write) -> None:
    """``write(name)`` writes the file by name; it then replaces ``path`` atomically with the right mode
    (:func:`sagnn_lightning.files.atomic_write`: the umask for a new file, the old mode for a replaced one)."""
    from sagnn_lightning.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        write(fh.name)


def load_results(path: Path, tasks: Sequence[str]) -> Any:
    """A ``MatbenchBenchmark`` holding ``tasks`` plus whatever ``path`` already recorded.

    A complete file is read with ``MatbenchBenchmark.from_file`` (which validates every task). matbench
    refuses to load a file with unrecorded folds (``MatbenchTask.from_dict`` validates, and validation
    needs all folds), so a partial file is read the way ``from_dict`` does — same hash check — and its
    per-fold results are put back without the all-folds validation.
    """
    from matbench.bench import MatbenchBenchmark
    from matbench.util import RecursiveDotDict, hash_dictionary

    if not path.is_file():
        return MatbenchBenchmark(autoload=False, subset=list(tasks))
    try:
        mb = MatbenchBenchmark.from_file(str(path))
    except ValueError as err:
        if "not recorded" not in str(err):
            raise
        d = json.loads(path.read_text())
        stored = d.pop("hash", None)
        if stored != hash_dictionary(d):
            raise ValueError(
                f"{path}: hash mismatch, the file was modified after matbench wrote it; delete it to start over."
            ) from err
        mb = MatbenchBenchmark(autoload=False, subset=list(d["tasks"]))
        for name, task_dict in d["tasks"].items():
            mb.tasks_map[name].results = RecursiveDotDict(task_dict["results"])
        mb.user_metadata = d["user_metadata"]
    missing = [t for t in tasks if t not in mb.tasks_map]
    if missing:
        from matbench.task import MatbenchTask

        for name in missing:
            mb.tasks_map[name] = MatbenchTask(name, autoload=False, benchmark=mb.benchmark_name)
    return mb


def requirements() -> dict[str, list[str]]:
    """Exact versions of what produced the results (``info.json``'s ``requirements``)."""
    pkgs = [
        "torch",
        "pytorch-lightning",
        "torch_geometric",
        "torchmetrics",
        "pymatgen",
        "matminer",
        "matbench",
        "scikit-learn",
        "numpy",
        "pandas",
        "sagnn-lightning",
    ]
    out = [f"python=={platform.python_version()}"]
    for name in pkgs:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == "sagnn-lightning":
                import sagnn_lightning

                out.append(f"sagnn-lightning=={sagnn_lightning.__version__} (source checkout)")
    return {"python": out}


def machine(threads: int | None, jobs: int) -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "jobs": jobs,
        "accelerator": accelerator(),
    }


def accelerator() -> str:
    """``"cpu"``, or ``"cuda: <GPU name> x<count>"`` when CUDA is visible (the recipes' trainer picks it then)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"


def _class_name(spec: Any) -> str:
    return str((spec or {}).get("class_path", "none")).rsplit(".", 1)[-1] if isinstance(spec, dict) else "none"


def _structure_model_text(model: dict[str, Any]) -> str:
    attention = {
        "last": f"{model.get('heads')}-head self-attention over the atoms of each crystal after the last MEGNet block",
        "each": f"{model.get('heads')}-head self-attention after every block",
        "none": "no self-attention (the paper's w/o-MHSA ablation, i.e. MEGNet)",
    }[model["attention"]]
    return (
        f"MEGNet graph network (Chen et al. 2019: "
        f"atom embedding {model['atom_embedding_dim']}, {model['num_gaussians']} Gaussians on 0-{model['cutoff']} "
        f"A width {model['gaussian_width']}, {model['num_blocks']} MEGNet blocks of width {model['hidden_dim']}, "
        f"Set2Set readout on atoms and bonds) with {attention} (SA-GNN, Cui et al. 2024). Periodic crystal graphs "
        f"with a {model['cutoff']} A cutoff."
    )


def _composition_model_text(model: dict[str, Any]) -> str:
    attention = {
        "last": f"{model.get('heads')}-head self-attention over the elements after the last block",
        "each": f"{model.get('heads')}-head self-attention after every block",
        "none": "no self-attention (the w/o-MHSA ablation)",
    }[model["attention"]]
    return (
        f"Composition SA-GNN for the composition tasks: element nodes ({model.get('element_features')} element "
        f"features + fraction), {model.get('num_blocks')} fraction-weighted message-passing blocks of width "
        f"{model.get('hidden_dim')} (Roost, Goodall & Lee 2020) and {attention}, each element's fraction entering "
        "every softmax as a weight (log-fraction key bias), then a fraction-weighted attention readout."
    )


def info_json(variant: str, configs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """matbench's submission ``info.json`` (keys checked by matbench's ``scripts/test_submission.py``)."""
    any_cfg = next(iter(configs.values()))
    training = any_cfg["training"]
    descriptions: list[str] = []
    for cfg in configs.values():  # one text per model class in the submission (crystal and/or composition)
        composition = str(cfg["training"].get("model_class", "")).endswith("CompositionSAGNN")
        text = (_composition_model_text if composition else _structure_model_text)(cfg["model"])
        if text not in descriptions:
            descriptions.append(text)
    budget = ", ".join(f"{name}: {c['max_epochs']} epochs" for name, c in sorted(configs.items()))
    optimizer = training.get("optimizer") or {}

    def _lr(cfg: dict[str, Any]) -> Any:
        opt = cfg["training"].get("optimizer") or {}
        return (opt.get("init_args") or {}).get("lr") if isinstance(opt, dict) else None

    rates = {name: _lr(cfg) for name, cfg in sorted(configs.items())}
    lr = (
        next(iter(rates.values()))
        if len(set(map(str, rates.values()))) == 1
        else ", ".join(f"{name} {rate}" for name, rate in rates.items())
    )
    return {
        "authors": "sagnn-lightning contributors",
        "algorithm": ALGORITHM_NAMES[variant],
        "algorithm_long": (
            f"{ALGORITHM_NAMES[variant]} (sagnn-lightning {_pkg_version()}): {' '.join(descriptions)} "
            f"Trained with {str(training.get('loss', 'l1')).upper()} loss on "
            f"standardised targets (BCE for classification), {_class_name(optimizer)} (lr {lr}), scheduler "
            f"{_class_name(training.get('scheduler'))}; the checkpoint with the best validation "
            f"{str((training.get('checkpoint') or {}).get('monitor', 'auto'))} metric (validation = "
            f"{training['val_fraction']:.0%} of each fold's training rows) predicts the test fold. "
            f"Fixed hyper-parameters (recipes/configs); training budget per fold: {budget}."
        ),
        "bibtex_refs": BIBTEX_REFS,
        "notes": (
            "Fixed hyper-parameters chosen in advance; no tuning on test data. Trained by the recipes' pipeline "
            "(sagnn_lightning.cli); see user_metadata in results.json.gz for the configuration, per-fold times and "
            f"machine. Summary: {json.dumps(summary, sort_keys=True)}. "
            "For classification, matbench's stored 'rocauc' is computed from rounded predictions (= balanced "
            "accuracy); the true ROC-AUC from probabilities is in each fold's parameters."
        ),
        "requirements": requirements(),
    }


def _pkg_version() -> str:
    import sagnn_lightning

    return sagnn_lightning.__version__


def summarize(mb: Any) -> dict[str, Any]:
    """Per task: matbench's per-fold MAE (or ROC-AUC) and times, and mean ± std over recorded folds."""
    out: dict[str, Any] = {}
    for name, task in mb.tasks_map.items():
        key = "mae" if task.metadata.task_type == "regression" else "rocauc"
        folds = {}
        for k, fkey in task.folds_map.items():
            if task.is_recorded[k]:
                res = task.results[fkey]
                params = dict(res["parameters"])
                folds[fkey] = {
                    key: float(res["scores"][key]),
                    "train_seconds": params.get("train_seconds"),
                    "epochs_run": params.get("epochs_run"),
                    "best_epoch": params.get("best_epoch"),
                }
                if "rocauc_from_probabilities" in params:
                    folds[fkey]["rocauc_from_probabilities"] = params["rocauc_from_probabilities"]
        values = [f[key] for f in folds.values()]
        out[name] = {
            "metric": key,
            "folds": folds,
            "n_folds": len(values),
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
        }
    return out


def save(mb: Any, out: Path, variant: str, configs: dict[str, dict[str, Any]], machine_info: dict[str, Any]) -> None:
    """Metadata + atomic writes of ``results.json.gz`` (matbench's ``to_file``) and ``info.json``."""
    summary = summarize(mb)
    mb.user_metadata = {}  # rebuilt whole from the recorded folds (avoids matbench's "overwriting" warning)
    mb.add_metadata(
        {
            "algorithm": ALGORITHM_NAMES[variant],
            "variant": variant,
            "configs": json.loads(json.dumps(configs)),
            "machine": machine_info,
            "summary": json.loads(json.dumps(summary)),
        }
    )
    _atomic_write(out / RESULTS_FILE, lambda tmp: mb.to_file(tmp))
    info = info_json(
        variant, configs, {t: {"mean": s["mean"], "std": s["std"], "n_folds": s["n_folds"]} for t, s in summary.items()}
    )
    _atomic_write(out / INFO_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))


# ---------------------------------------------------------------------------------------------- main
def fold_spec(
    task: str,
    fold: int,
    *,
    variant: str,
    max_epochs: int | None,
    seed: int,
    work_dir: Path,
    config_dir: Path,
    data_home: Path | None,
    cache_dir: Path | None,
    graph_workers: int,
    model_overrides: dict[str, Any] | None,
    cli_args: Sequence[str],
    threads: int | None,
    deadline: float | None,
    checkpoint_dir: Path | None,
    val_folds: int | None = None,
    member: int | None = None,
) -> dict[str, Any]:
    """Everything a fold (or, with ``val_folds``, one inner-fold member of it) needs, as JSON-ready values (also
    what a ``--fold-worker`` process reads)."""
    run_dir = (Path(work_dir) / task / f"fold_{fold}").resolve()
    if val_folds is not None:
        run_dir = run_dir / f"inner_{member}"
    return {
        "task": task,
        "fold": int(fold),
        "variant": variant,
        "run_dir": str(run_dir),
        "val_folds": val_folds,
        "member": member,
        "configs": [str(c) for c in recipe_configs(task, config_dir)],
        "cli_args": fold_cli_args(
            task,
            fold,
            run_dir,
            variant=variant,
            max_epochs=max_epochs,
            seed=seed,
            data_home=data_home,
            cache_dir=cache_dir,
            graph_workers=graph_workers,
            model_overrides=model_overrides,
            cli_args=cli_args,
            val_folds=val_folds,
            member=member,
        ),
        "user_cli_args": list(cli_args),
        "threads": threads,
        "deadline": deadline,
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
    }


def run(
    tasks: Sequence[str],
    folds: Sequence[int],
    variant: str,
    max_epochs: int | None,
    out: Path,
    data_home: Path | None = None,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    threads: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    graph_workers: int = 0,
    checkpoint_dir: Path | None = None,
    work_dir: Path | None = None,
    jobs: int = 1,
    max_time: float | None = None,
    cli_args: Sequence[str] = (),
    val_folds: int | None = None,
) -> tuple[Any, dict[str, int]]:
    """Train/predict/record the requested folds (skipping recorded ones); returns ``(MatbenchBenchmark,
    {"failed": n, "stopped": n})``: folds that failed (``jobs > 1``) or were stopped / not started by ``max_time``.

    Each fold trains in ``<work_dir>/<task>/fold_<k>/`` (default ``<out>/work``), resuming from its ``last.ckpt``.
    ``max_time`` (seconds) is this run's budget: training stops when it is spent (the fold is not recorded; a
    rerun continues it) and no fold starts after it. ``jobs`` folds train at once (subprocesses, ``threads``
    threads each, default 1); ``jobs=1`` trains in this process (``threads``: default torch's). With
    ``checkpoint_dir``, the checkpoint that predicted each fold is also copied to
    ``<checkpoint_dir>/<task>/fold_<k>.ckpt``. ``cli_args``: more options for the recipes' CLI (``--config``
    files, ``--model.*``, ...), before those the runner's flags set. ``val_folds``: K inner-fold members per
    fold (``<run dir>/inner_<j>``), recorded as the mean of their test predictions once all K are done.
    """
    import torch

    from sagnn_lightning.data.matbench import get_task

    start = _clock()
    deadline = start + max_time if max_time is not None else None
    if jobs > 1:
        threads = threads or 1
    elif threads:
        torch.set_num_threads(int(threads))
    tasks = [get_task(t).name for t in tasks]
    out = Path(out)
    work_dir = Path(work_dir) if work_dir is not None else out / "work"
    mb = load_results(out / RESULTS_FILE, tasks)
    configs = dict(mb.user_metadata.get("configs", {})) if mb.user_metadata else {}
    machine_info = machine(threads, jobs)
    specs: list[dict[str, Any]] = []
    for name in tasks:
        task = mb.tasks_map[name]
        for f in folds:
            if task.is_recorded[f]:
                print(f"[{variant}] {name} fold {f}: already recorded in {out / RESULTS_FILE}, skipped", flush=True)
        todo = [f for f in folds if not task.is_recorded[f]]
        if not todo:
            continue
        members = range(val_folds) if val_folds is not None else [None]
        task_specs = [
            fold_spec(
                name,
                f,
                variant=variant,
                max_epochs=max_epochs,
                seed=seed,
                work_dir=work_dir,
                config_dir=config_dir,
                data_home=data_home,
                cache_dir=cache_dir,
                graph_workers=graph_workers,
                model_overrides=model_overrides,
                cli_args=cli_args,
                threads=threads,
                deadline=deadline,
                checkpoint_dir=checkpoint_dir,
                val_folds=val_folds,
                member=j,
            )
            for f in todo
            for j in members
        ]
        cli = build_cli(task_specs[0])  # the objects of the first fold: configuration, rows and graphs
        config = config_summary(cli, task_specs[0])
        recorded = [k for k, v in task.is_recorded.items() if v]
        if recorded and name in configs and _difference(configs[name], config):
            raise ValueError(
                f"{out / RESULTS_FILE} holds {name} folds {recorded} recorded with another "
                f"configuration (stored vs requested: {_difference(configs[name], config)}); rerun with "
                "the stored settings, use another --out, or delete the file to start over."
            )
        configs[name] = config
        graphs, built, seconds = prepare_task_data(cli)
        how = "graphs built into" if built else "graphs read from"
        print(
            f"[{variant}] {name}: {len(graphs)} {'formulas' if get_task(name).input_type == 'composition' else 'crystals'}"
            f" loaded in {seconds:.1f} s ({how} the graph cache "
            f"{graphs.path})",
            flush=True,
        )
        task.df = matbench_frame(cli.datamodule, task.metadata, name)
        del cli, graphs
        for spec in task_specs:
            spec["config"] = config
            check_fold_dir(Path(spec["run_dir"]), config)  # before any fold starts: refused here, not in a worker
        specs += task_specs

    failed = stopped = 0
    finished_members: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for spec, result, error in run_folds(specs, jobs):
        name, fold, tag = spec["task"], spec["fold"], _spec_tag(spec)
        if result is None:
            failed += 1
            print(
                f"{tag}failed ({error}); not recorded. Run the same command again to continue it from "
                f"{Path(spec['run_dir']) / 'checkpoints' / 'last.ckpt'}",
                flush=True,
            )
            continue
        if result["status"] != "done":
            stopped += 1
            where = (
                f"stopped in epoch {result['epoch']} of {result['max_epochs']} (step {result['global_step']})"
                if result["status"] == "stopped"
                else "not started"
            )
            print(
                f"{tag}{where}: {result['reason']}; not recorded. Run the same command again to continue.", flush=True
            )
            continue
        task = mb.tasks_map[name]
        meta = task.metadata
        test_ids = list(task.validation[task.folds_map[fold]].test)
        if result["ids"] != test_ids:
            raise RuntimeError(
                f"{name} fold {fold}: predicted ids differ from matbench's test ids "
                f"({len(result['ids'])} vs {len(test_ids)}); refusing to record misaligned predictions."
            )
        predictions = np.asarray(result["predictions"], dtype=float)
        params = dict(result["params"])
        if val_folds is not None:
            done = finished_members.setdefault((name, fold), {})
            done[spec["member"]] = result
            truth = np.asarray(task.get_test_data(fold, as_type="tuple", include_target=True)[1], dtype=float)
            if meta.task_type == "regression":  # scoring only, as matbench does for the fold
                print(f"{tag}member test MAE {np.mean(np.abs(predictions - truth)):.4g} {meta.unit}", flush=True)
            if len(done) < val_folds:
                continue
            predictions, params = ensemble_of_members([done[j] for j in range(val_folds)], truth, meta.task_type)
            tag = _tag(variant, name, fold)
        if meta.task_type == "classification":
            truth = task.get_test_data(fold, as_type="tuple", include_target=True)[1]  # scoring only
            params.update(classification_extras(truth, predictions))
        task.record(fold, predictions, params=params)
        save(mb, out, variant, configs, machine_info)
        scores = task.results[task.folds_map[fold]]["scores"]
        shown = (
            f"MAE {scores['mae']:.4g} {meta.unit}"
            if meta.task_type == "regression"
            else f"rocauc(matbench, rounded) {scores['rocauc']:.4f}, "
            f"rocauc(probabilities) {params['rocauc_from_probabilities']:.4f}"
        )
        print(
            f"{tag}{shown}; {params['epochs_run']} epochs (best {params['best_epoch']}), train "
            f"{params['train_seconds']:.0f} s in {params['sittings']} sitting(s) -> {out / RESULTS_FILE}",
            flush=True,
        )
    for task in mb.tasks_map.values():
        task.df = None
    return mb, {"failed": failed, "stopped": stopped}


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


def _parse_overrides(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-overrides must be a JSON object, e.g. '{\"hidden_dim\": 16}'")
    return value


def _ignore_expected_warnings() -> None:
    """Warnings a runner user can do nothing about: the CLI's list of upstream ones (for the ``fit``/``predict``
    calls made here), single-process data loading, and the non-empty checkpoint folder of a resumed fold."""
    from sagnn_lightning.cli import _UPSTREAM_WARNINGS

    for message, category in _UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def _quiet() -> None:
    import matbench.bench  # noqa: F401  (its import installs an INFO stdout handler: quiet it afterwards)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "matbench"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _ignore_expected_warnings()
    warnings.filterwarnings("ignore", message=".*`max_epochs=\\d+` reached.*")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--fold-worker"] and len(argv) == 2:
        return worker_main(Path(argv[1]))
    cli_args: list[str] = []
    if "--" in argv:
        cli_args = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [options] [-- <recipe CLI options: --config my.yaml --model.* --trainer.* ...>]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["matbench_jdft2d", "matbench_phonons"],
        help="matbench tasks, structure or composition (the matbench_ prefix may be left out)",
    )
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], choices=range(5))
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="sagnn",
        help="sagnn: 8-head MHSA after the last block; no_mhsa: the w/o-MHSA ablation",
    )
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="training budget per fold (epochs; default: the recipes' 300)"
    )
    parser.add_argument(
        "--max-time",
        type=parse_max_time,
        default=None,
        metavar="DD:HH:MM:SS",
        help="wall-clock budget of this run: training stops when it is spent (mid-epoch included) "
        "and no fold starts after it; unfinished folds are not recorded and continue from "
        "their last checkpoint when the command is run again",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="folds trained at once, each in its own process with --threads threads (default 1 fold, in this process)",
    )
    parser.add_argument(
        "--data-home",
        type=Path,
        default=None,
        help="folder with <task>.json.gz in matbench layout (default $MATMINER_DATA if it holds "
        "the file, else download through matminer)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="submission folder for results.json.gz + info.json (default: results/<variant>/ beside this script)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder of the folds' run dirs <work dir>/<task>/fold_<k>/ (checkpoints, history; default <out>/work)",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help="folder with sagnn.yaml / composition.yaml and <task>.yaml (the recipes' configuration)",
    )
    parser.add_argument(
        "--model-overrides",
        type=_parse_overrides,
        default=None,
        help="JSON object of SAGNN arguments overriding the config (e.g. tiny test models)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per fold (default: torch's with --jobs 1, else 1)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="graph cache folder (default $SAGNN_CACHE_DIR, else the user cache dir, e.g. "
        "~/.cache/sagnn_lightning/graphs); graphs are built once per task and cutoff",
    )
    parser.add_argument(
        "--graph-workers",
        type=int,
        default=0,
        help="processes building graphs on a cache miss (default 0: this process)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="also copy the checkpoint that predicted each fold to <dir>/<task>/fold_<k>.ckpt "
        "(fold_<k>_inner_<j>.ckpt with --val-folds)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-folds",
        type=int,
        default=None,
        metavar="K",
        help="select on K inner folds instead of one validation carve: K members per fold, each "
        "validating on one inner fold; the fold records the mean of their test predictions",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.val_folds is not None and args.val_folds < 2:
        parser.error(f"--val-folds must be >= 2, got {args.val_folds}")

    out = args.out or HERE / "results" / args.variant
    _quiet()
    mb, left_over = run(
        args.tasks,
        args.folds,
        args.variant,
        args.max_epochs,
        out,
        args.data_home,
        args.config_dir,
        args.threads,
        args.model_overrides,
        args.seed,
        args.cache_dir,
        args.graph_workers,
        args.checkpoint_dir,
        args.work_dir,
        args.jobs,
        args.max_time,
        cli_args,
        args.val_folds,
    )
    for name, s in summarize(mb).items():
        if s["n_folds"]:
            print(
                f"[{args.variant}] {name}: {s['metric']} {s['mean']:.4g} ± {s['std']:.3g} over {s['n_folds']} folds",
                flush=True,
            )
    left = left_over["failed"] + left_over["stopped"]
    if left:
        print(
            f"[{args.variant}] {left} requested fold(s) not recorded yet; run the same command again to continue",
            flush=True,
        )
    return 1 if left_over["failed"] else EXIT_UNFINISHED if left else 0


if __name__ == "__main__":
    sys.exit(main())
