"""Trained models from checkpoint files: :func:`load_checkpoint` → a :class:`~sagnn_lightning.lit.SAGNNModule` in
eval mode that knows the graph settings it was trained with (``module.graph_settings``), so
``module.predict(structures)`` builds the same graphs as training did."""

from __future__ import annotations

import os
from typing import Any

from sagnn_lightning.errors import SAGNNError, param
from sagnn_lightning.lit.checkpoints import check_checkpoint_file, graph_settings_from_checkpoint, read_checkpoint
from sagnn_lightning.lit.module import SAGNNModule


def load_module(ckpt: str | os.PathLike, device: str = "cpu", name: str = "ckpt") -> tuple[SAGNNModule, dict[str, Any]]:
    """The trained module (eval mode, on ``device``) and its graph settings (also in ``module.graph_settings``).

    ``name`` is the parameter that gave ``ckpt`` (named in errors).

    Raises:
        InputNotFoundError: no such file. SAGNNError: not a PyTorch checkpoint, or not one of an SA-GNN.
    """
    path = check_checkpoint_file(ckpt, name)
    checkpoint = read_checkpoint(path, name)
    if "hyper_parameters" not in checkpoint:
        raise SAGNNError(
            f"{param(name)} {path} is not a checkpoint of an SA-GNN training run (no hyper_parameters); "
            "give a .ckpt written by a sagnn_lightning recipe"
        )
    try:
        module = SAGNNModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # another model's checkpoint: mismatched config or weights
        raise SAGNNError(
            f"{param(name)} {path} is not a checkpoint of an SA-GNN training run ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    settings = graph_settings_from_checkpoint(checkpoint)
    module.graph_settings = settings
    module.eval().to(device)
    return module, settings


def load_checkpoint(ckpt: str | os.PathLike, device: str = "cpu") -> SAGNNModule:
    """The trained :class:`~sagnn_lightning.lit.SAGNNModule` in ``ckpt`` (a ``.ckpt`` written by training), in eval
    mode on ``device``: ``load_checkpoint(path).predict([structure, ...])`` → an array in the target's units."""
    return load_module(ckpt, device)[0]


__all__ = ["load_checkpoint", "load_module"]
