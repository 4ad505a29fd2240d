"""One fold of the leaderboard runner (``run.py``): its recipe CLI options, its run dir, the configuration it must
keep when it is resumed or recorded beside other folds, and its training.

* :func:`fold_spec`: everything a fold (or one inner-fold member of it) needs, as JSON-ready values (also what a
  ``--fold-worker`` process reads);
* :func:`fold_cli_args` / :func:`recipe_configs` / :func:`build_cli`: the fold's objects, built by the recipes' CLI;
* :func:`callback_args`: the runner's callbacks, given to the CLI as ``--trainer.callbacks+=...`` options;
* :func:`config_summary` / :func:`comparable` / :func:`check_fold_dir`: the configuration recorded in the
  submission and in each fold dir (``runner_config.json``), and the refusal to mix two;
* :func:`train_fold`: training (resumed from ``last.ckpt``) and the prediction of the fold's test rows.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sagnn_lightning.errors import flag_parameter

#: the recipes' YAML files (``--config-dir``)
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "configs"
FOLD_CONFIG_FILE = "runner_config.json"

#: the runner's defaults for every fold, before the user's options (which may override them)
RUNNER_DEFAULTS = ("--trainer.logger=false", "--data.init_args.num_workers=0", "--data.init_args.progress=false")

#: the two variants of issue 7: SA-GNN (8 heads, MHSA after the last block) and the w/o-MHSA ablation
VARIANTS: dict[str, dict[str, Any]] = {
    "sagnn": {"attention": "last", "heads": 8},
    "no_mhsa": {"attention": "none"},
}


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
        *RUNNER_DEFAULTS,
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


def fixed_option_conflicts(
    cli_args: Sequence[str],
    *,
    variant: str,
    model_overrides: dict[str, Any] | None,
    max_epochs: int | None,
    val_folds: int | None,
    data_home: Path | None,
    cache_dir: Path | None,
) -> list[str]:
    """One message per recipe option after ``--`` that :func:`fold_cli_args` would override with the runner's own
    (variant, ``--model-overrides``, ``--max-epochs``, fold, seeds, run dir, data location), so that no option a
    user typed is dropped silently. Each names the option and the runner flag to use instead."""
    model = {**VARIANTS.get(variant, {}), **(model_overrides or {})}
    hints = {
        f"model.model.{k}": f"the runner sets {k}={v!r} (--variant {variant}, --model-overrides); "
        f"use --model-overrides '{{\"{k}\": ...}}' instead"
        for k, v in model.items()
    }
    hints |= {
        "data.task": "the runner sets the task (--tasks)",
        "data.fold": "the runner sets the fold (--folds)",
        "data.split_seed": "the runner sets the carve seed (--seed)",
        "seed_everything": "the runner sets the weights' seed (--seed + fold)",
        "trainer.default_root_dir": "the runner sets each fold's run dir (--work-dir)",
        "data.graph_workers": "the runner sets it (--graph-workers)",
        "trainer.max_epochs": "--max-epochs sets it",
        "data.val_folds": "--val-folds sets it",
        "data.val_fold": "--val-folds sets each member's",
        "data.data_home": "--data-home sets it",
        "data.cache_dir": "--cache-dir sets it",
    }
    # what the runner fixes is read off the options fold_cli_args appends after the user's (none here), so this
    # check cannot fall behind it
    fixed_args = fold_cli_args(
        "task",
        0,
        Path(),
        variant=variant,
        max_epochs=max_epochs,
        seed=0,
        data_home=data_home,
        cache_dir=cache_dir,
        model_overrides=model_overrides,
        val_folds=val_folds,
    )[len(RUNNER_DEFAULTS) :]
    fixed = {key: hints.get(key, "the runner sets it") for key in map(flag_parameter, fixed_args) if key}
    return [f"{arg}: {fixed[key]}" for arg in cli_args if (key := flag_parameter(arg)) in fixed]


def callback_args(prefix: str, deadline: float | None) -> list[str]:
    """The runner's callbacks, as CLI options appended after everything else (they add to the user's
    ``trainer.callbacks``): one progress line per epoch starting with ``prefix``, ``history.csv`` in the run dir
    (:class:`sagnn_lightning.lit.EpochHistory`) and, with a ``deadline`` (seconds since the epoch),
    :class:`sagnn_lightning.lit.Deadline`."""
    bar = {"class_path": "sagnn_lightning.lit.progress.EpochLineProgressBar", "init_args": {"prefix": prefix}}
    args = [
        "--trainer.enable_progress_bar=true",  # the runner's epoch lines, whatever the user's options
        f"--trainer.callbacks+={json.dumps(bar)}",
        "--trainer.callbacks+=sagnn_lightning.lit.EpochHistory",
    ]
    if deadline is not None:
        args += ["--trainer.callbacks+=sagnn_lightning.lit.Deadline", f"--trainer.callbacks.at={float(deadline)!r}"]
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


def build_cli(spec: dict[str, Any], extra_args: Sequence[str] = ()) -> Any:
    """The recipes' CLI with the fold's objects built (``run=False``): ``.model``, ``.datamodule``, ``.trainer``;
    ``extra_args`` follow the fold's own options (:func:`callback_args`)."""
    from sagnn_lightning.cli import cli_main

    args = [*spec["cli_args"], *extra_args]
    return cli_main(args, name=f"matbench_v0.1_{spec['task']}", configs=spec["configs"], run=False)


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
    if data.get("cutoff") is not None:  # the network's cutoff is linked from the DataModule's when it is built
        model["cutoff"] = data["cutoff"]
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
    if data.get("calibration_fraction"):
        training["calibration_fraction"] = data["calibration_fraction"]
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


