"""Checks of a LightningCLI run's paths before anything is loaded, built or computed."""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace

from sagnn_lightning.errors import SAGNNError
from sagnn_lightning.files import check_writable
from sagnn_lightning.lit.checkpoints import check_checkpoint_file, resolve_checkpoint, resolve_source

#: Lightning's own ``ckpt_path`` keywords (resolved by the Trainer, not files)
LIGHTNING_CKPT_KEYWORDS: tuple[str, ...] = ("last", "best", "hpc", "registry")


def check_run_paths(config: Namespace, subcommand: str | None) -> None:
    """Before anything is built: ``--ckpt_path`` is a readable checkpoint, ``--model.init_from`` a shipped model or
    a readable checkpoint, the run dir and the predictions CSV can be written
    (:class:`~sagnn_lightning.errors.SAGNNError` naming the option otherwise)."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and "://" not in str(ckpt_path) and str(ckpt_path).split(":")[0] not in LIGHTNING_CKPT_KEYWORDS:
        check_checkpoint_file(ckpt_path, "ckpt_path")
    init_from = config.get("model.init_from")
    if init_from:
        resolve_source(str(init_from))
    root = config.get("trainer.default_root_dir")
    if root:
        check_writable(root, "trainer.default_root_dir", kind="dir", what="the run dir")
    if subcommand == "predict":
        output = config.get("predictions.output") or str(Path(root or ".") / "predictions.csv")
        check_writable(output, "predictions.output")


def resumed_checkpoint(ckpt_path: str, root: str | os.PathLike | None) -> Path | None:
    """``--ckpt_path`` as a file, or ``None`` when there is none: ``last`` is the newest ``last*.ckpt`` of the run
    dir (Lightning's own choice for ``--ckpt_path last``)."""
    if ckpt_path != "last":
        return Path(ckpt_path).expanduser()
    try:
        return resolve_checkpoint("last", root or ".")
    except SAGNNError:  # nothing to resume from: Lightning starts afresh (and says so)
        return None


__all__ = ["LIGHTNING_CKPT_KEYWORDS", "check_run_paths", "resumed_checkpoint"]
