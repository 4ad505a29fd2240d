"""A kernel checked once against a trusted path before it is trusted (``backend="auto"``'s safety net).

The Triton kernel is tested on every change under ``TRITON_INTERPRET=1`` (CPU), but a compiled GPU build
can still differ: a Triton/driver release, a GPU generation, a tile configuration the interpreter never
exercised. :class:`KernelSelfCheck` wraps such a kernel: the first time it meets a new
``(device, dtype, bias or not, variant)`` — ``variant`` being what selects a compiled kernel (tiles, warps, head
width, dot precision, dropout, bias; see :func:`sagnn_lightning.kernels.triton_attention.launch_variant`) — it
runs the kernel and the reference on that very batch, forward and backward (with the key bias and its gradient
when the call has one), and compares them (:func:`compare_with_reference`).
On agreement the kernel is used for that variant from then on; on a mismatch or an exception (e.g. a compile
error) it warns once (:class:`KernelFallbackWarning`) and the reference is used for that
``(device, dtype)`` from then on. The verdicts live in the instance, and nothing is decided at import:
:func:`sagnn_lightning.kernels.dispatch.checked_triton_attention` creates the one ``backend="auto"`` uses on
first use.

Callables (the packed varlen convention of :mod:`sagnn_lightning.kernels.reference`):

* ``kernel(q, k, v, cu_seqlens, max_seqlen, *, dropout_p, scale, validate[, key_bias]) -> out``
* ``reference(q, k, v, cu_seqlens, max_seqlen, *, dropout_p, scale[, key_bias]) -> out``

with ``q, k, v, out`` ``(total, heads, head_dim)``, both differentiable in ``q, k, v``. ``key_bias`` ``(total,)``
is passed only to calls that have one (so callables without a ``key_bias`` argument still serve bias-free
calls); with it both must be differentiable in it too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "InconclusiveCheck",
    "KernelFallbackWarning",
    "KernelSelfCheck",
    "TOLERANCE",
    "compare_with_reference",
    "tolerance",
]

AttentionFn = Callable[..., Tensor]


class KernelFallbackWarning(RuntimeWarning):
    """The Triton attention kernel failed its self-check; ``backend="auto"`` uses the PyTorch path instead."""


#: allowed max |kernel − reference| per tensor (out, dq, dk, dv), as a fraction of the reference's max |value|,
#: by input dtype: a few units of the dtype's rounding error on O(1) values (the kernel tests hold the kernel
#: to ≤ 2× the PyTorch path's own error against a float32 oracle, well inside these).
TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
#: float32 when TF32 matmuls are allowed (``torch.backends.cuda.matmul.allow_tf32``): 10-bit mantissa, as float16
TF32_TOLERANCE = 1e-2


def tolerance(dtype: torch.dtype) -> float:
    """The self-check's relative tolerance for inputs of ``dtype`` (see :data:`TOLERANCE`)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return TF32_TOLERANCE
    return TOLERANCE.get(dtype, TOLERANCE[torch.float32])


def _bias_kwargs(key_bias: Tensor | None) -> dict[str, Tensor]:
    """``{"key_bias": key_bias}``, or nothing without a bias (callables need not know the argument then)."""
    return {} if key_bias is None else {"key_bias": key_bias}


def _forward_backward(
    fn: AttentionFn,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    do: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    key_bias: Tensor | None = None,
    **kwargs: Any,
) -> list[Tensor]:
    """``[out, dq, dk, dv]`` (``+ [dbias]`` with a bias) of ``fn`` at fresh leaf copies of ``q, k, v`` (and
    ``key_bias``) with upstream gradient ``do``."""
    inputs = (q, k, v) if key_bias is None else (q, k, v, key_bias)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves[:3], cu_seqlens, max_seqlen, **_bias_kwargs(None if key_bias is None else leaves[3]), **kwargs)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return [out.detach(), *(g.detach() for g in grads)]


class InconclusiveCheck(Exception):
    """The reference itself gave non-finite values on this batch: nothing to compare against."""


