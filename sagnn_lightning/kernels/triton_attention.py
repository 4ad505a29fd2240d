"""Triton kernels for packed variable-length multi-head attention (forward + backward).

Layout (flash-attention's varlen convention, see :mod:`sagnn_lightning.kernels.reference`):
``q, k, v, out`` are contiguous ``(total, heads, head_dim)``; sequence ``b`` (one crystal) owns rows
``cu_seqlens[b]:cu_seqlens[b+1]``; every row attends to all rows of its own sequence (no causal mask).

Reads top-down:

1. ``@triton.jit`` kernels — forward with online softmax (``O(BLOCK_M · BLOCK_N)`` scores in registers,
   never ``N × N`` in memory), then the backward: ``delta = rowsum(dO ∘ O)``, a dK/dV kernel that loops
   over the query blocks of its sequence and a dQ kernel that loops over the key blocks (no atomics).
   Every kernel's grid is ``(cdiv(max_seqlen, BLOCK), num_seqs, heads)``; a program whose block starts
   past its sequence's end exits at once, so padding costs one launch slot, not compute.
2. Launchers that check their inputs and pick block sizes.
3. :class:`VarlenAttentionFunction` (``torch.autograd.Function``) and the functional form
   :func:`varlen_attention_triton`.

``head_dim`` (1–128) is padded to a power of two ``≥ 16`` inside the kernels with masks on
``tl.arange``; memory is never padded. Softmax statistics are kept in float32 in base 2
(``lse₂ = m + log2(l)``, ``[heads, total]``). Dropout is applied to the normalised probabilities
(flash-attention semantics): ``O = (dropout(P) / (1 - p)) V``; its keep-mask is a pure function of
``(seed, head, global query row, key index)`` via Philox, so the backward regenerates it exactly
instead of storing it.

Optional ``key_bias`` ``(total,)`` (one additive score per key row, shared by all heads, in natural-log
units; see :mod:`sagnn_lightning.kernels.reference`): the launchers hand it to the kernels in float32 and
already multiplied by ``log2(e)`` (the kernels' scores are base 2), behind a ``HAS_BIAS`` ``constexpr`` so
the bias-free kernels are unchanged. Its gradient ``Σ_h Σ_i dS_ij`` is summed per ``(head, key row)`` by the
dK/dV kernel (which owns each key row: no atomics) into a float32 ``[heads, total]`` buffer, then over heads
in torch.

Testing on CPU: set ``TRITON_INTERPRET=1`` *before* this module is first imported; the kernels then run
on CPU tensors (slowly) through Triton's interpreter.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_HEAD_DIM, MAX_HEAD_DIM = 1, 128
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dropout_keep(seed, head, rows, cols, dropout_p):
    """Keep-mask (``True`` = kept) for a block; ``rows`` global query rows, ``cols`` local key indices.

    ``rows`` and ``cols`` are broadcast-compatible 2-D int32 blocks; the result depends only on
    ``(seed, head, row, col)``, so forward and backward draw the same mask with any block layout.
    """
    c0 = (rows + cols * 0).to(tl.uint32, bitcast=True)
    c1 = (cols + rows * 0).to(tl.uint32, bitcast=True)
    zero = c0 * 0
    r0, _, _, _ = tl.random.philox(seed, c0, c1, zero + head.to(tl.uint32, bitcast=True), zero)
    return tl.random.uint_to_uniform_float(r0) >= dropout_p


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """``tl.dot`` with float32 accumulation.

    ``INTERPRET_BF16`` (bfloat16 under ``TRITON_INTERPRET=1`` only) feeds float32 operands, which is exact
    for bfloat16 values: Triton 3.9's interpreter multiplies the raw uint16 bits of bfloat16 operands.
    """
    if INTERPRET_BF16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _round_bf16(x, INTERPRET_BF16: tl.constexpr):
    """Under ``INTERPRET_BF16``, round float32 ``x`` to the nearest-even bfloat16 value (kept as float32).

    The interpreter's own float32→bfloat16 cast truncates; GPUs round to nearest even. After this,
    storing to a bfloat16 pointer or a float32 ``_dot`` is exact. Identity otherwise.
    """
    if INTERPRET_BF16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    return x


@triton.jit
def _cast_like(x, ref, INTERPRET_BF16: tl.constexpr):
    """``x`` in ``ref``'s dtype for a ``_dot`` operand (rounded to nearest even)."""
    if INTERPRET_BF16:
        return _round_bf16(x, INTERPRET_BF16)
    return x.to(ref.dtype)


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    CU_SEQLENS,
    BIAS,
    qk_scale,
    seed,
    dropout_p,
    total,
    stride_t,
    stride_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    """One query block per program; online softmax over the key blocks of its sequence.

    ``BIAS`` (read only when ``HAS_BIAS``): float32 ``[total]`` key bias already in base-2 units.
    """
    pid_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    start = tl.load(CU_SEQLENS + seq)
    seqlen = tl.load(CU_SEQLENS + seq + 1) - start
    if pid_m * BLOCK_M >= seqlen:
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < seqlen
    d_valid = offs_d < HEAD_DIM
    base = head * stride_h + offs_d[None, :]
    q_off = (start + offs_m)[:, None].to(tl.int64) * stride_t + base
    q = tl.load(Q + q_off, mask=m_valid[:, None] & d_valid[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    inv_keep = 1.0 / (1.0 - dropout_p)
    for start_n in range(0, seqlen, BLOCK_N):
        cols = start_n + offs_n
        n_valid = cols < seqlen
        kv_off = (start + cols)[:, None].to(tl.int64) * stride_t + base
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), PRECISION, INTERPRET_BF16) * qk_scale
        if HAS_BIAS:
            s += tl.load(BIAS + start + cols, mask=n_valid, other=0.0)[None, :]
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if HAS_BIAS:
            # a block whose keys all have a -inf bias (so far) leaves m_new = -inf: subtract 0 instead of -inf
            # (-inf - -inf is NaN), which gives p = 0 and alpha = 0 on the still-empty l_i and acc
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_sub = m_new
        alpha = tl.exp2(m_i - m_sub)
        p = tl.exp2(s - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, head, (start + offs_m)[:, None], cols[None, :], dropout_p)
            p = tl.where(keep, p * inv_keep, 0.0)
        acc += _dot(_cast_like(p, v, INTERPRET_BF16), v, PRECISION, INTERPRET_BF16)
        m_i = m_new

    if HAS_BIAS:
        # every key at -inf (outside the contract) leaves l_i = 0: output 0, as PyTorch's SDPA gives, not NaN; and
        # lse = +inf, so the backward recomputes p = 0 there (zero gradients)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        acc = acc / l_safe[:, None]
        lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(l_safe))
    else:
        acc = acc / l_i[:, None]
        lse = m_i + tl.log2(l_i)
    tl.store(O + q_off, _round_bf16(acc, INTERPRET_BF16), mask=m_valid[:, None] & d_valid[None, :])
    tl.store(LSE + head * total + start + offs_m, lse, mask=m_valid)


