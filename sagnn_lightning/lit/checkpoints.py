"""Checkpoint files given by a user (``--ckpt``, ``--ckpt_path``, ``--model.init_from``): checked cheaply before
any work, then read, with one-line errors that name the option."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from sagnn_lightning.data.table import InputNotFoundError
from sagnn_lightning.errors import SAGNNError, UsageError


def check_checkpoint_file(path: str | os.PathLike, option: str = "--ckpt") -> Path:
    """``path`` if it is an existing file in PyTorch's checkpoint format (a zip archive), else a clear error.

    Cheap (reads the zip directory only): a garbage or truncated file is reported before any work starts.

    Raises:
        InputNotFoundError: no such file (exit status 2).
        SAGNNError: a folder, or not a PyTorch checkpoint (truncated, another format).
    """
    path = Path(path).expanduser()
    if not path.exists():
        example = {
            "--ckpt": "--ckpt best --run-dir runs/<recipe>",
            "--ckpt_path": "--ckpt_path runs/<recipe>/checkpoints/last.ckpt, or --ckpt_path last to resume in the "
            "same run dir",
        }.get(option, f"{option} runs/<recipe>/checkpoints/best-<epoch>-<step>.ckpt")
        raise InputNotFoundError(
            f"checkpoint {path} does not exist ({option}); give a .ckpt written by training, e.g. {example}"
        )
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a .ckpt file")
    if not zipfile.is_zipfile(path):
        raise SAGNNError(
            f"{option} {path} is not a PyTorch checkpoint (truncated, or another kind of file); "
            "give a .ckpt written by training"
        )
    return path


def read_checkpoint(path: str | os.PathLike, option: str = "--ckpt") -> dict[str, Any]:
    """The checkpoint dict in ``path`` (tensors only, ``weights_only=True``), which must hold a ``state_dict``.

    Raises:
        SAGNNError: PyTorch cannot read it, or it is not a training checkpoint (no ``state_dict``).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        first = str(err).splitlines()[0] if str(err) else ""
        raise SAGNNError(
            f"{option} {path} cannot be read by PyTorch ({type(err).__name__}: {first}); "
            "give a .ckpt written by training"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise SAGNNError(
            f"{option} {path} is not a checkpoint of an SA-GNN training run (no state_dict); "
            "give a .ckpt written by a sagnn_lightning recipe"
        )
    return checkpoint


__all__ = ["check_checkpoint_file", "read_checkpoint"]
