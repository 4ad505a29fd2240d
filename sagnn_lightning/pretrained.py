"""Pretrained SA-GNN models by name: ``available()``, ``card(name)``, ``load(name)``.

>>> from sagnn_lightning import pretrained
>>> pretrained.available()  # {name: one-line summary}
>>> model = pretrained.load("matbench_perovskites")  # SAGNNModule, eval mode
>>> model.predict([structure])  # array in the card's unit, graphs built with the model's own settings

The command line: ``python -m sagnn_lightning models [NAME]`` prints the cards;
``python -m sagnn_lightning predict --model NAME --input ... --output ...`` predicts. Fine-tuning:
``fit --model.init_from=NAME`` (see :class:`~sagnn_lightning.lit.SAGNNModule`). Implemented in
:mod:`sagnn_lightning.lit.registry` (names, cards, files) and :mod:`sagnn_lightning.lit.pretrained` (loading).
"""

from sagnn_lightning.lit.pretrained import graph_settings, load
from sagnn_lightning.lit.registry import ModelCard, PretrainedError, available, card, checkpoint_file

__all__ = ["ModelCard", "PretrainedError", "available", "card", "checkpoint_file", "graph_settings", "load"]
