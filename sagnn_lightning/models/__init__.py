"""Model assembly: SA-GNN (MEGNet blocks + multi-head self-attention over atoms)."""

from sagnn_lightning.models.sagnn import SAGNN, AttentionPlacement, megnet

__all__ = ["SAGNN", "AttentionPlacement", "megnet"]
