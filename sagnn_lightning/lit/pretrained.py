"""Pretrained SA-GNN models shipped inside the package, loaded by name.

* :func:`load` → a :class:`~sagnn_lightning.lit.SAGNNModule` in eval mode, predicting in the card's units
  (``load(name).predict([structure, ...])``), or an :class:`~sagnn_lightning.lit.ensemble.Ensemble` for a
  model shipped as one (its card lists ``members``; fine-tuning from the name starts from the first member);
* :func:`graph_settings` → the graph settings it was trained with;
* :func:`training_datamodule` → the DataModule it was trained with, rebuilt from its card.

The names, cards, files and checksums are :mod:`sagnn_lightning.lit.registry`'s.
"""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from jsonargparse import ArgumentParser

from sagnn_lightning.lit.checkpoints import graph_settings_from_checkpoint, read_checkpoint
from sagnn_lightning.lit.ensemble import Ensemble
from sagnn_lightning.lit.loading import load_module
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.registry import card, checkpoint_file, member_files
from sagnn_lightning.uncertainty import Calibration


def load(name: str, device: str = "cpu", models_dir: str | os.PathLike | None = None) -> SAGNNModule | Ensemble:
    """The pretrained model ``name`` in eval mode on ``device``: a :class:`~sagnn_lightning.lit.SAGNNModule`, or
    for a shipped ensemble an :class:`~sagnn_lightning.lit.ensemble.Ensemble` of its members with the card's
    calibration (``load(name).predict(...)`` then gives the mean, ``std`` and the 95 % interval).

    ``load(name).predict([structure, ...])`` → predictions in the card's unit, from graphs built with the settings
    the model was trained with (:func:`graph_settings`).
    """
    info = card(name, models_dir)
    if not info.extra.get("members"):
        module, _ = load_module(checkpoint_file(name, models_dir), device, "model")
        return module
    members = [load_module(path, device, "model")[0] for path in member_files(name, models_dir)]
    calibration = Calibration.from_dict(info.extra["calibration"]) if info.extra.get("calibration") else None
    return Ensemble(members, calibration, {"name": name, "members": info.extra["members"]})


def graph_settings(name: str, models_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"cutoff", "max_neighbors", "max_isolated_radius"}`` the model was trained with."""
    return graph_settings_from_checkpoint(read_checkpoint(checkpoint_file(name, models_dir), "model"))


def training_datamodule(settings: dict[str, Any], **overrides: Any) -> Any:
    """The DataModule a model was trained with, rebuilt from its saved data settings (a card's ``config["data"]``
    or a checkpoint's ``datamodule_hyper_parameters``: ``_class_path`` + arguments), with ``overrides`` (e.g.
    ``data_file=`` where the data lives on this machine). Its validation split is the rows the card's
    validation MAE was measured on."""
    args = {k: v for k, v in settings.items() if not k.startswith("_")}
    args.update(overrides)
    parser = ArgumentParser()
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    config = parser.parse_object({"data": {"class_path": settings["_class_path"], "init_args": args}})
    # jsonargparse >= 4.49 calls it ``instantiate``; older versions only have ``instantiate_classes``
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(config).data


__all__ = ["graph_settings", "load", "training_datamodule"]