def compare_with_reference(
    kernel: AttentionFn,
    reference: AttentionFn,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    validate: bool = True,
    key_bias: Tensor | None = None,
) -> str | None:
    """Run ``kernel`` and ``reference`` on this batch, forward and backward; ``None`` when they agree.

    Both run without dropout on detached copies of ``q, k, v`` (``(total, heads, head_dim)``) and, when given,
    of ``key_bias`` (``(total,)``, always requiring grad so that its gradient is checked too) with the same
    upstream gradient (standard normal, from a private generator), outside any autocast region and with
    gradients enabled even under ``torch.inference_mode``; out, dq, dk, dv (and dbias) must each agree within
    :func:`tolerance` of ``q.dtype`` relative to the reference's largest magnitude (plus a floor of
    1e-3 × that tolerance × the largest magnitude over all of them, for gradients that are ~0). With
    ``dropout_p > 0`` the kernel also runs once with dropout (its values cannot be compared: the two paths
    draw different masks) and must give finite outputs and gradients. Neither the global RNG state nor the
    inputs change.

    Returns:
        ``None`` on agreement, else the reason (first mismatching tensor with its error, or the exception
        the kernel raised).

    Raises:
        InconclusiveCheck: the reference gave non-finite values (e.g. non-finite inputs): no verdict.
    """
    gen = torch.Generator().manual_seed(0)
    do = torch.randn(q.shape, generator=gen, dtype=torch.float32).to(device=q.device, dtype=q.dtype)
    devices = [q.device] if q.device.type == "cuda" else []
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.random.fork_rng(devices=devices),
        torch.autocast(q.device.type, enabled=False),
    ):
        # normal tensors even when the caller is in inference mode: an inference tensor (cu_seqlens included, which
        # the kernel's autograd.Function saves for backward) cannot be saved for backward
        q, k, v, do, cu_seqlens = (t.clone() for t in (q, k, v, do, cu_seqlens))
        key_bias = None if key_bias is None else key_bias.clone()
        want = _forward_backward(reference, q, k, v, do, cu_seqlens, max_seqlen, key_bias, dropout_p=0.0, scale=scale)
        if not all(bool(torch.isfinite(t).all()) for t in want):
            raise InconclusiveCheck
        try:
            got = _forward_backward(
                kernel, q, k, v, do, cu_seqlens, max_seqlen, key_bias, dropout_p=0.0, scale=scale, validate=validate
            )
            if dropout_p > 0.0:
                dropped = _forward_backward(
                    kernel,
                    q,
                    k,
                    v,
                    do,
                    cu_seqlens,
                    max_seqlen,
                    key_bias,
                    dropout_p=dropout_p,
                    scale=scale,
                    validate=validate,
                )
        except Exception as err:  # noqa: BLE001 - any kernel failure (compile, launch, shape) means "do not use it"
            return f"the kernel raised {type(err).__name__}: {err}"
    tol = tolerance(q.dtype)
    magnitudes = [float(w.abs().max()) if w.numel() else 0.0 for w in want]
    floor = 1e-3 * tol * max(magnitudes, default=0.0)
    for name, g, w, mag in zip(("out", "dq", "dk", "dv", "dbias"), got, want, magnitudes):
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"{name} is {g.dtype} {tuple(g.shape)}, the reference {w.dtype} {tuple(w.shape)}"
        if not g.numel():
            continue
        worst = float((g.float() - w.float()).abs().max())
        allowed = tol * mag + floor
        if not worst <= allowed:  # also catches NaN
            return (
                f"{name}: max |kernel - reference| = {worst:.3g} > {allowed:.3g} ({tol:g} x max |reference| {mag:.3g})"
            )
    if dropout_p > 0.0 and not all(bool(torch.isfinite(t).all()) for t in dropped):
        return f"non-finite output or gradient with dropout_p={dropout_p}"
    return None


