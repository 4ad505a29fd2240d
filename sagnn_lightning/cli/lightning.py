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
* ``seed_everything`` defaults to 0 (reproducible); a missing subcommand means ``fit``;
* options must be spelled out: argparse's prefix matching is off (``--trainer.max_epoch`` is an error, not
  ``--trainer.max_epochs``); the paths are checked before anything is built (:mod:`sagnn_lightning.cli.checks`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from sagnn_lightning.cli.checks import check_run_paths, resumed_checkpoint
from sagnn_lightning.cli.errors import exit_status, instantiation_error
from sagnn_lightning.lit.callbacks import (
    BestAndLastCheckpoint,
    ParityPlot,
    PredictionsCSV,
    RunSummary,
    Throughput,
)
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.progress import EpochLineProgressBar
from sagnn_lightning.lit.signals import StopOnSigterm
from sagnn_lightning.lit.wandb import WandbLogger, configure_wandb_loggers, finish_active_run

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


class SAGNNArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are the ``tip:`` and ``error:`` lines without the usage block (the
    usage of a recipe is ~100 lines of options; ``--help`` shows it), and which takes no abbreviated options
    (argparse's prefix matching would read ``--trainer.max_epoch`` as ``--trainer.max_epochs``)."""

    _quiet_usage = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        parsers = [self, getattr(ex, "subcommand_parser", None)]
        for parser in parsers:
            if isinstance(parser, SAGNNArgumentParser):
                parser._quiet_usage = True
        try:
            super().error(message, ex)
        finally:
            for parser in parsers:
                if isinstance(parser, SAGNNArgumentParser):
                    parser._quiet_usage = False

    def print_usage(self, file: Any = None) -> None:
        if not self._quiet_usage:
            super().print_usage(file)


class SAGNNLightningCLI(LightningCLI):
    """LightningCLI for SA-GNN recipes (see module docstring).

    Args:
        name: recipe name, used for the default run directory ``runs/<name>``.
        args: command line (``None`` = ``sys.argv[1:]``).
        run: run the subcommand (``False``: only build the objects).
    """

    def __init__(self, name: str = "sagnn", args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self.recipe_name = name
        trainer_defaults = {
            "default_root_dir": str(Path(DEFAULT_RUNS_ROOT) / name),
            "logger": {"class_path": f"{WandbLogger.__module__}.{WandbLogger.__qualname__}"},
            "log_every_n_steps": 10,
            **kwargs.pop("trainer_defaults", {}),
        }
        super().__init__(
            SAGNNModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            parser_class=SAGNNArgumentParser,
            save_config_callback=SaveAndLogConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            seed_everything_default=kwargs.pop("seed_everything_default", 0),
            auto_configure_optimizers=False,
            args=list(args) if args is not None else None,
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
        parser.link_arguments(
            "trainer.default_root_dir",
            "checkpoint.dirpath",
            compute_fn=lambda root: str(Path(root or ".") / "checkpoints"),
        )
        for source, target in (
            ("data.task_type", "model.task_type"),
            ("data.target_mean", "model.target_mean"),
            ("data.target_std", "model.target_std"),
            ("data.target_names", "model.target_names"),
            ("data.target_transforms", "model.target_transforms"),
            ("data.num_targets", "model.model.init_args.num_targets"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.link_arguments(
            "data", "model.model.init_args.cutoff", compute_fn=_datamodule_cutoff, apply_on="instantiate"
        )

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list[Any] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's connector
        callbacks.append(StopOnSigterm())
        if not _stdout_is_terminal():  # a log file or a pipe: one line per epoch instead of bar refreshes
            for k, callback in enumerate(callbacks):
                # only Lightning's default bar (Rich when `rich` is installed, else tqdm), never a user's choice
                if type(callback) in (TQDMProgressBar, RichProgressBar):
                    callbacks[k] = EpochLineProgressBar()
        return trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check the paths the run will read and write (``--ckpt_path``, the run dir,
        ``--predictions.output``) before anything is loaded, built or computed."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_run_paths(self.config[subcommand] if subcommand else self.config, subcommand)

    def instantiate_classes(self) -> None:
        """Build the objects; a constructor's validation error reaches the user as its own message
        (:func:`instantiation_error`) instead of jsonargparse's type-union report."""
        try:
            super().instantiate_classes()
            return
        except Exception as err:  # noqa: BLE001 - re-raised below unless it is a user error
            user = instantiation_error(err)
            if user is None:
                raise
        raise user

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        resumed = (
            resumed_checkpoint(config.ckpt_path, root) if self.subcommand == "fit" and config.get("ckpt_path") else None
        )
        if configure_wandb_loggers(config.trainer.logger, root, resumed) and root:
            Path(root).mkdir(parents=True, exist_ok=True)


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def _needs_fit(argv: Sequence[str]) -> bool:
    return not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help", "--version")


def build_argv(args: Sequence[str] | None, configs: Iterable[str | os.PathLike] = (), run: bool = True) -> list[str]:
    """The command line actually parsed: ``fit`` when no subcommand is given, then ``--config <c>`` for
    each of the recipe's ``configs`` (so that the user's ``--config`` files and overrides come after).
    With ``run=False`` (objects only, no subcommand) just the ``--config`` items, then ``args``."""
    argv = list(sys.argv[1:] if args is None else args)
    if not run:
        return [*(item for c in configs for item in ("--config", str(c))), *argv]
    if _needs_fit(argv):
        argv = ["fit", *argv]
    if argv[0] in SUBCOMMANDS:
        extra = [item for c in configs for item in ("--config", str(c))]
        argv = [argv[0], *extra, *argv[1:]]
    return argv


#: warnings raised inside Lightning/torch that a user can do nothing about (checked for the pinned ranges)
UPSTREAM_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6 builds torch pytree ``LeafSpec`` objects, deprecated in torch 2.10+
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # we pass the (augmented) command line as ``args`` on purpose
    (r"LightningCLI's args parameter is intended to run from within Python", UserWarning),
    # Lightning 2.6's LightningCLI calls jsonargparse APIs deprecated in jsonargparse 4.49
    (r"[\s\S]*was deprecated in v4\.\d+", DeprecationWarning),
    (r"[\s\S]*By default only one JsonargparseDeprecationWarning", DeprecationWarning),
)


@contextlib.contextmanager
def quiet_upstream_warnings() -> Iterator[None]:
    """Silence the warnings raised inside Lightning, torch and jsonargparse that a user can do nothing about
    (:data:`UPSTREAM_WARNINGS`), and Lightning's advertising tips, for the ``with`` block."""
    tips = _DropLightningTips()
    logging.getLogger(_LIGHTNING_INFO_LOGGER).addFilter(tips)
    try:
        with warnings.catch_warnings():
            for message, category in UPSTREAM_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        logging.getLogger(_LIGHTNING_INFO_LOGGER).removeFilter(tips)


class _DropLightningTips(logging.Filter):
    """Drops Lightning's advertising tips (``💡 Tip: ... litlogger``): not actionable for a user of this CLI."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


#: the logger through which Lightning's ``rank_zero_info`` prints
_LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"


def _finish_wandb(cli: LightningCLI) -> None:
    trainer = getattr(cli, "trainer", None)
    if trainer is not None and trainer.global_rank == 0:
        finish_active_run()


def cli_main(
    args: Sequence[str] | None = None,
    *,
    name: str = "sagnn",
    configs: Iterable[str | os.PathLike] = (),
    run: bool = True,
) -> SAGNNLightningCLI:
    """Run the CLI (``args`` like ``["fit", "--config", "x.yaml"]``; default ``sys.argv[1:]``).

    ``configs`` are YAML files read before everything in ``args`` (a recipe's defaults). With no
    subcommand, ``fit`` is run. Returns the CLI object (``.model``, ``.datamodule``, ``.trainer``).
    User errors raise :class:`~sagnn_lightning.errors.SAGNNError` (a constructor's own exception, not
    jsonargparse's wrapper); command-line entry points print them with :func:`exit_status`.
    """
    argv = build_argv(args, configs, run)
    with quiet_upstream_warnings():
        cli = SAGNNLightningCLI(name=name, args=argv, run=run)
        if run:
            _finish_wandb(cli)
    return cli


def recipe_main(
    name: str, configs: Iterable[str | os.PathLike], args: Sequence[str] | None = None
) -> SAGNNLightningCLI:
    """Entry point of a recipe script: the ``configs`` (the task's YAMLs, in order) are read first, then
    ``--config`` files and overrides from ``args`` (default ``sys.argv[1:]``).

    A user error prints ``error: <message>`` and exits with status 1 (2 for a bad option), no traceback
    (``SAGNN_DEBUG=1`` shows it); see :func:`exit_status`.
    """
    built: list[SAGNNLightningCLI] = []
    status = exit_status(lambda: built.append(cli_main(args, name=name, configs=list(configs))))
    if status:
        sys.exit(status)
    return built[0]


__all__ = [
    "SUBCOMMANDS",
    "UPSTREAM_WARNINGS",
    "SAGNNLightningCLI",
    "build_argv",
    "cli_main",
    "quiet_upstream_warnings",
    "recipe_main",
]
