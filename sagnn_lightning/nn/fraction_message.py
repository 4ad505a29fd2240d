"""Fraction-weighted message passing between the element nodes of a composition (Roost's message layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from sagnn_lightning.nn.dense import Activation, mlp
from sagnn_lightning.nn.scatter import scatter_softmax, scatter_sum


class FractionWeightedMessagePassing(nn.Module):
    r"""Every element receives messages from the elements of its formula, weighted by their fractions.

    For each edge ``i ← j`` and head ``h`` (Goodall & Lee, Nat. Commun. 11, 6280, 2020):

    .. math::
        a^h_{ij} = \frac{w_j \exp g^h([x_i \Vert x_j])}{\sum_k w_k \exp g^h([x_i \Vert x_k])}, \qquad
        x'_i = \mathrm{LayerNorm}\Bigl(x_i + \tfrac{1}{H}\textstyle\sum_h \sum_j a^h_{ij}\, m^h([x_i \Vert x_j])\Bigr)

    with ``w_j`` the fraction of element ``j`` in the formula, ``g`` (gate, one scalar per head) and ``m``
    (message) MLPs. The fraction enters as ``log w_j`` added to the gate before the softmax, so an element with
    a vanishing fraction sends a vanishing message (a dopant at fraction → 0 changes nothing in the limit).

    Args:
        dim: node feature width ``D``.
        heads: attention heads ``H`` (Roost: 3).
        hidden: hidden widths of the gate and message MLPs.
        activation: ``"softplus2"``, ``"softplus"`` or ``"silu"``.
        layer_norm: LayerNorm after the residual sum (default True).

    Shapes:
        ``x [N, D]``, ``log_fractions [N]``, ``edge_index [2, E]`` (row 0 = receiver ``i``, row 1 = sender
        ``j``) → ``[N, D]``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 3,
        hidden: Sequence[int] = (128,),
        activation: Activation = "softplus2",
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"FractionWeightedMessagePassing: heads must be >= 1, got {heads}")
        self.dim, self.heads = dim, heads
        self.gate = mlp([2 * dim, *hidden, heads], activation, activate_last=False)
        self.message = mlp([2 * dim, *hidden, heads * dim], activation, activate_last=False)
        self.norm: nn.Module = nn.LayerNorm(dim) if layer_norm else nn.Identity()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def forward(self, x: Tensor, log_fractions: Tensor, edge_index: Tensor) -> Tensor:
        i, j = edge_index[0], edge_index[1]
        num_nodes = x.shape[0]
        gate = self._pair_mlp(self.gate, x, i, j) + log_fractions[j].unsqueeze(-1)  # [E, H]
        weights = scatter_softmax(gate, i, num_nodes)  # softmax over the senders of each receiver
        messages = self._pair_mlp(self.message, x, i, j).view(-1, self.heads, self.dim)  # [E, H, D]
        update = scatter_sum(weights.unsqueeze(-1) * messages, i, num_nodes).mean(dim=1)
        return self.norm(x + update)

    def _pair_mlp(self, net: nn.Sequential, x: Tensor, i: Tensor, j: Tensor) -> Tensor:
        """``net([x_i ‖ x_j])`` without the ``[E, 2D]`` concatenation: the first layer is linear, so it is
        applied once per node and gathered (as in :class:`~sagnn_lightning.nn.megnet_block.MEGNetBlock`)."""
        first = cast(nn.Linear, net[0])
        w_i, w_j = first.weight.split(self.dim, dim=1)
        hidden = F.linear(x, w_i, first.bias)[i] + F.linear(x, w_j)[j]
        return net[1:](hidden) if len(net) > 1 else hidden

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"
