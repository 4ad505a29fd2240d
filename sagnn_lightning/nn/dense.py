"""Dense stacks: ``Linear`` layers with an activation after each (MEGNet's φ and dense layers).

:class:`MLP` is an ``nn.Sequential`` (same children, parameter names and state dicts as before), whose eager
training forward runs a stack of ``Linear`` + shifted softplus as one autograd node with a hand-written backward
(:class:`ShiftedSoftplusStack`). That dispatches 11 aten ops per layer instead of ~16 (the recipe model has 47
such layers; ``benchmarks/step_ops.py``); the values are the same maths, equal to the plain ``nn.Sequential``
within float rounding (tested, with ``gradcheck`` in float64). Every other case — other activations, inference,
autocast, ``torch.compile`` (which fuses these itself), inputs that are not 2-D — runs ``nn.Sequential``'s forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sagnn_lightning.nn.parameter_views import ParameterViews, transposed

Activation = Literal["softplus2", "softplus", "silu"]

LOG2 = math.log(2.0)


class ShiftedSoftplus(nn.Module):
    """``softplus(x) − ln 2`` (zero at zero): MEGNet's ``softplus2``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x) - LOG2


def make_activation(name: Activation) -> nn.Module:
    """Activation module by name: ``"softplus2"`` (shifted softplus), ``"softplus"`` or ``"silu"``."""
    if name == "softplus2":
        return ShiftedSoftplus()
    if name == "softplus":
        return nn.Softplus()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; choose 'softplus2', 'softplus' or 'silu'")


def _softplus_backward(grad: Tensor, pre_activation: Tensor) -> Tensor:
    # F.softplus's defaults: beta 1, threshold 20
    return torch.ops.aten.softplus_backward(grad, pre_activation, 1.0, 20.0)


class ShiftedSoftplusStack(torch.autograd.Function):
    """``[ssp ∘] (ssp? ∘ Linear_K) ∘ … ∘ (ssp? ∘ Linear_1)`` as one autograd node (``ssp``: shifted softplus).

    ``plan = (activate_input, (activate_after_layer_1, …))``; ``params = (W_1, b_1, …, W_K, b_K)`` with
    ``W_k [out, in]`` as in ``nn.Linear``; ``weights_t = (W_1ᵀ, …, W_Kᵀ)``, views of the same memory (the
    arithmetic uses them, the gradients go to ``params``; :class:`~sagnn_lightning.nn.parameter_views.ParameterViews`
    keeps them between steps). Input ``x [M, in]`` → ``[M, out_K]``. First-order gradients only.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, plan: tuple[bool, tuple[bool, ...]], weights_t: tuple[Tensor, ...], *params: Tensor
    ) -> Tensor:
        activate_input, activate = plan
        saved: list[Tensor | None] = [x if activate_input else None]
        h = F.softplus(x) - LOG2 if activate_input else x
        for k, act in enumerate(activate):
            z = torch.addmm(params[2 * k + 1], h, weights_t[k])
            saved += [h, z if act else None]
            h = F.softplus(z) - LOG2 if act else z
        ctx.plan = plan
        ctx.save_for_backward(*saved, *params)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        activate_input, activate = ctx.plan
        tensors = ctx.saved_tensors
        num_layers = len(activate)
        x, layers, params = tensors[0], tensors[1 : 1 + 2 * num_layers], tensors[1 + 2 * num_layers :]
        needs = ctx.needs_input_grad
        grads: list[Tensor | None] = [None] * (2 * num_layers)
        for k in reversed(range(num_layers)):
            h, z = layers[2 * k], layers[2 * k + 1]
            if z is not None:
                grad = _softplus_backward(grad, z)
            if needs[3 + 2 * k]:
                grads[2 * k] = grad.t().mm(h)
            if needs[4 + 2 * k]:
                grads[2 * k + 1] = grad.sum(0)
            if k == 0 and not needs[0]:
                return (None, None, None, *grads)
            grad = grad.mm(params[2 * k])
        if activate_input:
            grad = _softplus_backward(grad, x)
        return (grad, None, None, *grads)


class MLP(nn.Sequential):
    """An ``nn.Sequential`` of ``Linear`` layers and activations (built by :func:`mlp`; slicing keeps the class).

    Shapes: ``[..., in]`` → ``[..., out]``. A stack of ``Linear`` and :class:`ShiftedSoftplus` only, on a 2-D
    input that needs gradients in eager mode outside autocast, runs as :class:`ShiftedSoftplusStack`.
    ``forward(x, start=k)`` runs the layers from index ``k`` on (``mlp[k:](x)`` without building a new module).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._weights_t = ParameterViews()

    def forward(self, x: Tensor, start: int = 0) -> Tensor:  # type: ignore[override]
        modules = list(self)[start:]
        plan = self._fused_plan(x, modules)
        if plan is None:
            for module in modules:
                x = module(x)
            return x
        weights_t: list[Tensor] = []
        params: list[Tensor] = []
        for k, module in enumerate(modules):
            if isinstance(module, nn.Linear):
                weight = module.weight
                weights_t.append(self._weights_t.get(start + k, weight, transposed))
                params += (weight, module.bias)
        return ShiftedSoftplusStack.apply(x, plan, tuple(weights_t), *params)

    def _fused_plan(self, x: Tensor, modules: list[nn.Module]) -> tuple[bool, tuple[bool, ...]] | None:
        if (
            x.dim() != 2
            or not torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or torch.is_autocast_enabled(x.device.type)
        ):
            return None
        activate_input = bool(modules) and isinstance(modules[0], ShiftedSoftplus)
        activate: list[bool] = []
        for module in modules[1:] if activate_input else modules:
            if isinstance(module, nn.Linear) and module.bias is not None and module.weight.dtype == x.dtype:
                activate.append(False)
            elif isinstance(module, ShiftedSoftplus) and activate and not activate[-1]:
                activate[-1] = True
            else:
                return None
        return (activate_input, tuple(activate)) if activate else None


def mlp(dims: Sequence[int], activation: Activation = "softplus2", activate_last: bool = True) -> MLP:
    """Dense stack ``dims[0] → dims[1] → … → dims[-1]`` with an activation after each layer (optionally not the last)."""
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least an input and an output width, got dims={tuple(dims)}")
    layers: list[nn.Module] = []
    for k, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if activate_last or k < len(dims) - 2:
            layers.append(make_activation(activation))
    return MLP(*layers)
