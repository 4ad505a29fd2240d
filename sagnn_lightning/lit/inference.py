"""Inference on raw inputs: items → graphs, built one batch at a time → predictions, streamed.

The graphs are built by :func:`~sagnn_lightning.data.inputs.item_to_graph`, the path the training cache takes, so
an input gives the same graph here as in ``fit``; the graph settings are the model's own
(:func:`model_graph_settings`). Memory stays flat in the number of inputs: only one batch of graphs exists at a
time. An input whose graph fails is reported against its name and left out; the others are predicted.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.graph import GraphSettings, StructureError
from sagnn_lightning.data.inputs import AnySettings, item_to_graph
from sagnn_lightning.data.readers import InputItem
from sagnn_lightning.errors import UsageError, param, raw_message, render_params
from sagnn_lightning.lit.predictions_csv import Predictions
from sagnn_lightning.models.composition import CompositionSAGNN

#: ``on_batch(batch, outputs)``: called after each batch with the module's ``predict_step`` outputs
OnBatch = Callable[[Any, dict[str, Any]], None]


def model_graph_settings(module: nn.Module) -> AnySettings:
    """The settings that build graphs for ``module``: element graphs for a composition model; otherwise crystal
    graphs with the settings it was trained with (``module.graph_settings``, read from its checkpoint or its
    DataModule), else its network's cutoff and the defaults."""
    if isinstance(getattr(module, "model", None), CompositionSAGNN):
        return CompositionSettings()
    saved = getattr(module, "graph_settings", None)
    if saved:
        return GraphSettings(**saved)
    expansion = getattr(getattr(module, "model", None), "bond_expansion", None)
    return GraphSettings(cutoff=float(getattr(expansion, "stop", 5.0)))


def iter_predictions(
    module: Any,
    inputs: Iterable[InputItem],
    settings: AnySettings,
    batch_size: int = 64,
    on_batch: OnBatch | None = None,
) -> Iterator[Predictions]:
    """Predict ``inputs`` ``batch_size`` at a time: one :class:`Predictions` per batch, with the ``errors`` of the
    inputs of that batch that could not be read or turned into a graph (``(label, reason)``).

    ``module`` is an :class:`~sagnn_lightning.lit.SAGNNModule` (typed ``Any``: this module sits below it) in eval mode (its ``predict_step`` is called under
    ``torch.inference_mode``).
    """
    if batch_size < 1:
        raise UsageError(f"{param('batch_size')} must be >= 1, got {batch_size}")
    device = next(module.parameters()).device
    target_names = list(module.target_names)
    classification = module.task_type == "classification"
    # elements beyond the model's embedding table (e.g. Og, Z=118, for the default 100) are refused per item
    max_z = getattr(getattr(module, "model", None), "max_atomic_number", None)
    stream = iter(inputs)
    for batch_idx in itertools.count():
        chunk = list(itertools.islice(stream, batch_size))
        if not chunk:
            return
        graphs, errors = [], []
        for entry in chunk:
            if entry.error is not None:
                errors.append((entry.label, entry.error))
                continue
            try:
                graph = item_to_graph(entry.item, settings, name=entry.label)
            except StructureError as err:
                errors.append((entry.label, raw_message(err)))
                continue
            if max_z is not None and int(graph.atomic_numbers.max()) > max_z:
                z = int(graph.atomic_numbers.max())
                errors.append(
                    (
                        entry.label,
                        f"{entry.label}: element Z={z} is beyond the model's max_atomic_number={max_z}; this model cannot predict it",
                    )
                )
                continue
            graph.sample_id = entry.id
            graphs.append(graph)
        if not graphs:
            yield Predictions([], torch.empty(0, len(target_names)), None, target_names, errors)
            continue
        with torch.inference_mode():
            batch = collate_graphs(graphs).to(device)
            out = module.predict_step(batch, batch_idx)
            if on_batch is not None:
                on_batch(batch, out)
        probability = out["probability"].float().cpu() if classification else None
        ids = [str(g.sample_id) for g in graphs]
        yield Predictions(ids, out["prediction"].float().cpu(), probability, target_names, errors, _extra(out))


#: outputs of ``predict_step`` that are not per-row value columns
_NOT_EXTRA = ("sample_id", "prediction", "probability")


