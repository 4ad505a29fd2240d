"""SA-GNN: MEGNet blocks + multi-head self-attention over the atoms of each crystal.

Pipeline (Cui et al., AIP Advances 14, 2024, on MEGNet, Chen et al., Chem. Mater. 2019)::

    atomic numbers ─ Embedding(16) ─ dense 64→32 ┐
    bond lengths  ─ Gaussians(100) ─ dense 64→32 ├─ MEGNetBlock × num_blocks ─ [MHSA over atoms] ─ readout
    global state  ─────────────── dense 64→32 ┘            (after each block, after the last, or none)

    readout = [Set2Set(atoms) ‖ Set2Set(bonds) ‖ state] ─ dense 32 → 16 → num_targets

Bond lengths are computed inside ``forward`` from ``pos``, ``lattice`` and integer ``image_offsets``
(cast to the model's dtype), so the model is differentiable in the geometry and ``model.double()``
runs fully in float64. ``attention="none"`` *is* MEGNet (the paper's "w/o MHSA" ablation): see
:func:`megnet`.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from sagnn_lightning.errors import UsageError, param
from sagnn_lightning.kernels.dispatch import Backend
from sagnn_lightning.nn.attention import AtomSelfAttention, AttentionMaps, split_by_crystal
from sagnn_lightning.nn.basis import GaussianExpansion
from sagnn_lightning.nn.dense import Activation, mlp
from sagnn_lightning.nn.geometry import bond_lengths
from sagnn_lightning.nn.megnet_block import BlockSegments, MEGNetBlock
from sagnn_lightning.nn.readout import MEGNetReadout

AttentionPlacement = Literal["each", "last", "none"]


class SAGNN(nn.Module):
    """Self-attention graph neural network for crystal properties.

    Args:
        num_targets: outputs per crystal ``T`` (several = multitask; default 1).
        max_atomic_number: largest atomic number embedded (default 100).
        atom_embedding_dim: atom embedding width (MEGNet: 16).
        num_gaussians: Gaussian centres for bond lengths (MEGNet: 100).
        cutoff: last Gaussian centre, Å (MEGNet: 5.0; the first is ``gaussian_start``).
        gaussian_start: first Gaussian centre, Å (default 0.0).
        gaussian_width: Gaussian width, Å (MEGNet: 0.5).
        state_dim: width ``S`` of the input global state ``batch.state`` (MEGNet: 2).
        num_blocks: MEGNet blocks (MEGNet: 3).
        hidden_dim: width of edges, atoms and state inside the blocks (MEGNet: 32).
        dense_hidden: hidden width of the dense layers before each block, ``hidden_dim →
            dense_hidden → hidden_dim`` (MEGNet: 64); the input encoders are ``in → 64 → 32``.
        conv_hidden: hidden widths of the edge/atom/state update MLPs (MEGNet: ``(64, 64)``).
        heads: attention heads (SA-GNN: 8); ``hidden_dim`` must be divisible by it.
        attention: where MHSA sits: ``"each"`` (after every block), ``"last"`` (after the last block,
            default) or ``"none"`` (no MHSA: MEGNet, the w/o-MHSA ablation).
        attention_dropout: dropout on attention weights (training only).
        attention_backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        set2set_steps: Set2Set processing steps (MEGNet: 2).
        readout_hidden: widths of the output MLP before the last layer (MEGNet: ``(32, 16)``).
        dropout: dropout in the blocks and on the readout vector (MEGNet: 0).
        activation: ``"softplus2"`` (shifted softplus, MEGNet), ``"softplus"`` or ``"silu"``.
        attention_norm_first: pre-norm attention (``x + MHSA(LayerNorm(x))``, the atom features pass through
            unchanged beside it) instead of the paper's post-norm ``LayerNorm(x + MHSA(x))`` (default False); see
            :class:`~sagnn_lightning.nn.AtomSelfAttention` (``norm_first``).

    Input (a :class:`torch_geometric.data.Batch` from
    :func:`sagnn_lightning.data.collate_graphs`, or one graph ``Data``): ``atomic_numbers [N]``,
    ``pos [N, 3]`` (Å), ``lattice [B, 3, 3]`` (Å), ``edge_index [2, E]``, ``image_offsets [E, 3]``,
    ``state [B, S]``, ``batch [N]``, ``ptr [B + 1]``, ``max_num_atoms`` (int).

    Output: ``[B, num_targets]`` (raw regression values or logits). ``forward(data, return_attention=True)``
    returns ``(output, maps)``: ``maps`` is ``{"attention_layers.<k>": [weights [heads, n_b, n_b] for each crystal
    b]}`` (one entry per attention layer, in order; empty for ``attention="none"``), row ``i`` = atom ``i``'s
    weights over the atoms of its crystal (sums to 1). The attention then runs on the plain-PyTorch path with an
    explicit softmax (same formula, same output up to rounding; see :class:`AtomSelfAttention`); without the flag
    the forward pass is the usual one (the Triton kernel on CUDA).
    """

    def __init__(
        self,
        num_targets: int = 1,
        max_atomic_number: int = 100,
        atom_embedding_dim: int = 16,
        num_gaussians: int = 100,
        cutoff: float = 5.0,
        gaussian_start: float = 0.0,
        gaussian_width: float = 0.5,
        state_dim: int = 2,
        num_blocks: int = 3,
        hidden_dim: int = 32,
        dense_hidden: int = 64,
        conv_hidden: tuple[int, ...] = (64, 64),
        heads: int = 8,
        attention: AttentionPlacement = "last",
        attention_dropout: float = 0.0,
        attention_backend: Backend = "auto",
        set2set_steps: int = 2,
        readout_hidden: tuple[int, ...] = (32, 16),
        dropout: float = 0.0,
        activation: Activation = "softplus2",
        attention_norm_first: bool = False,
    ) -> None:
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        #: the constructor arguments (the whole configuration): fine-tuning names the ones a checkpoint differs in
        self.init_args: dict[str, Any] = arguments
        if num_targets < 1:
            raise ValueError(f"SAGNN: num_targets must be >= 1, got {num_targets}")
        if num_blocks < 1:
            raise ValueError(f"SAGNN: num_blocks must be >= 1, got {num_blocks}")
        check_attention_args("SAGNN", attention, heads, hidden_dim)
        self.num_targets, self.state_dim, self.attention = num_targets, state_dim, attention
        self.max_atomic_number = max_atomic_number

        self.atom_embedding = nn.Embedding(max_atomic_number + 1, atom_embedding_dim)
        self.bond_expansion = GaussianExpansion(gaussian_start, cutoff, num_gaussians, gaussian_width)
        self.atom_encoder = mlp([atom_embedding_dim, dense_hidden, hidden_dim], activation)
        self.edge_encoder = mlp([num_gaussians, dense_hidden, hidden_dim], activation)
        self.state_encoder = mlp([state_dim, dense_hidden, hidden_dim], activation)

        # MEGNet: the first block's dense layers are the encoders above; later blocks have their own
        self.blocks = nn.ModuleList(
            MEGNetBlock(hidden_dim, None if b == 0 else (dense_hidden,), tuple(conv_hidden), dropout, activation)
            for b in range(num_blocks)
        )
        num_attention = {"each": num_blocks, "last": 1, "none": 0}[attention]
        self.attention_layers = nn.ModuleList(
            AtomSelfAttention(hidden_dim, heads, attention_dropout, attention_backend, norm_first=attention_norm_first)
            for _ in range(num_attention)
        )
        self.readout = MEGNetReadout(hidden_dim, set2set_steps)
        self.readout_dropout = nn.Dropout(dropout)
        self.head = mlp([self.readout.out_channels, *readout_hidden, num_targets], activation, activate_last=False)

    def reset_parameters(self) -> None:
        """Re-initialise every layer with its own scheme (each owner resets its children once)."""
        reset_children(self)

    @overload
    def forward(self, data: Data, return_attention: Literal[False] = False) -> Tensor: ...

    @overload
    def forward(self, data: Data, return_attention: Literal[True]) -> tuple[Tensor, AttentionMaps]: ...

    def forward(self, data: Data, return_attention: bool = False) -> Tensor | tuple[Tensor, AttentionMaps]:
        if getattr(data, "pos", None) is None:
            raise ValueError(
                "SAGNN needs crystal graphs (pos, lattice, image_offsets); this batch has none (composition "
                "graphs?): train composition tasks with sagnn_lightning.models.CompositionSAGNN"
            )
        self.check_graphs(data)
        dtype = self.atom_embedding.weight.dtype
        batch, ptr, num_graphs, max_num_atoms = batch_layout(data)
        edge_index = data.edge_index
        segments = BlockSegments.of(edge_index, batch, num_graphs, dtype)
        edge_batch = segments.edge_batch
        state = getattr(data, "state", None)
        if state is None:  # MEGNet's default state: zeros
            state = torch.zeros(num_graphs, self.state_dim, device=edge_index.device)
        state = state.to(dtype)
        if state.shape[-1] != self.state_dim:
            raise ValueError(
                f"SAGNN: data.state has width {state.shape[-1]} but the model was built with "
                f"state_dim={self.state_dim}; build graphs with a matching state or change state_dim"
            )

        distances = bond_lengths(
            data.pos.to(dtype), data.lattice.to(dtype), edge_index, data.image_offsets, edge_batch=edge_batch
        )
        e = self.edge_encoder(self.bond_expansion(distances))
        v = self.atom_encoder(self.atom_embedding(data.atomic_numbers))
        u = self.state_encoder(state)

        maps: AttentionMaps | None = {} if return_attention else None
        for b, block in enumerate(self.blocks):
            e, v, u = block(e, v, u, edge_index, batch, edge_batch, num_graphs, segments)
            if self.attention == "each":
                v = apply_attention(self.attention_layers, b, v, ptr, max_num_atoms, maps, batch=batch)
        if self.attention == "last":
            v = apply_attention(self.attention_layers, 0, v, ptr, max_num_atoms, maps, batch=batch)

        pooled = self.readout(v, e, u, batch, edge_batch, num_graphs)
        out = self.head(self.readout_dropout(pooled))
        return out if maps is None else (out, maps)

    def check_graphs(self, data: Data) -> None:
        """Refuse a batch built with another neighbour cutoff than this model's (``data.cutoff``, stamped by the
        graph builders and :func:`~sagnn_lightning.data.collate_graphs`): the Gaussian basis spans the cutoff, so
        such graphs would give silently wrong predictions."""
        cutoff = getattr(data, "cutoff", None)
        if isinstance(cutoff, (int, float)) and abs(float(cutoff) - float(self.bond_expansion.stop)) > 1e-6:
            own = float(self.bond_expansion.stop)
            raise UsageError(
                f"SAGNN: these graphs were built with cutoff={float(cutoff):g} Å, this model with cutoff={own:g} Å; "
                f"build them with cutoff={own:g} (model.predict(structures) and the predict command do it)"
            )

    def extra_repr(self) -> str:
        return f"num_targets={self.num_targets}, attention={self.attention!r}"


def check_attention_args(model: str, attention: str, heads: int, hidden_dim: int) -> None:
    """The attention placement is known and ``heads`` divides ``hidden_dim`` (errors name the CLI flags)."""
    if attention not in ("each", "last", "none"):
        raise UsageError(
            f"{model}: attention must be 'each', 'last' or 'none' ({param('model.model.attention')}), got {attention!r}"
        )
    if attention != "none" and (heads < 1 or hidden_dim % heads):
        divisors = [h for h in range(1, hidden_dim + 1) if hidden_dim % h == 0]
        raise UsageError(
            f"{model}: heads={heads} must divide hidden_dim={hidden_dim} ({param('model.model.heads')}, "
            f"{param('model.model.hidden_dim')}); heads that fit: {divisors}"
        )


def apply_attention(
    layers: nn.ModuleList,
    index: int,
    x: Tensor,
    ptr: Tensor,
    max_num_atoms: int,
    maps: AttentionMaps | None,
    key_bias: Tensor | None = None,
    batch: Tensor | None = None,
) -> Tensor:
    """``layers[index]`` on the node features ``x [N, D]``; with a ``maps`` dict (``return_attention``), on the
    weight-returning path, storing its per-crystal weights as ``maps["attention_layers.<index>"]``."""
    layer = layers[index]
    if maps is None:
        return layer(x, ptr, max_num_atoms, key_bias=key_bias, batch=batch)
    x, weights = layer(x, ptr, max_num_atoms, key_bias=key_bias, return_weights=True, batch=batch)
    maps[f"attention_layers.{index}"] = split_by_crystal(weights, ptr)
    return x


def reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters`` on each child that has one, else recurse into it (each owner resets once)."""
    for child in module.children():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            reset_children(child)


