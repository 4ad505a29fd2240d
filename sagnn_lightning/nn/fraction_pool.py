"""Fraction-weighted readout: one vector per composition from its element nodes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from sagnn_lightning.nn.dense import Activation, mlp
from sagnn_lightning.nn.scatter import scatter_softmax, scatter_sum


class FractionWeightedPooling(nn.Module):
    r"""Attention pooling over the elements of each composition, weighted by their fractions (Roost).

    .. math::
        a^h_i = \frac{w_i \exp g^h(x_i)}{\sum_{k \in \mathrm{formula}} w_k \exp g^h(x_k)}, \qquad
        y = \tfrac{1}{H} \textstyle\sum_h \sum_i a^h_i\, m^h(x_i)

    ``w_i`` is element ``i``'s fraction of its formula; it enters as ``log w_i`` added to the gate, so the
    pooled vector is a weighted mean in which an element's share counts, and an element whose fraction goes to
    0 drops out continuously. With a constant gate, ``y`` is the fraction-weighted mean of ``m(x_i)``.

    Args:
        dim: node feature width ``D`` (also the output width).
        heads: pooling heads ``H`` (Roost: 3).
        hidden: hidden widths of the gate and value MLPs.
        activation: ``"softplus2"``, ``"softplus"`` or ``"silu"``.

    Shapes:
        ``x [N, D]``, ``log_fractions [N]``, ``batch [N]`` (composition of each node), ``num_graphs = B``
        → ``[B, D]``.
    """

    def __init__(self, dim: int, heads: int = 3, hidden: Sequence[int] = (128,), activation: Activation = "softplus2"):
        super().__init__()
        if heads < 1:
            raise ValueError(f"FractionWeightedPooling: heads must be >= 1, got {heads}")
        self.dim, self.heads = dim, heads
        self.out_channels = dim
        self.gate = mlp([dim, *hidden, heads], activation, activate_last=False)
        self.value = mlp([dim, *hidden, heads * dim], activation, activate_last=False)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, x: Tensor, log_fractions: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        weights = scatter_softmax(self.gate(x) + log_fractions.unsqueeze(-1), batch, num_graphs)  # [N, H]
        values = self.value(x).view(-1, self.heads, self.dim)
        return scatter_sum(weights.unsqueeze(-1) * values, batch, num_graphs).mean(dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"
