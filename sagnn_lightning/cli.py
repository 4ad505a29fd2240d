"""The LightningCLI shared by every recipe: ``fit``, ``validate``, ``test``, ``predict``.

``cli_main(args)`` builds :class:`SAGNNLightningCLI` around :class:`~sagnn_lightning.lit.SAGNNModule`
and any ``LightningDataModule`` (``data: {class_path: ..., init_args: ...}`` in YAML; the recipes give
defaults). What it adds to ``LightningCLI``:

* links, applied when the DataModule has been built: ``data.task_type → model.task_type``,
  ``data.num_targets → model.model.num_targets``, ``data.target_mean/target_std/target_names →
  model.*``, ``data.cutoff → model.model.cutoff`` (the Gaussian basis spans the neighbour cutoff);
* the run directory ``trainer.default_root_dir`` (default ``runs/<name>``, ``name`` = the recipe):
  checkpoints in ``<run dir>/checkpoints`` (``best-*.ckpt`` by the task metric + ``last.ckpt``; the
  ``checkpoint.*`` options), ``config.yaml``, parity plots, and the W&B files in ``<run dir>/wandb``;
* W&B as the default logger, offline without an API key (:mod:`sagnn_lightning.lit.wandb`);
  ``--trainer.logger=false`` disables it. The full config is logged to it;
* callbacks: parity plot, throughput, summary line, and for ``predict`` a CSV writer
  (``--predictions.output``, default ``<run dir>/predictions.csv``) (:mod:`sagnn_lightning.lit.callbacks`);
* ``seed_everything`` defaults to 0 (reproducible); a missing subcommand means ``fit``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytorch_lightning as pl
import yaml
from jsonargparse import Namespace, lazy_instance
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from sagnn_lightning.lit.callbacks import (
    BestAndLastCheckpoint,
    ParityPlot,
    PredictionsCSV,
    RunSummary,
    Throughput,
    wandb_run_dir,
)
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.wandb import WandbLogger

SUBCOMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")
DEFAULT_RUNS_ROOT = "runs"


def _datamodule_cutoff(datamodule: Any) -> float:
    """Neighbour cutoff (Å) of a graph DataModule (``settings.cutoff``), default 5.0."""
    settings = getattr(datamodule, "settings", None)
    return float(getattr(settings, "cutoff", getattr(datamodule, "cutoff", 5.0)))


class SaveAndLogConfig(SaveConfigCallback):
    """Writes ``config.yaml`` into the run dir (overwriting on resume) and logs the full config to the loggers."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.loggers:
            return
        flat = yaml.safe_load(self.parser.dump(self.config, skip_none=False, format="yaml"))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": flat})


class SAGNNLightningCLI(LightningCLI):
    """LightningCLI for SA-GNN recipes (see module docstring).

    Args:
        name: recipe name, used for the default run directory ``runs/<name>``.
        args: command line (``None`` = ``sys.argv[1:]``).
        run: run the subcommand (``False``: only build the objects).
    """

    def __init__(self, name: str = "sagnn", args: Sequence[str] | None = None, run: bool = True,
                 **kwargs: Any) -> None:
        self.recipe_name = name
        trainer_defaults = {
            "default_root_dir": str(Path(DEFAULT_RUNS_ROOT) / name),
            "logger": lazy_instance(WandbLogger),
            "log_every_n_steps": 10,
            **kwargs.pop("trainer_defaults", {}),
        }
        super().__init__(
            SAGNNModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            save_config_callback=SaveAndLogConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            seed_everything_default=kwargs.pop("seed_everything_default", 0),
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model.model": {"class_path": "sagnn_lightning.models.sagnn.SAGNN"}})
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ParityPlot, "parity")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(PredictionsCSV, "predictions")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                              compute_fn=lambda root: str(Path(root or ".") / "checkpoints"))
        for source, target in (
            ("data.task_type", "model.task_type"),
            ("data.target_mean", "model.target_mean"),
            ("data.target_std", "model.target_std"),
            ("data.target_names", "model.target_names"),
            ("data.num_targets", "model.model.init_args.num_targets"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.link_arguments("data", "model.model.init_args.cutoff", compute_fn=_datamodule_cutoff,
                              apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        logger = config.trainer.logger
        loggers = logger if isinstance(logger, list) else [logger]
        for item in loggers:
            if isinstance(item, Namespace) and "WandbLogger" in str(item.get("class_path", "")):
                init = item.get("init_args")
                if init is None:
                    item["init_args"] = init = Namespace()
                if init.get("save_dir") in (None, "."):
                    init["save_dir"] = str(root)
                if root:
                    Path(root).mkdir(parents=True, exist_ok=True)


def _needs_fit(argv: Sequence[str]) -> bool:
    return not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help", "--version")


def build_argv(args: Sequence[str] | None, configs: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The command line actually parsed: ``fit`` when no subcommand is given, then ``--config <c>`` for
    each of the recipe's ``configs`` (so that the user's ``--config`` files and overrides come after)."""
    argv = list(sys.argv[1:] if args is None else args)
    if _needs_fit(argv):
        argv = ["fit", *argv]
    if argv[0] in SUBCOMMANDS:
        extra = [item for c in configs for item in ("--config", str(c))]
        argv = [argv[0], *extra, *argv[1:]]
    return argv


#: warnings raised inside Lightning/torch that a user can do nothing about (checked for the pinned ranges)
_UPSTREAM_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6 builds torch pytree ``LeafSpec`` objects, deprecated in torch 2.10+
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # we pass the (augmented) command line as ``args`` on purpose
    (r"LightningCLI's args parameter is intended to run from within Python", UserWarning),
    # Lightning 2.6's LightningCLI calls jsonargparse APIs deprecated in jsonargparse 4.49
    (r"[\s\S]*was deprecated in v4\.\d+", DeprecationWarning),
    (r"[\s\S]*By default only one JsonargparseDeprecationWarning", DeprecationWarning),
)


def _finish_wandb(cli: LightningCLI) -> None:
    trainer = getattr(cli, "trainer", None)
    if trainer is None or trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


def cli_main(args: Sequence[str] | None = None, *, name: str = "sagnn",
             configs: Iterable[str | os.PathLike] = (), run: bool = True) -> SAGNNLightningCLI:
    """Run the CLI (``args`` like ``["fit", "--config", "x.yaml"]``; default ``sys.argv[1:]``).

    ``configs`` are YAML files read before everything in ``args`` (a recipe's defaults). With no
    subcommand, ``fit`` is run. Returns the CLI object (``.model``, ``.datamodule``, ``.trainer``).
    """
    argv = build_argv(args, configs)
    with warnings.catch_warnings():
        for message, category in _UPSTREAM_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        cli = SAGNNLightningCLI(name=name, args=argv, run=run)
        if run:
            _finish_wandb(cli)
    return cli


def recipe_main(name: str, configs: Iterable[str | os.PathLike], args: Sequence[str] | None = None) -> SAGNNLightningCLI:
    """Entry point of a recipe script: the ``configs`` (the task's YAMLs, in order) are read first, then
    ``--config`` files and overrides from ``args`` (default ``sys.argv[1:]``)."""
    return cli_main(args, name=name, configs=list(configs))


__all__ = ["SAGNNLightningCLI", "cli_main", "recipe_main", "wandb_run_dir"]
