"""The self-attention layer's projections and padded attention on the CPU, as one autograd node.

:class:`~sagnn_lightning.nn.attention.AtomSelfAttention` on the CPU runs the PyTorch path: four ``nn.Linear``, a
zero-padded ``(B, H, L, d)`` layout and ``F.scaled_dot_product_attention`` with a key mask. Autograd's graph of that
dispatches ~50 aten ops forward and ~50 backward, most of them reshapes and paddings (``benchmarks/step_ops.py``).
:class:`FusedSelfAttention` computes the same maths with the same kernel (torch's fused CPU attention,
``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, which ``F.scaled_dot_product_attention``
calls) and writes the rest by hand: ~25 forward, ~25 backward. Equal to the layer's PyTorch path within float
rounding (tested, with ``gradcheck`` in float64).

Used for eager CPU training without attention dropout or key bias (the recipes'); everything else — CUDA (the
Triton kernel), inference, autocast, ``torch.compile``, dropout, ``key_bias``, a torch without the CPU kernel —
takes the layer's own path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def cpu_attention_kernel_available() -> bool:
    """True when this torch has the fused CPU attention op and its backward (torch >= 2.3)."""
    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu") and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"
    )


class PaddedLayout(NamedTuple):
    """Where each packed row sits in the zero-padded ``(B, L)`` layout, and the matching key mask.

    ``position [N]``: row ``b·L + slot`` of each packed row; ``mask [B, 1, 1, L]``: 0 on each crystal's atoms,
    ``-inf`` on padding (added to the scores); ``num_seqs = B``, ``max_len = L``. The same for every attention layer
    of a batch.
    """

    position: Tensor
    mask: Tensor
    num_seqs: int
    max_len: int

    @classmethod
    def of(
        cls, ptr: Tensor, num_rows: int, max_len: int, dtype: torch.dtype, batch: Tensor | None = None
    ) -> PaddedLayout:
        """From a batch's ``ptr [B + 1]``, its atom count ``N``, ``max_num_atoms`` and optionally ``batch [N]``
        (else derived from ``ptr``); no device read."""
        num_seqs = ptr.shape[0] - 1
        starts = ptr[:-1]
        offsets = torch.arange(0, num_seqs * max_len, max_len, device=ptr.device) - starts  # padded row − packed row
        if batch is None:
            per_row = offsets.repeat_interleave(ptr[1:] - starts, output_size=num_rows)
        else:
            per_row = offsets.index_select(0, batch)
        position = torch.arange(num_rows, device=ptr.device) + per_row
        mask = torch.full((num_seqs * max_len,), float("-inf"), dtype=dtype, device=ptr.device)
        mask = mask.index_fill_(0, position, 0.0).view(num_seqs, 1, 1, max_len)
        return cls(position, mask, num_seqs, max_len)


class FusedSelfAttention(torch.autograd.Function):
    """``out_proj(attention(q_proj(x), k_proj(x), v_proj(x)))`` per crystal, as one autograd node (first order).

    ``apply(x, layout, heads, scale, weights_t, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o)``: ``x [N, D]``,
    ``layout`` (:class:`PaddedLayout`), ``weights_t`` the four weights transposed (views the arithmetic uses; the
    gradients go to the parameters), weights in ``nn.Linear``'s layout (``w_q [H·d, D]``, ``w_o [D, H·d]``) →
    ``[N, D]`` (before the layer's residual and norm).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        layout: PaddedLayout,
        heads: int,
        scale: float,
        weights_t: tuple[Tensor, Tensor, Tensor, Tensor],
        *params: Tensor,
    ) -> Tensor:
        w_q_t, w_k_t, w_v_t, w_o_t = weights_t
        _, b_q, _, b_k, _, b_v, _, b_o = params
        inner = w_q_t.shape[1]
        seqs, length = layout.num_seqs, layout.max_len
        qkv = torch.cat([torch.addmm(b_q, x, w_q_t), torch.addmm(b_k, x, w_k_t), torch.addmm(b_v, x, w_v_t)], dim=1)
        dense = x.new_zeros(seqs * length, 3 * inner).index_copy_(0, layout.position, qkv)
        q, k, v = dense.view(seqs, length, 3, heads, inner // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, d)
        out, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=layout.mask, scale=scale
        )
        attended = out.transpose(1, 2).reshape(seqs * length, inner).index_select(0, layout.position)  # [N, H·d]
        ctx.layout, ctx.heads, ctx.scale = layout, heads, scale
        ctx.save_for_backward(x, q, k, v, out, logsumexp, attended, *params)
        return torch.addmm(b_o, attended, w_o_t)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, q, k, v, out, logsumexp, attended, w_q, _, w_k, _, w_v, _, w_o, _ = ctx.saved_tensors
        layout: PaddedLayout = ctx.layout
        seqs, length, heads = layout.num_seqs, layout.max_len, ctx.heads
        inner = attended.shape[1]
        grad_w_o, grad_b_o = grad.t().mm(attended), grad.sum(0)
        grad_dense = grad.new_zeros(seqs * length, inner).index_copy_(0, layout.position, grad.mm(w_o))
        grad_dense = grad_dense.view(seqs, length, heads, inner // heads).transpose(1, 2)  # (B, H, L, d)
        grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_dense, q, k, v, out, logsumexp, 0.0, False, attn_mask=layout.mask, scale=ctx.scale
        )
        grad_qkv = torch.stack([grad_q, grad_k, grad_v]).permute(1, 3, 0, 2, 4).reshape(seqs * length, 3 * inner)
        grad_qkv = grad_qkv.index_select(0, layout.position)  # [N, 3·H·d]: q, k, v
        grad_w_q, grad_w_k, grad_w_v = grad_qkv.t().mm(x).split(inner)
        grad_b_q, grad_b_k, grad_b_v = grad_qkv.sum(0).split(inner)
        part_q, part_k, part_v = grad_qkv.split(inner, dim=1)
        grad_x = torch.addmm(torch.addmm(part_q.mm(w_q), part_k, w_k), part_v, w_v)
        return (
            grad_x,
            None,
            None,
            None,
            None,
            grad_w_q,
            grad_b_q,
            grad_w_k,
            grad_b_k,
            grad_w_v,
            grad_b_v,
            grad_w_o,
            grad_b_o,
        )


__all__ = ["FusedSelfAttention", "PaddedLayout", "cpu_attention_kernel_available"]
