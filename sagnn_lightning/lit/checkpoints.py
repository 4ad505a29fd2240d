"""Checkpoint files given by a user (``ckpt``, ``ckpt_path``, ``init_from``): found, checked cheaply before any work,
then read, with one-line errors that name the parameter.

* :func:`check_checkpoint_file` / :func:`read_checkpoint`: a file in PyTorch's format, holding a ``state_dict``;
* :func:`resolve_checkpoint`: ``"best"`` / ``"last"`` of a run folder, or a run folder (its best checkpoint);
* :func:`recorded_best_checkpoint`: the best checkpoint that a ``last.ckpt`` recorded, also in a moved folder;
* :func:`resolve_source`: a pretrained model's name or a checkpoint path (fine-tuning's ``init_from``);
* :func:`graph_settings_from_checkpoint` / :func:`checkpoint_cutoff`: the graph settings a model was trained with.

Nothing here builds a model: :mod:`sagnn_lightning.lit.loading` does.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sagnn_lightning.data.table import InputNotFoundError
from sagnn_lightning.errors import SAGNNError, UsageError, param
from sagnn_lightning.lit.registry import available, checkpoint_file, is_pretrained_name

#: ``ckpt`` keywords resolved in a run folder
CKPT_KEYWORDS: tuple[str, ...] = ("best", "last")


def check_checkpoint_file(path: str | os.PathLike, name: str = "ckpt") -> Path:
    """``path`` if it is an existing file in PyTorch's checkpoint format (a zip archive), else a clear error.

    Cheap (reads the zip directory only): a garbage or truncated file is reported before any work starts.
    ``name`` is the parameter that gave the path (``"ckpt"``, ``"ckpt_path"``, ``"model.init_from"``).

    Raises:
        InputNotFoundError: no such file (exit status 2).
        SAGNNError: a folder, or not a PyTorch checkpoint (truncated, another format).
    """
    path = Path(path).expanduser()
    if not path.exists():
        example = {
            "ckpt": f"{param('ckpt')}=best {param('run_dir')}=runs/<recipe>",
            "ckpt_path": f"{param('ckpt_path')}=runs/<recipe>/checkpoints/last.ckpt, or {param('ckpt_path')}=last "
            "to resume in the same run dir",
        }.get(name, f"{param(name)}=runs/<recipe>/checkpoints/best-<epoch>-<step>.ckpt")
        raise InputNotFoundError(
            f"checkpoint {path} does not exist ({param(name)}); give a .ckpt written by training, e.g. {example}"
        )
    if path.is_dir():
        raise UsageError(f"{param(name)} {path} is a folder; give a .ckpt file")
    if not zipfile.is_zipfile(path):
        raise SAGNNError(
            f"{param(name)} {path} is not a PyTorch checkpoint (truncated, or another kind of file); "
            "give a .ckpt written by training"
        )
    return path


def read_checkpoint(path: str | os.PathLike, name: str = "ckpt") -> dict[str, Any]:
    """The checkpoint dict in ``path`` (tensors only, ``weights_only=True``), which must hold a ``state_dict``.

    Raises:
        SAGNNError: PyTorch cannot read it, or it is not a training checkpoint (no ``state_dict``).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        first = str(err).splitlines()[0] if str(err) else ""
        raise SAGNNError(
            f"{param(name)} {path} cannot be read by PyTorch ({type(err).__name__}: {first}); "
            "give a .ckpt written by training"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise SAGNNError(
            f"{param(name)} {path} is not a checkpoint of an SA-GNN training run (no state_dict); "
            "give a .ckpt written by a sagnn_lightning recipe"
        )
    return checkpoint


def checkpoint_cutoff(checkpoint: dict[str, Any]) -> float | None:
    """The network's neighbour cutoff (Å) saved in a checkpoint's hyper-parameters, or ``None``."""
    model_cfg = (checkpoint.get("hyper_parameters") or {}).get("model")
    cutoff = (model_cfg.get("init_args") or {}).get("cutoff") if isinstance(model_cfg, dict) else None
    return None if cutoff is None else float(cutoff)


def checkpoint_model_args(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The network's constructor arguments saved in a checkpoint's hyper-parameters (``{}`` when not saved)."""
    model_cfg = (checkpoint.get("hyper_parameters") or {}).get("model")
    return dict(model_cfg.get("init_args") or {}) if isinstance(model_cfg, dict) else {}


def graph_settings_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``{"cutoff": Å, "max_neighbors": int | None, "max_isolated_radius": Å}`` used in training (DataModule
    hparams, else the model's cutoff and the defaults)."""
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data = {**data, **dict(data.get("init_args") or {})}
    model_cutoff = checkpoint_cutoff(checkpoint)
    cutoff = data.get("cutoff", model_cutoff if model_cutoff is not None else 5.0)
    return {
        "cutoff": float(cutoff),
        "max_neighbors": data.get("max_neighbors"),
        "max_isolated_radius": float(data.get("max_isolated_radius") or 20.0),
    }


def _newest(paths: Sequence[Path]) -> Path | None:
    return max(paths, key=lambda p: (p.stat().st_mtime_ns, p.name)) if paths else None


def recorded_best_checkpoint(last: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path | None:
    """The best checkpoint recorded in ``last``'s ModelCheckpoint state (``best_model_path``), if it exists: as
    recorded, else under the same name in ``folder`` (default: ``last``'s folder; a run folder that was moved)."""
    last = Path(last)
    folder = Path(folder) if folder is not None else last.parent
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged last.ckpt: the caller falls back to the file names
        return None
    for callback_state in (state.get("callbacks") or {}).values():
        recorded = callback_state.get("best_model_path") if isinstance(callback_state, dict) else None
        if recorded:
            for candidate in (Path(recorded), folder / Path(recorded).name):
                if candidate.is_file():
                    return candidate
    return None


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """What :func:`resolve_checkpoint` found: the file, and how (``"file"``, ``"best"``, ``"last"``) in which
    checkpoint folder (``None`` for a file given directly)."""

    path: Path
    kind: str
    folder: Path | None

    def describe(self) -> str:
        """One line for the user: which run's checkpoint was taken."""
        if self.folder is None:
            return f"checkpoint: {self.path}"
        return f"checkpoint: {self.path} (the {self.kind} checkpoint of the latest run in {self.folder})"


def find_checkpoint(ckpt: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> ResolvedCheckpoint:
    """:func:`resolve_checkpoint`, saying how the file was found (:class:`ResolvedCheckpoint`)."""
    text = str(ckpt)
    if text in CKPT_KEYWORDS:
        if run_dir is None:
            raise UsageError(f"{param('ckpt')}={text} needs {param('run_dir')}=<the run folder, e.g. runs/quickstart>")
        folder, kind, name = Path(run_dir).expanduser(), text, "run_dir"
    elif Path(text).expanduser().is_dir():
        folder, kind, name = Path(text).expanduser(), "best", "ckpt"
    else:
        return ResolvedCheckpoint(check_checkpoint_file(text), "file", None)
    if not folder.is_dir():
        raise InputNotFoundError(f"run folder {folder} does not exist ({param(name)})")
    checkpoints = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    lasts = sorted(checkpoints.glob("last*.ckpt"))
    last = _newest(lasts)
    if kind == "last":
        if last is None:
            raise SAGNNError(
                f"no last*.ckpt in {checkpoints} ({param(name)}); was the run trained with "
                f"--checkpoint.save_last=false? Give {param('ckpt')}=<file>.ckpt"
            )
        return ResolvedCheckpoint(check_checkpoint_file(last), "last", checkpoints)
    best = recorded_best_checkpoint(last, checkpoints) if last is not None else None
    if best is None:
        best = _newest([p for p in checkpoints.glob("*.ckpt") if p not in lasts])
    if best is None:
        raise SAGNNError(
            f"no best checkpoint in {checkpoints} ({param(name)}); has a run in this folder finished "
            f"an epoch with validation? Give {param('ckpt')}=<file>.ckpt"
        )
    return ResolvedCheckpoint(check_checkpoint_file(best), "best", checkpoints)


def resolve_checkpoint(ckpt: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint file meant by ``ckpt`` (and ``run_dir``).

    * a file: itself;
    * ``"best"`` / ``"last"`` with ``run_dir``, or a run folder given as ``ckpt`` (= its best): looked up in
      ``<run dir>/checkpoints`` (or in the folder itself when it holds the ``.ckpt`` files). ``last`` is the
      newest ``last*.ckpt`` (a second run in the same folder writes ``last-v1.ckpt``); ``best`` is the best
      checkpoint recorded in that file (``ModelCheckpoint.best_model_path``), i.e. the best of the latest
      run, else the newest other ``*.ckpt``.
    """
    return find_checkpoint(ckpt, run_dir).path


def resolve_source(source: str, name: str = "model.init_from") -> Path:
    """A pretrained model's name → its checked ``.ckpt``; otherwise ``source`` as a checkpoint path."""
    if is_pretrained_name(source):
        return checkpoint_file(source)
    if not Path(source).expanduser().exists():
        raise InputNotFoundError(
            f"{param(name)}={source} is neither a shipped model ({', '.join(available())}) nor an existing "
            ".ckpt; give one of those names or a checkpoint written by training"
        )
    return check_checkpoint_file(source, name)


__all__ = [
    "CKPT_KEYWORDS",
    "ResolvedCheckpoint",
    "check_checkpoint_file",
    "checkpoint_cutoff",
    "checkpoint_model_args",
    "find_checkpoint",
    "graph_settings_from_checkpoint",
    "read_checkpoint",
    "recorded_best_checkpoint",
    "resolve_checkpoint",
    "resolve_source",
]
