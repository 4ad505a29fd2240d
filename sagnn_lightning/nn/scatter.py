"""Segment (scatter) reductions over a packed batch: sum, mean, max and softmax.

Every op takes a mandatory ``dim_size`` (the number of segments: atoms for edge → atom
reductions, ``batch.num_graphs`` for graph-level ones), so nothing is read back from the GPU
(no ``index.max()``). Empty segments give 0 (sum, mean, max), like torch-scatter.

Backends: ``"torch"`` is the native path and always works: PyG's own ``torch_geometric.utils.scatter`` for
mean and max (equal results and speed), ``index_add_`` for sum (faster than PyG's, measured in
``benchmarks/scatter_ops.py``), and a softmax that dispatches fewer ops than PyG's (the GPU waits on dispatch);
``"torch_scatter"`` uses the compiled torch-scatter package; ``"auto"`` picks torch-scatter when it
imports (checked once, lazily, on first use; never at import of this module) and the native path
otherwise. Both are tested equal.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import torch
import torch_geometric.utils as pyg_utils
from torch import Tensor
from torch.autograd.function import once_differentiable

ScatterBackend = Literal["auto", "torch", "torch_scatter"]


@lru_cache(maxsize=1)
def _torch_scatter_module() -> Any:
    """The ``torch_scatter`` module when it imports (a broken binary counts as absent), else ``None``."""
    try:
        import torch_scatter
    except (ImportError, OSError):
        return None
    return torch_scatter


def torch_scatter_available() -> bool:
    """True when the optional ``torch_scatter`` package imports."""
    return _torch_scatter_module() is not None


def _use_torch_scatter(backend: ScatterBackend) -> bool:
    if backend == "torch":
        return False
    if backend == "torch_scatter":
        if not torch_scatter_available():
            raise RuntimeError(
                "backend='torch_scatter' requested but torch-scatter is not installed: "
                "`pip install torch-scatter` or use backend='torch'/'auto'."
            )
        return True
    if backend == "auto":
        # under torch.compile the native ops are traced into the graph (an import attempt would break it)
        return not torch.compiler.is_compiling() and torch_scatter_available()
    raise ValueError(f"unknown scatter backend {backend!r}; choose 'auto', 'torch' or 'torch_scatter'")


def _check(src: Tensor, index: Tensor, dim_size: int) -> None:
    if index.dim() != 1 or index.numel() != src.shape[0]:
        raise ValueError(
            f"scatter: index must be 1-D with one entry per row of src; got index {tuple(index.shape)} "
            f"for src {tuple(src.shape)}"
        )
    if not isinstance(dim_size, int) or dim_size < 0:
        raise ValueError(f"scatter: dim_size must be a non-negative Python int (number of segments), got {dim_size!r}")


def scatter_sum(src: Tensor, index: Tensor, dim_size: int, backend: ScatterBackend = "auto") -> Tensor:
    """Sum rows of ``src`` into segments.

    Args:
        src: ``[M, ...]`` values.
        index: ``[M]`` segment of each row (long), values in ``[0, dim_size)``.
        dim_size: number of segments ``S``.
        backend: ``"auto"``, ``"torch"`` or ``"torch_scatter"``.

    Returns:
        ``[S, ...]``; empty segments are 0.
    """
    _check(src, index, dim_size)
    if _use_torch_scatter(backend):
        return _torch_scatter_module().scatter_sum(src, index, dim=0, dim_size=dim_size)
    # kept instead of torch_geometric.utils.scatter(reduce="sum"): index_add_ measured 1.5x faster forward +
    # backward ([6000, 32] into 600 segments, 1 CPU thread: 643 vs 982 us; benchmarks/scatter_ops.py)
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def segment_counts(index: Tensor, dim_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rows per segment, at least 1, as ``[S, 1]`` in ``dtype``: the divisor of :func:`scatter_mean` for a 2-D
    ``src``, computed once when several means share an index."""
    ones = torch.ones(index.shape[0], 1, dtype=dtype, device=index.device)
    return ones.new_zeros(dim_size, 1).index_add_(0, index, ones).clamp_(min=1)


