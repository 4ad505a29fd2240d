"""Concatenation of feature blocks whose backward is one split (autograd's ``cat`` slices once per input).

MEGNet's updates concatenate three feature blocks per block (``[v ‖ mean e ‖ u]``, ``[u ‖ mean e ‖ mean v]``) and the
readout three more: autograd's ``CatBackward0`` dispatches one ``slice`` per input, :class:`ConcatFeatures` one
``split_with_sizes`` for all of them (the same gradients, as views of the incoming one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class ConcatFeatures(torch.autograd.Function):
    """``torch.cat(tensors, dim=-1)`` of 2-D tensors ``[M, d_k]`` → ``[M, Σ d_k]``, as one autograd node."""

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> Tensor:
        ctx.sizes = [t.shape[-1] for t in tensors]
        return torch.cat(tensors, dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        return tuple(grad.split(ctx.sizes, dim=-1))


def concat_features(tensors: Sequence[Tensor]) -> Tensor:
    """``torch.cat(tensors, dim=-1)``: :class:`ConcatFeatures` in eager training on 2-D inputs of one dtype, plain
    ``torch.cat`` otherwise (inference, ``torch.compile``, mixed dtypes)."""
    if (
        not torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or any(t.dim() != 2 or t.dtype != tensors[0].dtype for t in tensors)
    ):
        return torch.cat(list(tensors), dim=-1)
    return ConcatFeatures.apply(*tensors)


__all__ = ["ConcatFeatures", "concat_features"]