def batch_layout(data: Data) -> tuple[Tensor, Tensor, int, int]:
    """``(batch [N] (the crystal of each atom), ptr [B+1], num_graphs, max_num_atoms)`` of a ``Batch`` or a single ``Data``.

    ``max_num_atoms`` comes from :func:`~sagnn_lightning.data.collate_graphs` (no device read); a batch
    built otherwise falls back to reading the longest segment from ``ptr`` once.
    """
    num_atoms = data.atomic_numbers.shape[0]
    device = data.atomic_numbers.device
    batch = getattr(data, "batch", None)
    ptr = getattr(data, "ptr", None)
    if batch is None or ptr is None:  # one crystal
        batch = torch.zeros(num_atoms, dtype=torch.long, device=device)
        ptr = torch.tensor([0, num_atoms], dtype=torch.long, device=device)
        return batch, ptr, 1, num_atoms
    num_graphs = int(data.num_graphs)
    max_num_atoms = getattr(data, "max_num_atoms", None)
    if max_num_atoms is None:
        max_num_atoms = int((ptr[1:] - ptr[:-1]).max()) if num_graphs else 0
    return batch, ptr, num_graphs, int(max_num_atoms)


def megnet(**kwargs) -> SAGNN:
    """Plain MEGNet: :class:`SAGNN` with ``attention="none"`` (identical to the w/o-MHSA ablation)."""
    if kwargs.get("attention", "none") != "none":
        raise ValueError("megnet() builds the model without attention; do not pass attention=")
    kwargs["attention"] = "none"
    return SAGNN(**kwargs)