@triton.jit
def _bwd_preprocess_kernel(
    O,
    DO,
    DELTA,
    total,
    stride_t,
    stride_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``delta[h, t] = Σ_d dO[t, h, d] · O[t, h, d]`` in float32; grid ``(cdiv(total, BLOCK_M), heads)``."""
    pid = tl.program_id(0)
    head = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < total)[:, None] & (offs_d < HEAD_DIM)[None, :]
    off = rows[:, None].to(tl.int64) * stride_t + head * stride_h + offs_d[None, :]
    o = tl.load(O + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + head * total + rows, tl.sum(o * do, 1), mask=rows < total)


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    CU_SEQLENS,
    BIAS,
    DBIAS,
    sm_scale,
    qk_scale,
    seed,
    dropout_p,
    total,
    stride_t,
    stride_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    """One key block per program; loops over the query blocks of its sequence (transposed scores).

    With ``HAS_BIAS`` it also writes ``DBIAS[head, key] = Σ_i dS[i, key]`` (float32 ``[heads, total]``).
    """
    pid_n = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    start = tl.load(CU_SEQLENS + seq)
    seqlen = tl.load(CU_SEQLENS + seq + 1) - start
    if pid_n * BLOCK_N >= seqlen:
        return

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < seqlen
    d_valid = offs_d < HEAD_DIM
    kv_off = (start + offs_n)[:, None].to(tl.int64) * stride_t + head * stride_h + offs_d[None, :]
    kv_mask = n_valid[:, None] & d_valid[None, :]
    k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(BIAS + start + offs_n, mask=n_valid, other=0.0)
        dbias = tl.zeros([BLOCK_N], dtype=tl.float32)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    inv_keep = 1.0 / (1.0 - dropout_p)
    for start_m in range(0, seqlen, BLOCK_M):
        rows = start_m + offs_m
        m_valid = rows < seqlen
        q_off = (start + rows)[:, None].to(tl.int64) * stride_t + head * stride_h + offs_d[None, :]
        q_mask = m_valid[:, None] & d_valid[None, :]
        q = tl.load(Q + q_off, mask=q_mask, other=0.0)
        do = tl.load(DO + q_off, mask=q_mask, other=0.0)
        lse = tl.load(LSE + head * total + start + rows, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + head * total + start + rows, mask=m_valid, other=0.0)
        # transposed block: rows of sT are keys, columns are queries
        s_t = _dot(k, tl.trans(q), PRECISION, INTERPRET_BF16) * qk_scale
        if HAS_BIAS:
            s_t += bias[:, None]
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(n_valid[:, None] & m_valid[None, :], p_t, 0.0)
        dp_t = _dot(v, tl.trans(do), PRECISION, INTERPRET_BF16)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, head, (start + rows)[None, :], offs_n[:, None], dropout_p)
            p_drop = tl.where(keep, p_t * inv_keep, 0.0)
            dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
        else:
            p_drop = p_t
        dv += _dot(_cast_like(p_drop, do, INTERPRET_BF16), do, PRECISION, INTERPRET_BF16)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(_cast_like(ds_t, q, INTERPRET_BF16), q, PRECISION, INTERPRET_BF16)
        if HAS_BIAS:
            dbias += tl.sum(ds_t, 1)  # dS before the scale: the bias enters S with coefficient 1

    tl.store(DK + kv_off, _round_bf16(dk * sm_scale, INTERPRET_BF16), mask=kv_mask)
    tl.store(DV + kv_off, _round_bf16(dv, INTERPRET_BF16), mask=kv_mask)
    if HAS_BIAS:
        tl.store(DBIAS + head * total + start + offs_n, dbias, mask=n_valid)


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
    CU_SEQLENS,
    BIAS,
    sm_scale,
    qk_scale,
    seed,
    dropout_p,
    total,
    stride_t,
    stride_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    """One query block per program; loops over the key blocks of its sequence."""
    pid_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    start = tl.load(CU_SEQLENS + seq)
    seqlen = tl.load(CU_SEQLENS + seq + 1) - start
    if pid_m * BLOCK_M >= seqlen:
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < seqlen
    d_valid = offs_d < HEAD_DIM
    q_off = (start + offs_m)[:, None].to(tl.int64) * stride_t + head * stride_h + offs_d[None, :]
    q_mask = m_valid[:, None] & d_valid[None, :]
    q = tl.load(Q + q_off, mask=q_mask, other=0.0)
    do = tl.load(DO + q_off, mask=q_mask, other=0.0)
    lse = tl.load(LSE + head * total + start + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + head * total + start + offs_m, mask=m_valid, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    inv_keep = 1.0 / (1.0 - dropout_p)
    for start_n in range(0, seqlen, BLOCK_N):
        cols = start_n + offs_n
        n_valid = cols < seqlen
        kv_off = (start + cols)[:, None].to(tl.int64) * stride_t + head * stride_h + offs_d[None, :]
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), PRECISION, INTERPRET_BF16) * qk_scale
        if HAS_BIAS:
            s += tl.load(BIAS + start + cols, mask=n_valid, other=0.0)[None, :]
        p = tl.exp2(s - lse[:, None])
        p = tl.where(m_valid[:, None] & n_valid[None, :], p, 0.0)
        dp = _dot(do, tl.trans(v), PRECISION, INTERPRET_BF16)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, head, (start + offs_m)[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(_cast_like(ds, k, INTERPRET_BF16), k, PRECISION, INTERPRET_BF16)

    tl.store(DQ + q_off, _round_bf16(dq * sm_scale, INTERPRET_BF16), mask=q_mask)


@triton.jit
def _dropout_mask_kernel(
    MASK,
    CU_SEQLENS,
    seed,
    dropout_p,
    max_seqlen,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Writes the keep-mask the attention kernels use, dense ``[B, heads, max_seqlen, max_seqlen]`` (tests)."""
    pid_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    heads = tl.num_programs(2)
    start = tl.load(CU_SEQLENS + seq)
    seqlen = tl.load(CU_SEQLENS + seq + 1) - start
    if pid_m * BLOCK_M >= seqlen:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    base = ((seq * heads + head).to(tl.int64) * max_seqlen + offs_m[:, None]) * max_seqlen
    for start_n in range(0, seqlen, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, head, (start + offs_m)[:, None], cols[None, :], dropout_p)
        mask = (offs_m < seqlen)[:, None] & (cols < seqlen)[None, :]
        tl.store(MASK + base + cols[None, :], keep.to(tl.int8), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def supports(q: Tensor) -> bool:
    """Whether the kernel takes ``q``'s dtype and head_dim (``backend="auto"`` falls back to torch otherwise)."""
    return q.dtype in SUPPORTED_DTYPES and MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float,
    key_bias: Tensor | None = None,
) -> None:
    """Shape/dtype/device/layout checks (free: no device synchronisation)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be (total, heads, head_dim), got shape {tuple(t.shape)}")
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}: q, k, v must match")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but q is {q.dtype} on {q.device}: use one dtype and device"
            )
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: call .contiguous() first")
    if q.device.type != "cuda" and not interpreted():
        raise ValueError(
            f"Triton attention needs CUDA tensors, got {q.device}: use backend='torch' on CPU "
            "(or set TRITON_INTERPRET=1 before importing sagnn_lightning to test the kernels on CPU)"
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"Triton attention supports float32, float16 and bfloat16, got {q.dtype}: cast the inputs or use backend='torch'"
        )
    head_dim = q.shape[-1]
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"Triton attention supports head_dim in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {head_dim}: change dim/heads or use backend='torch'"
        )
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"cu_seqlens must be a 1-D int32 tensor [B + 1] with B >= 1, got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.numel() - 1 > 65535:
        raise ValueError(
            f"at most 65,535 sequences per call (CUDA grid y-limit), got {cu_seqlens.numel() - 1}: split the batch"
        )
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}: move it to q's device")
    if not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a non-negative Python int, got {max_seqlen!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if key_bias is not None:
        if key_bias.dim() != 1 or key_bias.shape[0] != q.shape[0]:
            raise ValueError(
                f"key_bias must be 1-D (total,) = ({q.shape[0]},), one value per packed key row shared by all heads, "
                f"got shape {tuple(key_bias.shape)}"
            )
        if key_bias.device != q.device:
            raise ValueError(f"key_bias is on {key_bias.device} but q is on {q.device}: move it to q's device")
        if not key_bias.is_floating_point():
            raise ValueError(f"key_bias must be a floating-point tensor, got {key_bias.dtype}")


def _check_values(cu_seqlens: Tensor, total: int, max_seqlen: int) -> None:
    """Value checks on ``cu_seqlens`` in one device→host read."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    bad = (
        torch.stack(
            [
                cu_seqlens[0] != 0,
                cu_seqlens[-1] != total,
                (lengths < 0).any(),
                (lengths > max_seqlen).any(),
            ]
        )
        .cpu()
        .tolist()
    )
    if any(bad):
        raise ValueError(
            f"invalid cu_seqlens for total={total}, max_seqlen={max_seqlen}: need cu_seqlens[0] == 0 ({not bad[0]}), "
            f"cu_seqlens[-1] == total ({not bad[1]}), non-decreasing ({not bad[2]}), every length <= max_seqlen ({not bad[3]})"
        )