def difference(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``{key: (old value, new value)}`` for each :func:`comparable` key that differs."""
    old, new = comparable(old), comparable(new)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_fold_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """A fold dir is continued only with the configuration it was started with (``runner_config.json``)."""
    path = run_dir / FOLD_CONFIG_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = difference(stored, config)
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


# ---------------------------------------------------------------------------------------------- training
def _last_checkpoint(run_dir: Path) -> Path | None:
    from sagnn_lightning.errors import SAGNNError
    from sagnn_lightning.lit.checkpoints import resolve_checkpoint

    if not (run_dir / "checkpoints").is_dir():
        return None
    try:
        return resolve_checkpoint("last", run_dir)
    except SAGNNError:
        return None


def _best_checkpoint(callback: Any, run_dir: Path) -> Path:
    """The best checkpoint recorded by the fold's ``last.ckpt`` (or, if the work dir was moved, the same name in
    this run dir's ``checkpoints``)."""
    from sagnn_lightning.lit.checkpoints import recorded_best_checkpoint

    folder = run_dir / "checkpoints"
    best = recorded_best_checkpoint(callback.last_model_path or folder / "last.ckpt", folder)
    if best is None:
        raise RuntimeError(f"{run_dir}: no best checkpoint recorded (best_model_path={callback.best_model_path!r})")
    return best


def ignore_expected_warnings() -> None:
    """Warnings a runner user can do nothing about, besides the CLI's (``quiet_upstream_warnings``):
    single-process data loading, and the non-empty checkpoint folder of a resumed fold."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def train_fold(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Train one fold through the recipes' CLI (resuming from the fold's ``last.ckpt``), then predict its test rows
    with the best checkpoint by validation; upstream warnings are silenced.

    ``spec``: ``task, fold, variant, configs, cli_args, user_cli_args, run_dir, config, threads, deadline,
    checkpoint_dir`` (:func:`fold_spec`). Returns ``{"status": "done", "ids", "predictions", "params",
    "checkpoint"}``, or ``{"status": "stopped", "epoch", "global_step", "max_epochs", "reason"}`` when ``--max-time``
    ended training (:class:`sagnn_lightning.lit.Deadline`): nothing is predicted then, and a rerun continues from
    ``last.ckpt``.
    """
    from sagnn_lightning.cli import quiet_upstream_warnings

    with quiet_upstream_warnings(), warnings.catch_warnings():
        ignore_expected_warnings()
        return _train_fold(spec, prefix)


def _train_fold(spec: dict[str, Any], prefix: str) -> dict[str, Any]:
    import torch

    from sagnn_lightning.lit import EpochHistory
    from sagnn_lightning.lit.deadline import DeadlineReached

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    run_dir = Path(spec["run_dir"])
    check_fold_dir(run_dir, spec["config"])
    last = _last_checkpoint(run_dir)
    t0 = time.perf_counter()
    cli = build_cli(spec, callback_args(prefix, spec.get("deadline")))
    trainer, module, datamodule = cli.trainer, cli.model, cli.datamodule
    history = next(c for c in trainer.callbacks if isinstance(c, EpochHistory))
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
        saved = f"; state saved at step {stop.step} in {stop.checkpoint}" if stop.checkpoint else " (nothing saved)"
        return {
            "status": "stopped",
            "epoch": int(trainer.current_epoch) + 1,
            "global_step": int(trainer.global_step),
            "max_epochs": int(trainer.max_epochs or 0),
            "reason": "--max-time reached" + saved,
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
    calibration = _predict_calibration(trainer, module, datamodule, best, key)
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
        **({"calibration": calibration} if calibration else {}),
    }


def _predict_calibration(trainer: Any, module: Any, datamodule: Any, best: Path, key: str) -> dict[str, Any] | None:
    """With ``--data.init_args.calibration_fraction``: the best checkpoint's predictions of the held-out
    calibration rows, with their targets (``{"ids", "predictions", "targets"}``), else ``None``."""
    if not getattr(datamodule, "calibration_fraction", 0.0):
        return None
    import torch

    outputs = trainer.predict(
        module, dataloaders=datamodule.calibration_dataloader(), ckpt_path=str(best), weights_only=False
    )
    ids = [str(i) for out in outputs for i in out["sample_id"]]
    predictions = torch.cat([out[key] for out in outputs]).reshape(-1).double().numpy()
    targets = datamodule.targets_of(ids)
    return {"ids": ids, "predictions": predictions.tolist(), "targets": targets.reshape(-1).tolist()}


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
