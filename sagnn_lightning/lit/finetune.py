"""Fine-tuning: start a network from trained weights, freeze parts of it, re-initialise its head.

Used by :class:`~sagnn_lightning.lit.SAGNNModule` (``init_from``, ``freeze``, ``reset_head``):

* :func:`init_weights` copies the *network* weights of a pretrained model (by name, see
  :mod:`sagnn_lightning.lit.registry`) or of a ``.ckpt`` file into a model of the same architecture. The
  optimizer state and the target statistics are not taken: they come from the new run and its training data.
  Differing shapes or missing layers are one error that names them; a different neighbour cutoff is an error
  too (the Gaussian distance basis spans the cutoff, so the same weights would see other features).
* :func:`freeze` stops the gradients of parameters chosen by name prefix (``atom_embedding``, ``blocks.0``, ...).
* ``reset_head``: the output MLP (``model.head``) keeps its fresh initialisation, whatever its shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sagnn_lightning.errors import SAGNNError, UsageError, param
from sagnn_lightning.lit.checkpoints import checkpoint_cutoff, checkpoint_model_args, read_checkpoint, resolve_source

#: the output layers that ``reset_head`` re-initialises (``SAGNN.head``)
HEAD_PREFIX = "head"
#: the parameters of :class:`~sagnn_lightning.lit.SAGNNModule` that errors here name
INIT_FROM, FREEZE, RESET_HEAD = "model.init_from", "model.freeze", "model.reset_head"


#: constructor arguments that do not change the weights' shapes or meaning (never named as the difference)
_NOT_ARCHITECTURE = ("attention_backend",)


def _network_state(source: str) -> tuple[dict[str, torch.Tensor], float | None, dict[str, Any]]:
    """``(network state_dict without the "model." prefix, cutoff Å or None, the network's constructor arguments
    or {})`` of a checkpoint or model name."""
    path = resolve_source(source, INIT_FROM)
    checkpoint = read_checkpoint(path, INIT_FROM)
    state = checkpoint["state_dict"]
    if not any(k.startswith("model.") for k in state):
        raise SAGNNError(
            f"{param(INIT_FROM)}={source}: {path} holds no SA-GNN weights (no model.* entries in its state_dict)"
        )
    network = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return network, checkpoint_cutoff(checkpoint), checkpoint_model_args(checkpoint)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples and lists compare equal


def differing_arguments(source_args: dict[str, Any], model: nn.Module, reset_head: bool = False) -> dict[str, Any]:
    """``{argument: the source's value}`` for each constructor argument of ``model`` (its ``init_args``) that
    the source network was built with otherwise (``num_targets`` too unless ``reset_head``)."""
    own = getattr(model, "init_args", None)
    if not isinstance(own, dict):
        return {}
    skip = {*_NOT_ARCHITECTURE, *(("num_targets",) if reset_head else ())}
    return {k: v for k, v in source_args.items() if k in own and k not in skip and _plain(v) != _plain(own[k])}


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _is_head(key: str) -> bool:
    return key == HEAD_PREFIX or key.startswith(HEAD_PREFIX + ".")


def init_weights(model: nn.Module, source: str, reset_head: bool = False) -> list[str]:
    """Copy the weights of ``source`` (a pretrained name or a ``.ckpt``) into ``model``; returns the keys copied.

    With ``reset_head`` the ``head.*`` entries are not copied (they keep ``model``'s fresh initialisation,
    of any shape).

    Raises:
        UsageError: the architectures differ (every differing key with both shapes, in one line), or the
            neighbour cutoff differs.
    """
    source_state, source_cutoff, source_args = _network_state(source)
    own = model.state_dict()
    expansion = getattr(model, "bond_expansion", None)
    own_cutoff = getattr(expansion, "stop", None)
    if source_cutoff is not None and own_cutoff is not None and abs(float(source_cutoff) - float(own_cutoff)) > 1e-9:
        raise UsageError(
            f"{param(INIT_FROM)}={source} was trained with a {float(source_cutoff):g} Å cutoff, this model uses "
            f"{float(own_cutoff):g} Å; set {param('data.cutoff')}={float(source_cutoff):g} (the distance basis spans "
            "the cutoff)"
        )
    wanted = {k: v for k, v in own.items() if not (reset_head and _is_head(k))}
    problems: dict[str, str] = {}  # key -> what differs
    for key, value in wanted.items():
        if key not in source_state:
            problems[key] = f"{key} {_shape(value)} not in the checkpoint"
        elif source_state[key].shape != value.shape:
            problems[key] = f"{key}: checkpoint {_shape(source_state[key])} vs model {_shape(value)}"
    for key in source_state:
        if key not in own and not (reset_head and _is_head(key)):
            problems[key] = f"{key} {_shape(source_state[key])} not in the model"
    if problems:
        texts = list(problems.values())
        shown = "; ".join(texts[:6]) + (f"; ... ({len(texts) - 6} more)" if len(texts) > 6 else "")
        arguments = differing_arguments(source_args, model, reset_head)
        if all(_is_head(key) for key in problems):
            fix = f"the output layers differ (another number of targets?): add {param(RESET_HEAD)}=true"
        elif arguments:
            fix = "build the model as the checkpoint's: " + ", ".join(
                f"{param('model.model.' + k)}={json.dumps(_plain(v))}" for k, v in arguments.items()
            )
        else:
            fix = (
                f"give {param('model.model')} the pretrained model's config (sagnn_lightning.pretrained.card(name) "
                "or python -m sagnn_lightning models <name> shows it)"
            )
        raise UsageError(f"{param(INIT_FROM)}={source}: the architecture differs: {shown}; {fix}")
    with torch.no_grad():
        for key in wanted:
            own[key].copy_(source_state[key].to(own[key].dtype))
    return list(wanted)


def parameter_groups(model: nn.Module) -> list[str]:
    """Names accepted by :func:`freeze`: each top-level child with parameters, and each item of a ``ModuleList``
    (``blocks.0``, ``blocks.1``, ...)."""
    names = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        names.append(name)
        if isinstance(child, nn.ModuleList):
            names += [f"{name}.{k}" for k, item in enumerate(child) if any(True for _ in item.parameters())]
    return names


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name is ``p`` or starts with ``p.`` for a ``p`` in
    ``prefixes``; returns the frozen parameter names.

    Raises:
        UsageError: a prefix matches no parameter (the message lists :func:`parameter_groups`).
    """
    named = dict(model.named_parameters())
    frozen: list[str] = []
    for prefix in prefixes:
        prefix = str(prefix).strip().strip(".")
        matched = [n for n in named if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            raise UsageError(
                f"{param(FREEZE)}: {prefix!r} names no parameters; use any of: {', '.join(parameter_groups(model))}"
            )
        frozen += [n for n in matched if n not in frozen]
    for name in frozen:
        named[name].requires_grad_(False)
    return frozen


__all__ = ["HEAD_PREFIX", "differing_arguments", "freeze", "init_weights", "parameter_groups"]
