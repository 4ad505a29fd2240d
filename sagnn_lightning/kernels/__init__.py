"""Packed variable-length multi-head attention: reference, PyTorch and Triton backends."""

from sagnn_lightning.kernels.dispatch import resolve_backend, triton_available, varlen_attention
from sagnn_lightning.kernels.reference import varlen_attention_padded, varlen_attention_reference

__all__ = ["resolve_backend", "triton_available", "varlen_attention", "varlen_attention_padded", "varlen_attention_reference"]
