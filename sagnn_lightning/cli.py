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

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from jsonargparse import Namespace
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from sagnn_lightning.errors import SAGNNError, UsageError
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
from sagnn_lightning.lit.wandb import WandbLogger, configure_wandb_run, finish_active_run

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
    usage of a recipe is ~100 lines of options; ``--help`` shows it)."""

    _quiet_usage = False

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
        logger = config.trainer.logger
        loggers = logger if isinstance(logger, list) else [logger]
        for item in loggers:
            if isinstance(item, Namespace) and "WandbLogger" in str(item.get("class_path", "")):
                init = item.get("init_args")
                if init is None:
                    item["init_args"] = init = Namespace()
                resumed = (
                    _resolve_ckpt_path(config.ckpt_path, root)
                    if self.subcommand == "fit" and config.get("ckpt_path")
                    else None
                )
                configure_wandb_run(init, root, resumed)
                if root:
                    Path(root).mkdir(parents=True, exist_ok=True)


def _resolve_ckpt_path(ckpt_path: str, root: str | os.PathLike | None) -> Path | None:
    """``--ckpt_path`` as a file, or ``None`` when there is none: ``last`` is the newest ``last*.ckpt`` of the run
    dir (Lightning's own choice for ``--ckpt_path last``)."""
    if ckpt_path != "last":
        return Path(ckpt_path).expanduser()
    from sagnn_lightning.lit.predict import resolve_checkpoint

    try:
        return resolve_checkpoint("last", root or ".")
    except SAGNNError:  # nothing to resume from: Lightning starts afresh (and says so)
        return None


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
_UPSTREAM_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6 builds torch pytree ``LeafSpec`` objects, deprecated in torch 2.10+
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # we pass the (augmented) command line as ``args`` on purpose
    (r"LightningCLI's args parameter is intended to run from within Python", UserWarning),
    # Lightning 2.6's LightningCLI calls jsonargparse APIs deprecated in jsonargparse 4.49
    (r"[\s\S]*was deprecated in v4\.\d+", DeprecationWarning),
    (r"[\s\S]*By default only one JsonargparseDeprecationWarning", DeprecationWarning),
)


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


# ------------------------------------------------------------------------------------------ user errors
#: Lightning's own ``ckpt_path`` keywords (resolved by the Trainer, not files)
_LIGHTNING_CKPT_KEYWORDS: tuple[str, ...] = ("last", "best", "hpc", "registry")


def check_run_paths(config: Namespace, subcommand: str | None) -> None:
    """Before anything is built: ``--ckpt_path`` is a readable checkpoint, ``--model.init_from`` a shipped model or
    a readable checkpoint, the run dir and the predictions CSV can be written
    (:class:`~sagnn_lightning.errors.SAGNNError` naming the option otherwise)."""
    from sagnn_lightning.lit.checkpoints import check_checkpoint_file
    from sagnn_lightning.lit.finetune import resolve_source
    from sagnn_lightning.lit.predict import check_writable

    ckpt_path = config.get("ckpt_path")
    if ckpt_path and "://" not in str(ckpt_path) and str(ckpt_path).split(":")[0] not in _LIGHTNING_CKPT_KEYWORDS:
        check_checkpoint_file(ckpt_path, "--ckpt_path")
    init_from = config.get("model.init_from")
    if init_from:
        resolve_source(str(init_from))
    root = config.get("trainer.default_root_dir")
    if root:
        check_writable(root, "--trainer.default_root_dir", kind="dir", what="the run dir")
    if subcommand == "predict":
        output = config.get("predictions.output") or str(Path(root or ".") / "predictions.csv")
        check_writable(output, "--predictions.output")


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception it was raised from or during (``__cause__``/``__context__``), outer first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


def _raised_in_package(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` in this package's code (its innermost frame is ours)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = Path(__file__).resolve().parent
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(package)


def instantiation_error(err: BaseException) -> SAGNNError | None:
    """The user error behind an exception raised while the CLI builds the objects, or ``None`` (a bug).

    jsonargparse reports a constructor's exception wrapped in a type-union error; the constructor's own
    exception is in the chain. A :class:`SAGNNError` there is returned as is; a ``ValueError`` raised by this
    package's validation code, or Lightning's ``MisconfigurationException`` (Trainer options), become a
    :class:`UsageError` with the same message.
    """
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    chain = _chain(err)
    for item in chain:
        if isinstance(item, SAGNNError):
            return item
    for item in chain:
        if isinstance(item, MisconfigurationException) or (type(item) is ValueError and _raised_in_package(item)):
            usage = UsageError(str(item))
            usage.__cause__ = err
            return usage
    return None


def user_error(err: BaseException) -> SAGNNError | None:
    """The message-only error behind ``err`` (a :class:`SAGNNError` in its chain, or an ``OSError`` on a named
    path such as an unwritable folder), or ``None`` when ``err`` is a bug that needs its traceback."""
    chain = _chain(err)
    for item in chain:
        if isinstance(item, SAGNNError):
            return item
    if isinstance(err, OSError) and err.filename:
        return SAGNNError(f"{err.filename}: {err.strerror or err}")
    return None


def exit_status(func: Callable[[], Any]) -> int:
    """Call ``func()`` the way a command-line entry point does; returns the exit status.

    An int result is the status, anything else means 0. A user error (:func:`user_error`) prints one line
    ``error: <message>`` on stderr and gives its :attr:`~SAGNNError.exit_code` (1, or 2 for bad options);
    with ``SAGNN_DEBUG=1`` the traceback is printed too. Any other exception propagates with its traceback.
    """
    try:
        result = func()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        user = user_error(err)
        if user is None:
            raise
        if os.environ.get("SAGNN_DEBUG", "").strip() not in ("", "0"):
            import traceback

            traceback.print_exception(err)
        sys.stdout.flush()
        print(f"error: {user}", file=sys.stderr, flush=True)
        return user.exit_code
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


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
    tips = _DropLightningTips()
    logging.getLogger(_LIGHTNING_INFO_LOGGER).addFilter(tips)
    try:
        with warnings.catch_warnings():
            for message, category in _UPSTREAM_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            cli = SAGNNLightningCLI(name=name, args=argv, run=run)
            if run:
                _finish_wandb(cli)
    finally:
        logging.getLogger(_LIGHTNING_INFO_LOGGER).removeFilter(tips)
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


__all__ = ["SAGNNLightningCLI", "cli_main", "recipe_main"]