def _extra(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An ensemble's extra outputs (``std``, intervals, ``members [K, B, T]`` → ``[B, K, T]``), rows first."""
    extra = {}
    for key, value in out.items():
        if key in _NOT_EXTRA or not isinstance(value, torch.Tensor):
            continue
        extra[key] = (value.transpose(0, 1) if key == "members" else value).float().cpu()
    return extra


def concat_predictions(parts: Iterable[Predictions], target_names: Sequence[str], classification: bool) -> Predictions:
    """One :class:`Predictions` of many (in order)."""
    parts = list(parts)
    width = len(target_names)
    prediction = torch.cat([p.prediction for p in parts]) if parts else torch.empty(0, width)
    probability = None
    if classification:
        probs = [p.probability for p in parts if p.probability is not None]
        probability = torch.cat(probs) if probs else torch.empty(0, width)
    return Predictions(
        ids=[i for p in parts for i in p.ids],
        prediction=prediction,
        probability=probability,
        target_names=list(target_names),
        errors=[e for p in parts for e in p.errors],
        extra={key: torch.cat([p.extra[key] for p in parts]) for key in (parts[0].extra if parts else {})},
    )


def predict_structures(
    module: Any,
    ids: Sequence[str],
    structures: Sequence[Any],
    cutoff: float | None = None,
    max_neighbors: int | None = None,
    batch_size: int = 64,
    errors: list[tuple[str, str]] | None = None,
    max_isolated_radius: float = 20.0,
    labels: Sequence[str] | None = None,
    settings: AnySettings | None = None,
    on_batch: OnBatch | None = None,
) -> Predictions:
    """Predict raw inputs held in memory, all at once (:func:`iter_predictions` streams).

    ``structures`` are ``Structure`` objects, CIF text or ``Structure.as_dict()`` (or formulas for a composition
    model). The graph settings are ``settings``, else ``cutoff``/``max_neighbors``/``max_isolated_radius`` when
    ``cutoff`` is given, else the model's own (:func:`model_graph_settings`). ``errors`` (earlier failures) are
    kept in front of the new ones; ``labels`` name the inputs in errors (default: the ids).
    """
    if settings is None:
        settings = (
            GraphSettings(cutoff=cutoff, max_neighbors=max_neighbors, max_isolated_radius=max_isolated_radius)
            if cutoff is not None
            else model_graph_settings(module)
        )
    names = labels if labels is not None else ids
    items = (InputItem(str(i), str(n), s) for i, n, s in zip(ids, names, structures))
    parts = list(iter_predictions(module, items, settings, batch_size, on_batch))
    result = concat_predictions(parts, module.target_names, module.task_type == "classification")
    result.errors = [*(errors or []), *((name, render_params(reason)) for name, reason in result.errors)]
    return result


def predict_items(
    module: Any,
    items: Iterable[Any],
    batch_size: int = 64,
    on_error: Literal["raise", "nan"] = "raise",
) -> np.ndarray:
    """Predictions of ``items`` (pymatgen ``Structure`` objects, CIF text, ``Structure.as_dict()``; formulas for a
    composition model) as an array in the target's units: ``[n]`` for one target, ``[n, T]`` for several; the
    probability of class 1 for classification. The graphs are built with the model's own settings.

    Args:
        on_error: ``"raise"``: an item that cannot be turned into a graph raises
            :class:`~sagnn_lightning.data.graph.StructureError` naming it (``item <k>``); ``"nan"``: its row is NaN
            and one warning counts them.
    """
    columns = predict_item_outputs(module, items, batch_size, on_error)
    return columns["probability"] if "probability" in columns else columns["prediction"]


def predict_item_outputs(
    module: Any,
    items: Iterable[Any],
    batch_size: int = 64,
    on_error: Literal["raise", "nan"] = "raise",
) -> dict[str, np.ndarray]:
    """Every output column of ``module.predict_step`` for ``items`` (see :func:`predict_items`): ``prediction``,
    ``probability`` (classification), and an ensemble's ``std``, intervals and ``members`` (``[K, n(, T)]``);
    ``[n]`` per column for one target, ``[n, T]`` for several, NaN rows for failed items with ``on_error="nan"``."""
    if on_error not in ("raise", "nan"):
        raise UsageError(f"{param('on_error')} must be 'raise' or 'nan', got {on_error!r}")
    settings = model_graph_settings(module)
    entries = (InputItem(str(k), f"item {k}", item) for k, item in enumerate(items))
    parts: list[Predictions] = []
    positions: list[int] = []
    failed: list[tuple[str, str]] = []
    total = 0
    for part in iter_predictions(module, entries, settings, batch_size):
        if part.errors and on_error == "raise":
            raise StructureError(part.errors[0][1])
        failed += part.errors
        total += len(part.ids) + len(part.errors)
        parts.append(part)
        positions += [int(i) for i in part.ids]
    single = len(module.target_names) == 1
    columns: dict[str, np.ndarray] = {}
    for key, values in _columns(parts).items():
        out = np.full((total, *values.shape[1:]), np.nan)
        if positions:
            out[positions] = values
        if key == "members":  # [n, K, T] → [K, n, T]
            out = np.moveaxis(out, 1, 0)
        columns[key] = out[..., 0] if single else out
    if failed:
        warnings.warn(
            f"{len(failed)} of {total} items could not be predicted (NaN): {render_params(failed[0][1])}",
            UserWarning,
            stacklevel=3,
        )
    return columns


def _columns(parts: Sequence[Predictions]) -> dict[str, np.ndarray]:
    """The parts' value columns concatenated over rows (float64)."""
    if not parts:
        return {}
    names = ["prediction", *(["probability"] if parts[0].probability is not None else []), *parts[0].extra]
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for part in parts:
        for name in names:
            value = (
                part.prediction
                if name == "prediction"
                else part.probability
                if name == "probability"
                else part.extra[name]
            )
            assert value is not None
            columns[name].append(value.double().numpy())
    return {name: np.concatenate(values) for name, values in columns.items()}
