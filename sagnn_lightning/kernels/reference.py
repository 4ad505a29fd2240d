"""Plain-torch packed variable-length attention: the oracle and the CPU path.

Packed layout (flash-attention's varlen convention): ``q, k, v`` are ``(total, heads, head_dim)``,
sequence ``b`` occupies rows ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32, ``[B+1]``, = a batch's ``ptr``),
and ``max_seqlen`` is the longest sequence (a Python int, known on the CPU).
Each row attends to every row of its own sequence only (no causal mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def varlen_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, scale: float | None = None
) -> Tensor:
    """Naive per-sequence softmax attention, computed in float32 or better (the test oracle).

    Shapes: ``q, k, v`` ``(total, heads, head_dim)``; returns ``(total, heads, head_dim)`` in ``q.dtype``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].to(compute).transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        scores = qs @ ks.transpose(-1, -2) * scale
        out[start:end] = (scores.softmax(dim=-1) @ vs).transpose(0, 1).to(q.dtype)
    return out


def seqlens_to_batch(cu_seqlens: Tensor, total: int) -> Tensor:
    """``[total]`` sequence index of every packed row (no host sync: ``output_size`` is given)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lengths, output_size=total)


def varlen_attention_padded(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Padded ``scaled_dot_product_attention`` with a key-padding mask (the PyTorch backend).

    Packs ``(total, H, D)`` into ``(B, H, max_seqlen, D)``, attends with a boolean key mask, and
    unpacks. Memory is ``O(B · max_seqlen²)`` per head: the cost the Triton kernel avoids.
    """
    total, heads, dim = q.shape
    num_seqs = cu_seqlens.numel() - 1
    seq = seqlens_to_batch(cu_seqlens, total)
    slot = torch.arange(total, device=q.device) - cu_seqlens.long()[seq]

    def to_dense(t: Tensor) -> Tensor:
        dense = t.new_zeros(num_seqs, max_seqlen, heads, dim)
        dense[seq, slot] = t
        return dense.transpose(1, 2)  # (B, H, L, D)

    valid = torch.zeros(num_seqs, max_seqlen, dtype=torch.bool, device=q.device)
    valid[seq, slot] = True
    valid[:, 0] = True  # an empty sequence would give an all-masked row (NaN); its output is discarded anyway
    out = F.scaled_dot_product_attention(
        to_dense(q),
        to_dense(k),
        to_dense(v),
        attn_mask=valid[:, None, None, :],
        dropout_p=dropout_p,
        scale=scale,
    )
    return out.transpose(1, 2)[seq, slot]
