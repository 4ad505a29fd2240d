"""Two Set2Sets (single-layer LSTMs, same width and steps) over two packed sets, as one pass.

MEGNet's readout pools atoms and bonds with one Set2Set each. :func:`set2set_pair_reference` runs them side by
side in plain torch: the two LSTMs as one batched matmul per step, the two sets as one packed set of ``2B``
segments (autograd's graph: 129 aten ops forward, ~200 backward for 3 steps). :class:`PairedSet2Set` is the same
maths as one autograd node with a hand-written backward (~90 forward, ~100 backward), used by
`set2set_pair` for eager training. Equal within float rounding (tested against two ``Set2Set`` calls, with
``gradcheck`` in float64).

Shapes everywhere: ``x1 [M1, D]``, ``index1 [M1]`` (segment of each row, in ``[0, B)``), ``x2 [M2, D]``,
``index2 [M2]``, ``dim_size = B``, LSTM parameters in ``nn.LSTM``'s layout (``weight_ih [4D, 2D]``,
``weight_hh [4D, D]``, ``bias_ih``, ``bias_hh [4D]``, gates in the order input, forget, cell, output)
→ ``[B, 4D]`` (``q*`` of the first set, then of the second).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sagnn_lightning.nn.scatter import scatter_softmax, scatter_sum


def set2set_pair_reference(
    x1: Tensor,
    index1: Tensor,
    x2: Tensor,
    index2: Tensor,
    dim_size: int,
    steps: int,
    lstm1: Sequence[Tensor],
    lstm2: Sequence[Tensor],
) -> Tensor:
    """Plain-torch paired Set2Set; ``lstm1``/``lstm2`` = ``(weight_ih, weight_hh, bias_ih, bias_hh)`` of each."""
    if steps < 1:
        raise ValueError(f"Set2Set needs processing_steps >= 1, got {steps}")
    dim, num_sets = x1.shape[1], 2 * dim_size
    w_ih, w_hh, b_ih, b_hh = (torch.stack(pair) for pair in zip(lstm1, lstm2))
    w_ih, w_hh, bias = w_ih.transpose(1, 2), w_hh.transpose(1, 2), (b_ih + b_hh).unsqueeze(1)  # bias [2, 1, 4D]
    x = torch.cat([x1, x2])
    index = torch.cat([index1, index2 + dim_size])
    q_star = h = c = None
    for _ in range(steps):
        if q_star is None or h is None or c is None:  # q*, h and c start at zero: the gates are the biases
            i, f, g, o = bias.expand(2, dim_size, 4 * dim).chunk(4, dim=-1)
            c = torch.sigmoid(i) * torch.tanh(g)
        else:
            i, f, g, o = (torch.baddbmm(bias, q_star, w_ih) + torch.bmm(h, w_hh)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)  # [2, B, D]: the query of each set
        q = h.reshape(num_sets, dim)
        a = scatter_softmax((x * q[index]).sum(dim=-1, keepdim=True), index, num_sets)
        r = scatter_sum(a * x, index, num_sets)
        q_star = torch.cat([q, r], dim=-1).view(2, dim_size, 2 * dim)
    assert q_star is not None
    return q_star.transpose(0, 1).reshape(dim_size, 4 * dim)


class PairedSet2Set(torch.autograd.Function):
    """:func:`set2set_pair_reference` as one autograd node (first-order gradients).

    ``apply(x1, index1, x2, index2, dim_size, steps, w_ih1, w_hh1, b_ih1, b_hh1, w_ih2, w_hh2, b_ih2, b_hh2)``.
    """

    @staticmethod
    def forward(
        ctx: Any, x1: Tensor, index1: Tensor, x2: Tensor, index2: Tensor, dim_size: int, steps: int, *lstm: Tensor
    ) -> Tensor:
        dim, num_sets = x1.shape[1], 2 * dim_size
        w_ih1, w_hh1, b_ih1, b_hh1, w_ih2, w_hh2, b_ih2, b_hh2 = lstm
        x = torch.cat([x1, x2])
        index = torch.cat([index1, index2 + dim_size])
        weight = torch.stack([torch.cat([w_ih1, w_hh1], 1), torch.cat([w_ih2, w_hh2], 1)])  # [2, 4D, 3D]
        bias = torch.stack([b_ih1 + b_hh1, b_ih2 + b_hh2]).unsqueeze(1)  # [2, 1, 4D]
        saved: list[Tensor | None] = []
        c = h = q_star = None
        for _ in range(steps):
            if q_star is None or h is None:  # q*, h and c start at zero: the gates are the biases
                inputs = None
                pre = bias.expand(2, dim_size, 4 * dim)
            else:
                inputs = torch.cat([q_star.view(2, dim_size, 2 * dim), h], dim=-1)  # [2, B, 3D]
                pre = torch.baddbmm(bias, inputs, weight.transpose(1, 2))
            gate = pre.sigmoid()  # i, f, o used; the cell gate is tanh
            i, f, _, o = gate.chunk(4, dim=-1)
            g = pre.narrow(-1, 2 * dim, dim).tanh()
            c_prev: Tensor | None = c
            c = i * g if c_prev is None else torch.addcmul(f * c_prev, i, g)
            tanh_c = c.tanh()
            h = o * tanh_c  # [2, B, D]
            query = h.reshape(num_sets, dim).index_select(0, index)  # [M, D]
            weights = scatter_softmax((x * query).sum(-1), index, num_sets)  # [M]
            r = scatter_sum(weights.unsqueeze(1) * x, index, num_sets)
            q_star = torch.cat([h.reshape(num_sets, dim), r], dim=-1)
            saved += [inputs, gate, g, c, c_prev, tanh_c, query, weights]  # inputs and c_prev: None at step 0
        ctx.shape = (dim, dim_size, steps, x1.shape[0])
        ctx.save_for_backward(x, index, weight, *saved)
        assert q_star is not None
        return q_star.view(2, dim_size, 2 * dim).transpose(0, 1).reshape(dim_size, 4 * dim)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        dim, dim_size, steps, rows1 = ctx.shape
        num_sets = 2 * dim_size
        x, index, weight, *saved = ctx.saved_tensors
        grad_x: Tensor | None = None
        grad_bias = grad_weight = None
        grad_q_star = grad.view(dim_size, 2, 2 * dim).transpose(0, 1).reshape(num_sets, 2 * dim)
        grad_h = grad_c = None
        for step in reversed(range(steps)):
            inputs, gate, g, c, c_prev, tanh_c, query, weights = saved[8 * step : 8 * step + 8]
            grad_q, grad_r = grad_q_star.split(dim, dim=-1)
            # r = Σ_segment a·x
            grad_r_rows = grad_r.index_select(0, index)
            grad_a = (grad_r_rows * x).sum(-1)
            if grad_x is None:  # the last step's r is the first to reach x
                grad_x = weights.unsqueeze(1) * grad_r_rows
            else:
                grad_x.addcmul_(weights.unsqueeze(1), grad_r_rows)
            # a = softmax_segment(logits)
            weighted = weights * grad_a
            grad_logits = weighted - weights * scatter_sum(weighted, index, num_sets).index_select(0, index)
            # logits = Σ_d x·q[index]
            grad_x.addcmul_(grad_logits.unsqueeze(1), query)
            grad_q = grad_q.index_add(0, index, grad_logits.unsqueeze(1) * x).reshape(2, dim_size, dim)
            grad_h = grad_q if grad_h is None else grad_q + grad_h
            # h = o·tanh(c), c = f·c_prev + i·g
            i, f, _, o = gate.chunk(4, dim=-1)
            grad_c_step = torch.ops.aten.tanh_backward(grad_h * o, tanh_c)
            grad_c = grad_c_step if grad_c is None else grad_c_step + grad_c
            parts = [
                torch.ops.aten.sigmoid_backward(grad_c * g, i),
                torch.ops.aten.sigmoid_backward(grad_c * c_prev, f) if c_prev is not None else torch.zeros_like(f),
                torch.ops.aten.tanh_backward(grad_c * i, g),
                torch.ops.aten.sigmoid_backward(grad_h * tanh_c, o),
            ]
            grad_pre = torch.cat(parts, dim=-1)  # [2, B, 4D]
            step_bias = grad_pre.sum(1)
            grad_bias = step_bias if grad_bias is None else grad_bias + step_bias
            if inputs is None:
                break
            step_weight = grad_pre.transpose(1, 2).bmm(inputs)  # [2, 4D, 3D]: [W_ih | W_hh] of both LSTMs
            grad_weight = step_weight if grad_weight is None else grad_weight + step_weight
            grad_inputs = grad_pre.bmm(weight)  # [2, B, 3D]
            grad_q_star = grad_inputs[..., : 2 * dim].reshape(num_sets, 2 * dim)
            grad_h = grad_inputs[..., 2 * dim :]
            grad_c = grad_c * f
        assert grad_bias is not None and grad_x is not None
        grad_x1, grad_x2 = grad_x.split([rows1, x.shape[0] - rows1])
        w_ih: Sequence[Tensor | None] = (None, None)
        w_hh: Sequence[Tensor | None] = (None, None)
        if grad_weight is not None:
            ih, hh = grad_weight.split([2 * dim, dim], dim=2)
            w_ih, w_hh = ih.unbind(0), hh.unbind(0)
        # the two biases of an LSTM get the same gradient: separate memory, as a clip or hook edits each in place
        b_ih1, b_ih2, b_hh1, b_hh2 = grad_bias.repeat(2, 1).unbind(0)
        lstm1 = (w_ih[0], w_hh[0], b_ih1, b_hh1)
        lstm2 = (w_ih[1], w_hh[1], b_ih2, b_hh2)
        return (grad_x1, None, grad_x2, None, None, None, *lstm1, *lstm2)


def set2set_pair(
    x1: Tensor,
    index1: Tensor,
    x2: Tensor,
    index2: Tensor,
    dim_size: int,
    steps: int,
    lstm1: Sequence[Tensor],
    lstm2: Sequence[Tensor],
) -> Tensor:
    """Paired Set2Set (shapes in the module docstring): one autograd node in eager training (grad mode, no
    autocast, one dtype), :func:`set2set_pair_reference` otherwise."""
    if (
        steps < 1
        or not torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or torch.is_autocast_enabled(x1.device.type)
        or any(t.dtype != x1.dtype for t in (x2, *lstm1, *lstm2))
    ):
        return set2set_pair_reference(x1, index1, x2, index2, dim_size, steps, lstm1, lstm2)
    return PairedSet2Set.apply(x1, index1, x2, index2, dim_size, steps, *lstm1, *lstm2)


__all__ = ["PairedSet2Set", "set2set_pair", "set2set_pair_reference"]
