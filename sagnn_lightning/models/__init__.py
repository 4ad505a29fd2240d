"""Model assembly: SA-GNN (MEGNet blocks + multi-head self-attention over atoms) and its composition variant."""

from sagnn_lightning.models.composition import CompositionSAGNN
from sagnn_lightning.models.sagnn import SAGNN, AttentionPlacement, megnet

__all__ = ["SAGNN", "AttentionPlacement", "CompositionSAGNN", "megnet"]