class KernelSelfCheck:
    """``kernel`` once checked against ``reference`` per ``(device, dtype, bias?, variant)``; ``reference`` after a
    failure.

    Args:
        kernel: the fast path, ``kernel(q, k, v, cu_seqlens, max_seqlen, *, dropout_p, scale, validate[, key_bias])``.
        reference: the trusted path, ``reference(q, k, v, cu_seqlens, max_seqlen, *, dropout_p, scale[, key_bias])``.
        variant: ``variant(q, max_seqlen, dropout_p, key_bias) -> hashable`` naming the compiled kernel these
            inputs select (each new one is checked once); default: one variant per ``(device, dtype)``. Calls with
            and without a key bias are always checked separately (the bias is another code path).
        name: how warnings name the kernel.

    Calling the instance (same arguments as ``kernel``) returns ``(total, heads, head_dim)`` from the kernel
    when this input's variant passed its check, else from the reference. A failure (mismatch or exception
    during the check) warns once with :class:`KernelFallbackWarning` and sends every later call with that
    ``(device, dtype)`` to the reference. When the reference itself is non-finite on the checked batch no
    verdict is recorded: that call uses the reference and the next one checks again. Exceptions the kernel
    raises after its variant passed are not caught.
    """

    def __init__(
        self,
        kernel: AttentionFn,
        reference: AttentionFn,
        variant: Callable[[Tensor, int, float, Tensor | None], Hashable] | None = None,
        name: str = "kernel",
    ) -> None:
        self.kernel, self.reference, self.variant, self.name = kernel, reference, variant, name
        self._passed: set[tuple[str, torch.dtype, bool, Hashable]] = set()
        self._failed: dict[tuple[str, torch.dtype], str] = {}

    @property
    def failures(self) -> dict[tuple[str, torch.dtype], str]:
        """``{(device, dtype): reason}`` of every failed check (a copy)."""
        return dict(self._failed)

    def uses_kernel(
        self, q: Tensor, max_seqlen: int, dropout_p: float = 0.0, key_bias: Tensor | None = None
    ) -> bool | None:
        """Whether a call with these inputs would use the kernel (``None``: not checked yet)."""
        device_dtype = (str(q.device), q.dtype)
        if device_dtype in self._failed:
            return False
        return True if self._key(q, max_seqlen, dropout_p, key_bias) in self._passed else None

    def reset(self) -> None:
        """Forget every verdict (the next call checks again)."""
        self._passed.clear()
        self._failed.clear()

    def _key(
        self, q: Tensor, max_seqlen: int, dropout_p: float, key_bias: Tensor | None
    ) -> tuple[str, torch.dtype, bool, Hashable]:
        variant = None if self.variant is None else self.variant(q, max_seqlen, dropout_p, key_bias)
        return str(q.device), q.dtype, key_bias is not None, variant

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cu_seqlens: Tensor,
        max_seqlen: int,
        *,
        dropout_p: float = 0.0,
        scale: float | None = None,
        validate: bool = True,
        key_bias: Tensor | None = None,
    ) -> Tensor:
        use = self.uses_kernel(q, max_seqlen, dropout_p, key_bias)
        if use is None:
            try:
                reason = compare_with_reference(
                    self.kernel,
                    self.reference,
                    q,
                    k,
                    v,
                    cu_seqlens,
                    max_seqlen,
                    scale=scale,
                    dropout_p=dropout_p,
                    validate=validate,
                    key_bias=key_bias,
                )
            except InconclusiveCheck:
                reason, use = None, False
            else:
                use = reason is None
                if reason is None:
                    self._passed.add(self._key(q, max_seqlen, dropout_p, key_bias))
                else:
                    self._fail(q, reason)
        bias = _bias_kwargs(key_bias)
        if use:
            return self.kernel(
                q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, validate=validate, **bias
            )
        return self.reference(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, **bias)

    def _fail(self, q: Tensor, reason: str) -> None:
        device, dtype = str(q.device), q.dtype
        self._failed[(device, dtype)] = reason
        warnings.warn(
            f"{self.name} failed its self-check against the PyTorch path on {device} {str(dtype).removeprefix('torch.')} "
            f"({reason}); attention_backend='auto' uses the PyTorch path for {device} "
            f"{str(dtype).removeprefix('torch.')} from now on (same results, more memory). Please report this with "
            "your GPU, torch and triton versions; attention_backend='torch' silences this warning, "
            "attention_backend='triton' forces the kernel.",
            KernelFallbackWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, passed={len(self._passed)}, "
            f"failed={sorted((d, str(t)) for d, t in self._failed)})"
        )
