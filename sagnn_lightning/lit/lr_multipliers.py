"""Per-part learning rates: a multiplier of the optimizer's rate for parameters chosen by name prefix.

Used by :class:`~sagnn_lightning.lit.SAGNNModule` (``lr_multipliers``), e.g. a lower rate for the self-attention,
``--model.lr_multipliers='{attention_layers: 0.1}'``. The names are those of :func:`freeze
<sagnn_lightning.lit.finetune.freeze>` (:func:`~sagnn_lightning.lit.finetune.parameter_groups`: ``blocks.2``,
``attention_layers``, ``readout``, ...). Each prefix becomes one optimizer parameter group whose ``lr`` is the
optimizer's ``lr`` times its multiplier; a schedule then scales every group alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

from sagnn_lightning.errors import UsageError, param
from sagnn_lightning.lit.finetune import parameter_groups

#: the parameter of :class:`~sagnn_lightning.lit.SAGNNModule` that errors here name
LR_MULTIPLIERS = "model.lr_multipliers"


def check_lr_multipliers(model: nn.Module, multipliers: Mapping[str, float] | None) -> dict[str, float]:
    """``{prefix: multiplier}`` cleaned (prefixes stripped of dots), each multiplier finite and > 0, each prefix
    naming at least one parameter of ``model``.

    Raises:
        UsageError: a multiplier is not a finite number > 0, or a prefix names no parameter.
    """
    names = [name for name, _ in model.named_parameters()]
    checked: dict[str, float] = {}
    for raw, value in (multipliers or {}).items():
        prefix = str(raw).strip().strip(".")
        try:
            factor = float(value)
        except (TypeError, ValueError):
            factor = math.nan
        if not (math.isfinite(factor) and factor > 0):
            raise UsageError(
                f"{param(LR_MULTIPLIERS)}: the multiplier of {prefix!r} must be a number > 0, got {value!r}"
            )
        if not any(name == prefix or name.startswith(prefix + ".") for name in names):
            raise UsageError(
                f"{param(LR_MULTIPLIERS)}: {prefix!r} names no parameters; use any of: "
                f"{', '.join(parameter_groups(model))}"
            )
        checked[prefix] = factor
    return checked


def lr_param_groups(model: nn.Module, multipliers: Mapping[str, float]) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as optimizer groups ``{"params", "lr_multiplier"}``: one per prefix
    (the longest matching prefix wins), then the rest at multiplier 1. Empty groups are left out."""
    prefixes = sorted(multipliers, key=len, reverse=True)
    groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in prefixes}
    rest: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # frozen (``freeze``): no optimizer state
            continue
        owner = next((p for p in prefixes if name == p or name.startswith(p + ".")), None)
        (groups[owner] if owner is not None else rest).append(parameter)
    out = [{"params": params, "lr_multiplier": multipliers[prefix]} for prefix, params in groups.items() if params]
    return out + ([{"params": rest, "lr_multiplier": 1.0}] if rest else [])


def apply_lr_multipliers(optimizer: Optimizer) -> None:
    """Scale each group's ``lr`` by its ``lr_multiplier`` (once, on a new optimizer, before a scheduler reads the
    initial rates)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_multiplier", 1.0)


__all__ = ["LR_MULTIPLIERS", "apply_lr_multipliers", "check_lr_multipliers", "lr_param_groups"]
