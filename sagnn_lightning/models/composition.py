"""Composition SA-GNN: fraction-weighted message passing + self-attention over the elements of a formula.

For matbench's composition-only tasks (no crystal structure). Pipeline::

    element table (matscholar 200-d) ‖ fraction ─ dense → D ─┐
                                                             ├─ FractionWeightedMessagePassing × num_blocks
    log fractions (as attention weights everywhere) ─────────┘      ─ [MHSA over elements, key bias log w]
                                                                    ─ FractionWeightedPooling ─ MLP → targets

Each element's share ``w`` of the formula enters every aggregation as a weight, ``log w`` added to the
attention logits: in the messages (Roost, Goodall & Lee 2020), in the multi-head self-attention
(:class:`~sagnn_lightning.nn.attention.AtomSelfAttention` with ``key_bias``, the same kernel path as the crystal
model) and in the readout. So the prediction is invariant to the order of the elements and to scaling the
formula (the graph stores fractions), and continuous as a dopant's fraction goes to 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from sagnn_lightning.kernels.dispatch import Backend
from sagnn_lightning.models.sagnn import (
    AttentionPlacement,
    apply_attention,
    batch_layout,
    check_attention_args,
    reset_children,
)
from sagnn_lightning.nn.attention import AtomSelfAttention, AttentionMaps
from sagnn_lightning.nn.dense import Activation, mlp
from sagnn_lightning.nn.element_features import ElementFeatures, ElementSource
from sagnn_lightning.nn.fraction_message import FractionWeightedMessagePassing
from sagnn_lightning.nn.fraction_pool import FractionWeightedPooling


class CompositionSAGNN(nn.Module):
    """SA-GNN for compositions: element nodes, fraction-weighted messages, attention and readout.

    Args:
        num_targets: outputs per composition ``T`` (set by the CLI from the DataModule).
        element_features: ``"matscholar"`` (default; 200-d mat2vec embeddings, Tshitoyan et al. 2019, as
            packaged by matminer), ``"megnet"`` (16-d, MEGNet's learned element embedding) or ``"learned"``.
        learned_dim: width of the learned element embedding (``element_features="learned"``).
        hidden_dim: node width ``D`` (default 64).
        num_blocks: fraction-weighted message-passing blocks (default 3).
        message_heads: gate heads of each message block (Roost: 3).
        message_hidden: hidden widths of the message and gate MLPs.
        heads: self-attention heads (``hidden_dim`` must be divisible by it).
        attention: where the self-attention sits: ``"each"`` block, after the ``"last"`` block (default), or
            ``"none"`` (the w/o-MHSA ablation).
        attention_dropout: dropout on the attention weights (training only).
        attention_backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :class:`AtomSelfAttention`).
        pool_heads: heads of the fraction-weighted readout.
        pool_hidden: hidden widths of the readout's gate and value MLPs.
        readout_hidden: hidden widths of the output MLP.
        dropout: dropout on the pooled vector.
        activation: ``"softplus2"`` (default, MEGNet's shifted softplus), ``"softplus"`` or ``"silu"``.
        cutoff: ignored (a composition has no bonds); accepted because the CLI links every DataModule's
            cutoff into the model, so that one CLI serves both models.

    Input: a batch of composition graphs (:func:`sagnn_lightning.data.composition.composition_to_graph`,
    batched by :func:`sagnn_lightning.data.collate_graphs`): ``atomic_numbers [N]``, ``fractions [N]``,
    ``edge_index [2, E]``, ``batch [N]``, ``ptr [B + 1]``, ``max_num_atoms``.

    Output: ``[B, num_targets]`` (raw regression values or logits). ``forward(data, return_attention=True)``
    returns ``(output, maps)`` as :class:`~sagnn_lightning.models.SAGNN` does: per attention layer, each
    composition's weights ``[heads, n_elements, n_elements]`` (rows sum to 1; the ``log w`` key bias included, so
    element ``j``'s weight is proportional to its fraction times ``exp(score)``).
    """

    def __init__(
        self,
        num_targets: int = 1,
        element_features: ElementSource = "matscholar",
        learned_dim: int = 64,
        hidden_dim: int = 64,
        num_blocks: int = 3,
        message_heads: int = 3,
        message_hidden: Sequence[int] = (128,),
        heads: int = 4,
        attention: AttentionPlacement = "last",
        attention_dropout: float = 0.0,
        attention_backend: Backend = "auto",
        pool_heads: int = 3,
        pool_hidden: Sequence[int] = (128,),
        readout_hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        activation: Activation = "softplus2",
        cutoff: float | None = None,
    ) -> None:
        super().__init__()
        if num_targets < 1:
            raise ValueError(f"CompositionSAGNN: num_targets must be >= 1, got {num_targets}")
        if num_blocks < 0:
            raise ValueError(f"CompositionSAGNN: num_blocks must be >= 0, got {num_blocks}")
        check_attention_args("CompositionSAGNN", attention, heads, hidden_dim)
        if attention == "each" and num_blocks == 0:
            raise ValueError("CompositionSAGNN: attention='each' needs num_blocks >= 1")
        del cutoff  # see the docstring
        self.num_targets, self.attention = num_targets, attention
        self.element_features = ElementFeatures(element_features, learned_dim)
        # the fraction is a feature too (besides weighting every aggregation): Roost appends it to the embedding
        self.input = nn.Linear(self.element_features.out_channels + 1, hidden_dim)
        self.blocks = nn.ModuleList(
            FractionWeightedMessagePassing(hidden_dim, message_heads, tuple(message_hidden), activation)
            for _ in range(num_blocks)
        )
        num_attention = {"each": num_blocks, "last": 1, "none": 0}[attention]
        self.attention_layers = nn.ModuleList(
            AtomSelfAttention(hidden_dim, heads, attention_dropout, attention_backend) for _ in range(num_attention)
        )
        self.pool = FractionWeightedPooling(hidden_dim, pool_heads, tuple(pool_hidden), activation)
        self.readout_dropout = nn.Dropout(dropout)
        self.head = mlp([hidden_dim, *readout_hidden, num_targets], activation, activate_last=False)

    def reset_parameters(self) -> None:
        """Re-initialise every layer with its own scheme."""
        reset_children(self)

    def check_elements(self, atomic_numbers: Tensor) -> None:
        """Refuse elements without features (``ValueError``), reading ``atomic_numbers`` on the host: the
        LightningModule checks a dataset's elements once at set-up, so a forward pass on a GPU needs no device
        read (on the CPU the forward pass checks each batch itself)."""
        self.element_features.check(atomic_numbers)

    @overload
    def forward(self, data: Data, return_attention: Literal[False] = False) -> Tensor: ...

    @overload
    def forward(self, data: Data, return_attention: Literal[True]) -> tuple[Tensor, AttentionMaps]: ...

    def forward(self, data: Data, return_attention: bool = False) -> Tensor | tuple[Tensor, AttentionMaps]:
        fractions = getattr(data, "fractions", None)
        if fractions is None:
            raise ValueError(
                "CompositionSAGNN needs composition graphs (fractions per element node); this batch has none "
                "(crystal graphs?): train structure tasks with sagnn_lightning.models.SAGNN"
            )
        dtype = self.input.weight.dtype
        batch, ptr, num_graphs, max_num_atoms = batch_layout(data)
        fractions = fractions.to(dtype)
        log_w = torch.log(fractions)  # every aggregation adds log w to its logits: weights ∝ w · exp(logit)
        x = self.input(torch.cat([self.element_features(data.atomic_numbers).to(dtype), fractions[:, None]], -1))
        maps: AttentionMaps | None = {} if return_attention else None
        for b, block in enumerate(self.blocks):
            x = block(x, log_w, data.edge_index)
            if self.attention == "each":
                x = apply_attention(self.attention_layers, b, x, ptr, max_num_atoms, maps, key_bias=log_w)
        if self.attention == "last":
            x = apply_attention(self.attention_layers, 0, x, ptr, max_num_atoms, maps, key_bias=log_w)
        pooled = self.pool(x, log_w, batch, num_graphs)
        out = self.head(self.readout_dropout(pooled))
        return out if maps is None else (out, maps)

    def extra_repr(self) -> str:
        return f"num_targets={self.num_targets}, attention={self.attention!r}"
