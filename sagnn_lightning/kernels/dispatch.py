"""Backend dispatch for packed variable-length attention.

* ``backend="torch"``: padded SDPA (:func:`~sagnn_lightning.kernels.reference.varlen_attention_padded`).
* ``backend="triton"``: the fused Triton kernel, always (errors propagate; it never falls back).
* ``backend="auto"``: the Triton kernel on CUDA when Triton imports and the kernel takes the input (not float64,
  head_dim ≤ 128), **after a self-check**: the first call for each device, dtype and compiled kernel variant
  runs the kernel and the PyTorch path on that batch, forward and backward, and compares them
  (:class:`~sagnn_lightning.kernels.self_check.KernelSelfCheck`). On a mismatch or a kernel exception (e.g. a
  compile error) it warns once (``KernelFallbackWarning``) and uses the PyTorch path for that device and dtype
  from then on. Everything else (CPU, no Triton) uses the PyTorch path.

Every backend takes an optional ``key_bias`` ``(total,)``: an additive score per key row (see
:mod:`sagnn_lightning.kernels.reference`); with a bias the kernel is a separate compiled variant, self-checked on
its own (bias gradient included).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from torch import Tensor

from sagnn_lightning.kernels.reference import varlen_attention_padded
from sagnn_lightning.kernels.self_check import KernelSelfCheck

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


@cache
def checked_triton_attention() -> KernelSelfCheck:
    """The Triton kernel behind its self-check against the PyTorch path: what ``backend="auto"`` calls on CUDA.

    Created on first use (nothing happens at import) and kept for the process, so each
    ``(device, dtype, kernel variant)`` is checked once; ``checked_triton_attention.cache_clear()`` forgets the
    verdicts. Requires Triton (:func:`triton_available`).
    """
    from sagnn_lightning.kernels.triton_attention import launch_variant, varlen_attention_triton

    return KernelSelfCheck(
        varlen_attention_triton, varlen_attention_padded, variant=launch_variant, name="The Triton attention kernel"
    )


def resolve_backend(backend: Backend, device_type: str) -> str:
    """``"auto"`` → ``"triton"`` on CUDA when Triton imports, else ``"torch"``.

    :func:`varlen_attention` further sends ``"auto"`` to torch for inputs the kernel does not take
    (float64, head_dim > 128), and through the kernel's self-check (:func:`checked_triton_attention`).
    """
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "backend='triton' requested but Triton is not installed: `pip install triton` or use backend='torch'."
            )
        return "triton"
    if backend == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    raise ValueError(f"unknown attention backend {backend!r}; choose 'auto', 'torch' or 'triton'")


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: Backend = "auto",
    validate: bool = True,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Attention of every packed row over the rows of its own sequence.

    Args:
        q: queries ``(total, heads, head_dim)``, packed over the sequences.
        k: keys, same shape.
        v: values, same shape.
        cu_seqlens: ``[B + 1]`` cumulative sequence lengths (a batch's ``ptr``), int32 or int64.
        max_seqlen: longest sequence (Python int).
        dropout_p: attention dropout probability (training only; pass 0.0 in eval).
        scale: softmax scale, default ``1 / sqrt(head_dim)``.
        backend: ``"auto"``, ``"torch"`` (padded SDPA) or ``"triton"`` (fused varlen kernel, no fallback).
            ``"auto"`` takes the kernel on CUDA once it has passed its self-check on this device and dtype
            (see the module docstring), else the PyTorch path.
        validate: let the Triton launcher check the values of ``cu_seqlens`` against ``max_seqlen``
            (one device→host read per call); callers whose batches come from ``collate_graphs`` pass False.
        key_bias: optional ``(total,)`` float additive score per key row, shared by all heads, in natural-log units:
            ``softmax_j(scale · q_i·k_j + key_bias[j])``. ``key_bias = log(w)`` weights key ``j`` by ``w_j``
            (fraction-weighted attention over a composition's elements). ``-inf`` masks a key out; every non-empty
            sequence needs at least one finite key. Differentiable on every backend.

    Returns:
        ``(total, heads, head_dim)``.
    """
    if resolve_backend(backend, q.device.type) == "triton":
        from sagnn_lightning.kernels.triton_attention import (
            supports,
            varlen_attention_triton,
        )

        if backend == "triton":
            return varlen_attention_triton(
                q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, validate=validate, key_bias=key_bias
            )
        # "auto": torch for what the kernel does not take (float64, head_dim > 128); the kernel once it passed
        # its self-check for this device, dtype and variant (with or without a bias)
        if supports(q):
            return checked_triton_attention()(
                q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, validate=validate, key_bias=key_bias
            )
    return varlen_attention_padded(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, key_bias=key_bias)
