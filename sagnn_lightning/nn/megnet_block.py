"""MEGNet graph-network block: edge, atom and global-state updates on scatter ops.

Follows Chen et al., Chem. Mater. 31, 3564 (2019) and matgl's ``MEGNetBlock``:

1. optional pre-block dense layers on each of edges, atoms and state (``dim → 64 → dim``);
2. edge update  ``e'_k = φ_e([v_i ‖ v_j ‖ e_k ‖ u])`` for every bond ``k = (i → j)``;
3. atom update  ``v'_i = φ_v([v_i ‖ mean_{k: centre i} e'_k ‖ u])``;
4. state update ``u' = φ_u([u ‖ mean_graph e' ‖ mean_graph v'])``;
5. dropout, then residual: block input + update.

``φ`` are MLPs ``64-64-dim`` with shifted softplus (``softplus(x) − ln 2``, MEGNet's default) after
every layer, as in matgl.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from sagnn_lightning.nn.concat import concat_features
from sagnn_lightning.nn.dense import Activation, mlp
from sagnn_lightning.nn.gathered_linear import gathered_linear
from sagnn_lightning.nn.parameter_views import ParameterViews
from sagnn_lightning.nn.scatter import scatter_mean, segment_counts


class BlockSegments(NamedTuple):
    """What every block of a batch shares, computed once per batch: the bond ends and the divisors of the three means.

    ``centre [E]``, ``neighbour [E]`` (rows of ``edge_index``), ``edge_batch [E]`` (crystal of each bond),
    ``edges_per_atom [N, 1]`` (bonds centred on each atom), ``edges_per_graph [B, 1]``, ``atoms_per_graph [B, 1]``
    (the counts at least 1).
    """

    centre: Tensor
    neighbour: Tensor
    edge_batch: Tensor
    edges_per_atom: Tensor
    edges_per_graph: Tensor
    atoms_per_graph: Tensor

    @classmethod
    def of(cls, edge_index: Tensor, batch: Tensor, num_graphs: int, dtype: torch.dtype) -> BlockSegments:
        """From ``edge_index [2, E]``, ``batch [N]`` and ``num_graphs = B``; the counts in ``dtype``. The three
        counts are one scatter over the three indices laid end to end (atoms, then crystals twice)."""
        centre, neighbour = edge_index.unbind(0)
        edge_batch = batch[centre]
        num_atoms = batch.shape[0]
        index = torch.cat([centre, edge_batch + num_atoms, batch + (num_atoms + num_graphs)])
        counts = segment_counts(index, num_atoms + 2 * num_graphs, dtype)
        per_atom, per_graph_edges, per_graph_atoms = counts.split([num_atoms, num_graphs, num_graphs])
        return cls(centre, neighbour, edge_batch, per_atom, per_graph_edges, per_graph_atoms)


class MEGNetBlock(nn.Module):
    """One MEGNet block on a packed batch of crystal graphs.

    Args:
        dim: width of edge, atom and state features in and out (MEGNet: 32).
        dense_hidden: hidden widths of the pre-block dense layers ``dim → *dense_hidden → dim``
            (MEGNet: ``(64,)``, i.e. two dense layers 64 → 32); ``None`` = no pre-block layers
            (MEGNet's first block, whose dense layers are the model's input encoders).
        conv_hidden: hidden widths of the update MLPs φ_e, φ_v, φ_u (MEGNet: ``(64, 64)`` → ``dim``).
        dropout: dropout on the three updates before the residual (default 0).
        activation: ``"softplus2"`` (default), ``"softplus"`` or ``"silu"``.
        residual: add the block input to its output (MEGNet: yes).

    Shapes:
        ``edge_feat [E, dim]``, ``atom_feat [N, dim]``, ``state_feat [B, dim]``,
        ``edge_index [2, E]`` (row 0 = centre ``i``), ``batch [N]`` and ``edge_batch [E]`` (graph of
        each atom / edge), ``num_graphs = B``, optional ``segments`` (:class:`BlockSegments`, computed here when
        not given). Returns the three updated tensors, same shapes.
    """

    def __init__(
        self,
        dim: int = 32,
        dense_hidden: Sequence[int] | None = (64,),
        conv_hidden: Sequence[int] = (64, 64),
        dropout: float = 0.0,
        activation: Activation = "softplus2",
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.residual = residual
        if dense_hidden is None:
            self.edge_dense: nn.Module = nn.Identity()
            self.atom_dense: nn.Module = nn.Identity()
            self.state_dense: nn.Module = nn.Identity()
        else:
            dense = [dim, *dense_hidden, dim]
            self.edge_dense = mlp(dense, activation)
            self.atom_dense = mlp(dense, activation)
            self.state_dense = mlp(dense, activation)
        self.edge_update = mlp([4 * dim, *conv_hidden, dim], activation)
        self.atom_update = mlp([3 * dim, *conv_hidden, dim], activation)
        self.state_update = mlp([3 * dim, *conv_hidden, dim], activation)
        self.dropout = nn.Dropout(dropout)
        self._weight_views = ParameterViews()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(
        self,
        edge_feat: Tensor,
        atom_feat: Tensor,
        state_feat: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        edge_batch: Tensor,
        num_graphs: int,
        segments: BlockSegments | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if segments is None:
            segments = BlockSegments.of(edge_index, batch, num_graphs, edge_feat.dtype)
        e = self.edge_dense(edge_feat)
        v = self.atom_dense(atom_feat)
        u = self.state_dense(state_feat)
        i, j = segments.centre, segments.neighbour
        num_atoms = v.shape[0]

        e = self._edge_update(v, e, u, i, j, edge_batch)
        edge_mean = scatter_mean(e, i, num_atoms, counts=segments.edges_per_atom)
        v = self.atom_update(concat_features([v, edge_mean, u[batch]]))
        graph_edges = scatter_mean(e, edge_batch, num_graphs, counts=segments.edges_per_graph)
        graph_atoms = scatter_mean(v, batch, num_graphs, counts=segments.atoms_per_graph)
        u = self.state_update(concat_features([u, graph_edges, graph_atoms]))

        e, v, u = self.dropout(e), self.dropout(v), self.dropout(u)
        if self.residual:
            e, v, u = e + edge_feat, v + atom_feat, u + state_feat
        return e, v, u

    def _edge_update(self, v: Tensor, e: Tensor, u: Tensor, i: Tensor, j: Tensor, edge_batch: Tensor) -> Tensor:
        """``φ_e([v_i ‖ v_j ‖ e ‖ u])`` without building the ``[E, 4·dim]`` concatenation: the first layer is
        :func:`~sagnn_lightning.nn.gathered_linear.gathered_linear` (same weights, same result)."""
        first = cast(nn.Linear, self.edge_update[0])
        hidden = gathered_linear(v, e, u, i, j, edge_batch, first.weight, first.bias, self._weight_views)
        return self.edge_update(hidden, start=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, residual={self.residual}"
