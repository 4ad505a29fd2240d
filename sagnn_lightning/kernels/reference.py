"""Plain-torch packed variable-length attention: the oracle, the CPU path, and the path that returns the weights.

Packed layout (flash-attention's varlen convention): ``q, k, v`` are ``(total, heads, head_dim)``,
sequence ``b`` occupies rows ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32, ``[B+1]``, = a batch's ``ptr``),
and ``max_seqlen`` is the longest sequence (a Python int, known on the CPU).
Each row attends to every row of its own sequence only (no causal mask).

Optional ``key_bias`` ``(total,)``: one additive score per key row, shared by all heads and queries, in
natural-log units: ``S_ij = scale · q_i·k_j + key_bias[j]`` before the softmax. With ``key_bias = log w``
this is fraction-weighted attention ``Σ_j w_j exp(s_ij) v_j / Σ_j w_j exp(s_ij)`` (Roost-style attention
over the elements of a composition). ``-inf`` entries mask keys out; every non-empty sequence needs at least
one finite key (for an all-masked one this oracle gives NaN rows, the padded path and the Triton kernel zeros).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def varlen_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    scale: float | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Naive per-sequence softmax attention, computed in float32 or better (the test oracle).

    Shapes: ``q, k, v`` ``(total, heads, head_dim)``, ``key_bias`` ``(total,)`` or None; returns
    ``(total, heads, head_dim)`` in ``q.dtype``. Differentiable in ``q, k, v`` and ``key_bias``.
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
        if key_bias is not None:
            scores = scores + key_bias[start:end].to(compute)  # (L,) broadcast over heads and queries
        out[start:end] = (scores.softmax(dim=-1) @ vs).transpose(0, 1).to(q.dtype)
    return out


def seqlens_to_batch(cu_seqlens: Tensor, total: int) -> Tensor:
    """``[total]`` sequence index of every packed row (no host sync: ``output_size`` is given)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lengths, output_size=total)


def _padded_layout(q: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """``(seq [total], slot [total], to_dense)``: each packed row's sequence and position in it, and the map
    ``(total, H, D)`` → zero-padded ``(B, H, max_seqlen, D)`` that the padded paths attend in."""
    total, heads, dim = q.shape
    num_seqs = cu_seqlens.numel() - 1
    seq = seqlens_to_batch(cu_seqlens, total)
    slot = torch.arange(total, device=q.device) - cu_seqlens.long()[seq]

    def to_dense(t: Tensor) -> Tensor:
        dense = t.new_zeros(num_seqs, max_seqlen, heads, dim)
        dense[seq, slot] = t
        return dense.transpose(1, 2)  # (B, H, L, D)

    return seq, slot, to_dense


def _additive_key_mask(seq: Tensor, slot: Tensor, num_seqs: int, max_seqlen: int, values: Tensor) -> Tensor:
    """``(B, max_seqlen)`` additive key mask: ``values [total]`` (the key bias) on each sequence's keys, ``-inf`` on
    padding; slot 0 of an empty sequence is 0 (its all-masked row would be NaN; such rows are discarded).
    Built out of place, so the gradient reaches ``values``."""
    bias = torch.full((num_seqs, max_seqlen), float("-inf"), dtype=values.dtype, device=values.device)
    bias[:, 0] = 0.0  # a non-empty sequence overwrites slot 0 with its own value
    return bias.index_put((seq, slot), values)


def varlen_attention_padded(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    scale: float | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Padded ``scaled_dot_product_attention`` with a key-padding mask (the PyTorch backend).

    Packs ``(total, H, D)`` into ``(B, H, max_seqlen, D)``, attends with a boolean key mask, and
    unpacks. Memory is ``O(B · max_seqlen²)`` per head: the cost the Triton kernel avoids.
    With ``key_bias`` ``(total,)`` the mask is a float ``(B, 1, 1, max_seqlen)`` additive mask instead (the
    bias on valid keys, ``-inf`` on padding, in q's dtype), differentiable in ``key_bias``.
    """
    num_seqs = cu_seqlens.numel() - 1
    seq, slot, to_dense = _padded_layout(q, cu_seqlens, max_seqlen)
    mask: Tensor
    if key_bias is None:
        valid = torch.zeros(num_seqs, max_seqlen, dtype=torch.bool, device=q.device)
        valid[seq, slot] = True
        valid[:, 0] = True  # an empty sequence would give an all-masked row (NaN); its output is discarded anyway
        mask = valid
    else:
        mask = _additive_key_mask(seq, slot, num_seqs, max_seqlen, key_bias.to(q.dtype))
    out = F.scaled_dot_product_attention(
        to_dense(q),
        to_dense(k),
        to_dense(v),
        attn_mask=mask[:, None, None, :],
        dropout_p=dropout_p,
        scale=scale,
    )
    return out.transpose(1, 2)[seq, slot]


def varlen_attention_weights(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    scale: float | None = None,
    key_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Packed attention with an explicit softmax that also returns the attention weights (the inspectable path).

    The formula of :func:`varlen_attention_padded` written out: per sequence and head,
    ``W = softmax_j(scale · q_i·k_j + key_bias[j])`` over the keys of the sequence, ``out_i = Σ_j W_ij v_j``.
    Padded layout ``(B, H, max_seqlen, ·)``, keys past a sequence's end masked with ``-inf``; computed in q's dtype.

    Args:
        q: queries ``(total, heads, head_dim)``, packed over the sequences.
        k: keys, same shape.
        v: values, same shape.
        cu_seqlens: ``[B + 1]`` cumulative lengths (a batch's ``ptr``), int32 or int64.
        max_seqlen: longest sequence (Python int).
        dropout_p: dropout on the weights that make the output (training); the returned weights are the softmax
            before dropout.
        scale: softmax scale, default ``1 / sqrt(head_dim)``.
        key_bias: optional ``(total,)`` additive score per key, shared by the heads (natural-log units).

    Returns:
        ``(out (total, heads, head_dim), weights (B, heads, max_seqlen, max_seqlen))``: ``weights[b, h, i, j]`` is the
        weight of key ``j`` in the output of query ``i`` (positions within sequence ``b``); every row of a real query
        sums to 1, rows and columns past the sequence's end are 0. Differentiable like the other paths.
    """
    total, _, dim = q.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    num_seqs = cu_seqlens.numel() - 1
    seq, slot, to_dense = _padded_layout(q, cu_seqlens, max_seqlen)
    valid = torch.zeros(num_seqs, max_seqlen, dtype=torch.bool, device=q.device)
    valid[seq, slot] = True
    # empty sequences' all-masked rows (NaN, also in the gradient) are zeroed below
    values = torch.zeros(total, dtype=q.dtype, device=q.device) if key_bias is None else key_bias.to(q.dtype)
    bias = _additive_key_mask(seq, slot, num_seqs, max_seqlen, values)
    scores = to_dense(q) @ to_dense(k).transpose(-1, -2) * scale + bias[:, None, None, :]
    weights = scores.softmax(dim=-1) * valid[:, None, :, None].to(q.dtype)  # rows of padding queries → 0
    attend = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = (attend @ to_dense(v)).transpose(1, 2)[seq, slot]
    return out, weights
