"""Backend dispatch for packed variable-length attention."""

from __future__ import annotations

from functools import cache
from typing import Literal

from torch import Tensor

from sagnn_lightning.kernels.reference import varlen_attention_padded

Backend = Literal["auto", "torch", "triton"]


@cache
def triton_available() -> bool:
    """True when the Triton kernel module imports.

    Checked on first use (no import-time side effects) and remembered, so a CUDA run without Triton does not
    retry a failing import on every attention call; ``triton_available.cache_clear()`` re-checks.
    """
    try:
        from sagnn_lightning.kernels import triton_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: Backend, device_type: str) -> str:
    """``"auto"`` → ``"triton"`` on CUDA when Triton imports, else ``"torch"``.

    :func:`varlen_attention` further sends ``"auto"`` to torch for inputs the kernel does not take
    (float64, head_dim > 128).
    """
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' requested but Triton is not installed: `pip install triton` or use backend='torch'.")
        return "triton"
    if backend == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    raise ValueError(f"unknown attention backend {backend!r}; choose 'auto', 'torch' or 'triton'")


def varlen_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, *,
    dropout_p: float = 0.0, scale: float | None = None, backend: Backend = "auto", validate: bool = True,
) -> Tensor:
    """Attention of every packed row over the rows of its own sequence.

    Args:
        q, k, v: ``(total, heads, head_dim)``.
        cu_seqlens: ``[B + 1]`` cumulative sequence lengths (a batch's ``ptr``), int32 or int64.
        max_seqlen: longest sequence (Python int).
        dropout_p: attention dropout probability (training only; pass 0.0 in eval).
        scale: softmax scale, default ``1 / sqrt(head_dim)``.
        backend: ``"auto"``, ``"torch"`` (padded SDPA) or ``"triton"`` (fused varlen kernel).
        validate: let the Triton launcher check the values of ``cu_seqlens`` against ``max_seqlen``
            (one device→host read per call); callers whose batches come from ``collate_graphs`` pass False.

    Returns:
        ``(total, heads, head_dim)``.
    """
    if resolve_backend(backend, q.device.type) == "triton":
        from sagnn_lightning.kernels.triton_attention import (
            supports,
            varlen_attention_triton,
        )

        # "auto" falls back to torch for what the kernel does not take (float64, head_dim > 128)
        if backend == "triton" or supports(q):
            return varlen_attention_triton(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale,
                                           validate=validate)
    return varlen_attention_padded(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale)