def scatter_mean(
    src: Tensor, index: Tensor, dim_size: int, backend: ScatterBackend = "auto", counts: Tensor | None = None
) -> Tensor:
    """Mean of the rows of each segment: ``[M, ...]`` → ``[S, ...]`` (empty segments are 0).

    ``counts``: this index's :func:`segment_counts` (``[S, 1]``, broadcast over the other dims) when already known;
    the mean is then one scatter-sum and one division (3 ops instead of 11 on the native path).
    """
    _check(src, index, dim_size)
    if counts is not None:
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not _use_torch_scatter(backend):
            return SegmentMean.apply(src, index, dim_size, counts)
        return scatter_sum(src, index, dim_size, backend) / counts
    if _use_torch_scatter(backend):
        return _torch_scatter_module().scatter_mean(src, index, dim=0, dim_size=dim_size)
    return pyg_utils.scatter(src, index, dim=0, dim_size=dim_size, reduce="mean")


class SegmentMean(torch.autograd.Function):
    """``scatter_sum(src, index, dim_size) / counts`` as one autograd node: its backward is ``(grad / counts)[index]``,
    2 aten ops where autograd's division and ``index_add_`` take 3. ``counts`` (:func:`segment_counts`) gets no
    gradient."""

    @staticmethod
    def forward(ctx: Any, src: Tensor, index: Tensor, dim_size: int, counts: Tensor) -> Tensor:
        ctx.save_for_backward(index, counts)
        return src.new_zeros((dim_size, *src.shape[1:])).index_add_(0, index, src).div_(counts)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        index, counts = ctx.saved_tensors
        return grad.div(counts).index_select(0, index), None, None, None


def scatter_max(src: Tensor, index: Tensor, dim_size: int, backend: ScatterBackend = "auto") -> Tensor:
    """Element-wise max of the rows of each segment: ``[M, ...]`` → ``[S, ...]`` (values only; empty → 0).

    Gradients flow to the arg-max rows (ties share the gradient evenly, native path).
    """
    _check(src, index, dim_size)
    if _use_torch_scatter(backend):
        return _torch_scatter_module().scatter_max(src, index, dim=0, dim_size=dim_size)[0]
    return pyg_utils.scatter(src, index, dim=0, dim_size=dim_size, reduce="max")


def scatter_softmax(src: Tensor, index: Tensor, dim_size: int, backend: ScatterBackend = "auto") -> Tensor:
    """Softmax of ``src`` within each segment (over rows sharing an ``index``), element-wise in the other dims.

    Args:
        src: ``[M, ...]`` logits.
        index: ``[M]`` segment of each row.
        dim_size: number of segments.
        backend: scatter backend for the max/sum reductions.

    Returns:
        ``[M, ...]`` weights; they sum to 1 over each non-empty segment.
    """
    _check(src, index, dim_size)
    # the shift is a constant per segment: softmax is invariant to it, so no gradient is needed through it
    if _use_torch_scatter(backend):
        shift = scatter_max(src.detach(), index, dim_size, backend=backend)
    else:  # 12 ops forward against 16 for torch_geometric.utils.softmax (same maths; it adds 1e-16 to the sum)
        detached = src.detach() if src.requires_grad else src
        rows = index if src.dim() == 1 else index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
        shift = detached.new_full((dim_size, *src.shape[1:]), float("-inf")).scatter_reduce_(0, rows, detached, "amax")
        exp = (src - shift.index_select(0, index)).exp()
        return exp / scatter_sum(exp, index, dim_size, backend=backend).index_select(0, index)
    exp = (src - shift[index]).exp()
    denom = scatter_sum(exp, index, dim_size, backend=backend)
    return exp / denom[index]