def _tiles(max_seqlen: int, head_block: int, dtype: torch.dtype, backward: bool) -> tuple[int, int]:
    """Square tile size and ``num_warps``, chosen so no kernel spills registers on sm_90 (checked with ptxas).

    16-bit inputs: 64-row tiles (32 for a head_dim-128 backward), 8 warps at head_dim 128. float32 (IEEE
    dots without tensor cores) needs smaller tiles. Short batches (every crystal ≤ 16 or ≤ 32 atoms) use
    16/32-row tiles so fewer lanes are masked.
    """
    wide = head_block > 64
    if dtype == torch.float32:
        block = 64 if head_block <= (32 if backward else 16) else 32
    else:
        block = 32 if backward and wide else 64
    block = min(block, 16 if max_seqlen <= 16 else 32 if max_seqlen <= 32 else 64)
    return block, 8 if wide else 4


def interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    return not isinstance(_fwd_kernel, triton.runtime.jit.JITFunction)


def _dot_config(dtype: torch.dtype) -> dict[str, object]:
    """float32 matmuls follow PyTorch's TF32 switch (off by default → IEEE); bf16 upcast under the interpreter."""
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {"PRECISION": precision, "INTERPRET_BF16": interpreted() and dtype == torch.bfloat16}


def _head_block(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def launch_variant(q: Tensor, max_seqlen: int, dropout_p: float = 0.0, key_bias: Tensor | None = None) -> tuple:
    """What selects a compiled variant of the kernels for these inputs (with the device and dtype).

    ``(head_dim, head lanes, forward (tile, warps), backward (tile, warps), dot precision, dropout?, bias?)`` —
    the ``constexpr`` arguments and launch options; ``backend="auto"``'s self-check
    (:class:`sagnn_lightning.kernels.self_check.KernelSelfCheck`) checks each variant once. The bias's dtype does
    not matter: the kernels always get it in float32.
    """
    head_dim = int(q.shape[-1])
    block_d = _head_block(head_dim)
    return (
        head_dim,
        block_d,
        _tiles(max_seqlen, block_d, q.dtype, backward=False),
        _tiles(max_seqlen, block_d, q.dtype, backward=True),
        _dot_config(q.dtype)["PRECISION"],
        dropout_p > 0.0,
        key_bias is not None,
    )


def attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    block_m: int | None = None,
    block_n: int | None = None,
    key_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel. Returns ``out (total, heads, head_dim)`` and ``lse₂ [heads, total]`` (float32).

    ``key_bias``: contiguous float32 ``(total,)`` **in base-2 units** (``key_bias · log2(e)``, see
    :func:`_base2_bias`), or None.
    """
    total, heads, head_dim = q.shape
    num_seqs = cu_seqlens.numel() - 1
    out = torch.empty_like(q)
    lse = torch.empty(heads, total, device=q.device, dtype=torch.float32)
    if total == 0 or max_seqlen == 0:
        return out, lse
    block_d = _head_block(head_dim)
    block, num_warps = _tiles(max_seqlen, block_d, q.dtype, backward=False)
    bm, bn = block_m or block, block_n or block
    grid = (triton.cdiv(max_seqlen, bm), num_seqs, heads)
    _fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        cu_seqlens,
        lse if key_bias is None else key_bias,  # never read without HAS_BIAS
        scale * _LOG2E,
        seed,
        dropout_p,
        total,
        q.stride(0),
        q.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=block_d,
        HAS_DROPOUT=dropout_p > 0.0,
        HAS_BIAS=key_bias is not None,
        **_dot_config(q.dtype),
        num_warps=num_warps,
        num_stages=2,
    )
    return out, lse


def attention_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    block_m: int | None = None,
    block_n: int | None = None,
    key_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward kernels. Returns ``dq, dk, dv``, each ``(total, heads, head_dim)``, and ``dbias``.

    ``key_bias`` as for :func:`attention_forward`; ``dbias`` is the float32 ``(total,)`` gradient w.r.t. the
    natural-log-unit bias (``Σ_h Σ_i dS_ij``), None without a bias.
    """
    total, heads, head_dim = q.shape
    num_seqs = cu_seqlens.numel() - 1
    do = do.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # per-head partial sums written by the dK/dV kernel (each program owns its key rows): no atomics
    dbias_heads = None if key_bias is None else torch.empty(heads, total, device=q.device, dtype=torch.float32)
    if total == 0 or max_seqlen == 0:
        return dq, dk, dv, None if dbias_heads is None else dbias_heads.sum(0)
    block_d = _head_block(head_dim)
    delta = torch.empty(heads, total, device=q.device, dtype=torch.float32)
    pre_block = 64
    _bwd_preprocess_kernel[(triton.cdiv(total, pre_block), heads)](
        out,
        do,
        delta,
        total,
        q.stride(0),
        q.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_M=pre_block,
        BLOCK_D=block_d,
    )
    block, num_warps = _tiles(max_seqlen, block_d, q.dtype, backward=True)
    bm, bn = block_m or block, block_n or block
    common = dict(
        HEAD_DIM=head_dim,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=block_d,
        HAS_DROPOUT=dropout_p > 0.0,
        HAS_BIAS=key_bias is not None,
        **_dot_config(q.dtype),
        num_warps=num_warps,
        num_stages=2,
    )
    args = (scale, scale * _LOG2E, seed, dropout_p, total, q.stride(0), q.stride(1))
    # without a bias, BIAS and DBIAS are never read or written: any float32 pointer will do
    bias = delta if key_bias is None else key_bias
    dbias_out = delta if dbias_heads is None else dbias_heads
    _bwd_dkdv_kernel[(triton.cdiv(max_seqlen, bn), num_seqs, heads)](
        q, k, v, do, dk, dv, lse, delta, cu_seqlens, bias, dbias_out, *args, **common
    )
    _bwd_dq_kernel[(triton.cdiv(max_seqlen, bm), num_seqs, heads)](
        q, k, v, do, dq, lse, delta, cu_seqlens, bias, *args, **common
    )
    return dq, dk, dv, None if dbias_heads is None else dbias_heads.sum(0)


def dropout_keep_mask(cu_seqlens: Tensor, heads: int, max_seqlen: int, dropout_p: float, seed: int) -> Tensor:
    """The kernels' dropout keep-mask as a dense bool ``[B, heads, max_seqlen, max_seqlen]`` (for tests/debugging).

    Entries outside a sequence (``i`` or ``j`` ≥ its length) are ``False``.
    """
    num_seqs = cu_seqlens.numel() - 1
    mask = torch.zeros(num_seqs, heads, max_seqlen, max_seqlen, dtype=torch.int8, device=cu_seqlens.device)
    if max_seqlen > 0:
        block = 16
        grid = (triton.cdiv(max_seqlen, block), num_seqs, heads)
        _dropout_mask_kernel[grid](mask, cu_seqlens, seed, dropout_p, max_seqlen, BLOCK_M=block, BLOCK_N=block)
    return mask.bool()


# ----------------------------------------------------------------------------------------------
# Autograd function and functional form
# ----------------------------------------------------------------------------------------------


def _base2_bias(key_bias: Tensor | None) -> Tensor | None:
    """``key_bias · log2(e)`` as contiguous float32 (what the kernels add to their base-2 scores), or None."""
    return None if key_bias is None else (key_bias.detach().to(torch.float32) * _LOG2E).contiguous()


class VarlenAttentionFunction(torch.autograd.Function):
    """Fused packed varlen attention; saves ``q, k, v, out``, the float32 ``lse`` (``O(total · heads)``) and the
    float32 base-2 key bias, if any (``O(total)``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cu_seqlens: Tensor,
        max_seqlen: int,
        scale: float,
        dropout_p: float,
        seed: int,
        block_m: int | None,
        block_n: int | None,
        key_bias: Tensor | None = None,
    ) -> Tensor:
        bias2 = _base2_bias(key_bias)
        out, lse = attention_forward(
            q, k, v, cu_seqlens, max_seqlen, scale, dropout_p, seed, block_m, block_n, key_bias=bias2
        )
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, bias2)
        ctx.config = (max_seqlen, scale, dropout_p, seed, block_m, block_n)
        ctx.bias_dtype = None if key_bias is None else key_bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, do: Tensor):  # type: ignore[override]
        q, k, v, out, lse, cu_seqlens, bias2 = ctx.saved_tensors
        max_seqlen, scale, dropout_p, seed, block_m, block_n = ctx.config
        dq, dk, dv, dbias = attention_backward(
            do, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, dropout_p, seed, block_m, block_n, key_bias=bias2
        )
        # the kernels compute dbias whenever there is a bias (one compiled variant); it is handed back only if asked
        dbias = dbias.to(ctx.bias_dtype) if dbias is not None and ctx.needs_input_grad[10] else None
        return dq, dk, dv, None, None, None, None, None, None, None, dbias


def varlen_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: int | None = None,
    validate: bool = True,
    block_m: int | None = None,
    block_n: int | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Packed variable-length attention with the fused Triton kernels (differentiable in q, k, v and key_bias).

    Args:
        q, k, v: contiguous ``(total, heads, head_dim)``, float32/float16/bfloat16, ``1 <= head_dim <= 128``.
        cu_seqlens: ``[B + 1]`` int32 (int64, e.g. a PyG ``ptr``, is converted) on q's device.
        max_seqlen: longest sequence (Python int; ``batch.max_num_atoms``).
        dropout_p: attention-probability dropout (pass 0.0 in eval).
        scale: softmax scale, default ``1 / sqrt(head_dim)``.
        seed: Philox seed for dropout; default draws one from torch's CPU generator (``torch.manual_seed``).
        validate: check ``cu_seqlens`` values (one device→host read); a wrong ``max_seqlen`` would
            otherwise leave rows uncomputed.
        block_m, block_n: tile sizes (powers of two ≥ 16) overriding the heuristic (tests, tuning).
        key_bias: optional ``(total,)`` floating-point additive score per key row, shared by all heads, in
            natural-log units: ``S_ij = scale · q_i·k_j + key_bias[j]``. ``-inf`` masks a key; every non-empty
            sequence needs a finite one. Read in float32 whatever its dtype; its gradient (in its dtype) is
            returned when it requires grad.

    Returns:
        ``(total, heads, head_dim)`` in q's dtype.
    """
    if cu_seqlens.dtype == torch.int64:
        cu_seqlens = cu_seqlens.to(torch.int32)
    _check_inputs(q, k, v, cu_seqlens, max_seqlen, dropout_p, key_bias)
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if block is not None and (block < 16 or block & (block - 1)):
            raise ValueError(f"{name} must be a power of two >= 16, got {block}")
    if validate:
        _check_values(cu_seqlens, q.shape[0], max_seqlen)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if dropout_p > 0.0 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return VarlenAttentionFunction.apply(
        q, k, v, cu_seqlens, max_seqlen, scale, float(dropout_p), seed or 0, block_m, block_n, key_bias
    )
