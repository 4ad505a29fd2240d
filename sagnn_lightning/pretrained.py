"""Pretrained SA-GNN models by name: ``available()``, ``card(name)``, ``load(name)``.

>>> from sagnn_lightning import pretrained
>>> pretrained.available()  # {name: one-line summary}
>>> module = pretrained.load("matbench_perovskites")  # SAGNNModule, eval mode, predictions in the card's unit

The command line: ``python -m sagnn_lightning models [NAME]`` prints the cards;
``python -m sagnn_lightning predict --model NAME --input ... --output ...`` predicts. Fine-tuning:
``fit --model.init_from=NAME`` (see :class:`~sagnn_lightning.lit.SAGNNModule`). Implemented in
:mod:`sagnn_lightning.lit.pretrained`.
"""

from sagnn_lightning.lit.pretrained import (
    ModelCard,
    PretrainedError,
    available,
    card,
    checkpoint_file,
    graph_settings,
    load,
)

__all__ = ["ModelCard", "PretrainedError", "available", "card", "checkpoint_file", "graph_settings", "load"]
