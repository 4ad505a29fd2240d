"""Views of parameters (a transpose, a split) made once and reused while each parameter keeps its memory.

An eager training step multiplies by ``weight.t()`` in every dense layer: one aten op per layer and step that does
no arithmetic, but that the host dispatches and a GPU waits for (``benchmarks/step_ops.py``). A view shares its
parameter's memory, so optimizer steps and ``load_state_dict`` (both in place) show through it; only when the
parameter's tensor is replaced (``module.to(...)``, ``load_state_dict(..., assign=True)``, ``param.data = ...``)
do its data pointer or layout change, and the view is made again. The cached view keeps the memory it looks at
alive, so no other tensor can take that address while it is cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class ParameterViews:
    """A per-module cache: ``views.get(key, param, make)`` returns ``make(param)`` (views of ``param``'s memory,
    made under ``no_grad`` from ``param.detach()``), made again when ``param``'s memory or layout changed.

    The views carry no autograd history: callers pass the parameter itself to their ``autograd.Function`` for the
    gradient and use the view for the arithmetic. Not pickled or deep-copied (remade on first use).
    """

    def __init__(self) -> None:
        self._views: dict[Any, tuple[int, torch.Size, tuple[int, ...], Any]] = {}

    def get(self, key: Any, param: Tensor, make: Callable[[Tensor], T]) -> T:
        # the stamp is the memory address and layout: a new dtype or device means new memory, and the cached view
        # keeps the old memory alive, so its address cannot come back while cached (devices share one virtual
        # address space under CUDA's unified addressing)
        hit = self._views.get(key)
        if hit is not None and hit[0] == param.data_ptr() and hit[1] == param.shape and hit[2] == param.stride():
            return hit[3]
        with torch.no_grad():
            view = make(param.detach())
        self._views[key] = (param.data_ptr(), param.shape, param.stride(), view)
        return view

    def __getstate__(self) -> dict[str, Any]:
        return {"_views": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._views = {}


def transposed(param: Tensor) -> Tensor:
    """``param.t()``: what :meth:`ParameterViews.get` caches for a dense layer's weight ``[out, in]``."""
    return param.t()


__all__ = ["ParameterViews", "transposed"]
