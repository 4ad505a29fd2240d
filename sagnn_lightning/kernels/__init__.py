"""Packed variable-length multi-head attention: reference, PyTorch and Triton backends."""

from sagnn_lightning.kernels.dispatch import (
    checked_triton_attention,
    resolve_backend,
    triton_available,
    varlen_attention,
)
from sagnn_lightning.kernels.reference import (
    varlen_attention_padded,
    varlen_attention_reference,
    varlen_attention_weights,
)
from sagnn_lightning.kernels.self_check import KernelFallbackWarning, KernelSelfCheck

__all__ = [
    "KernelFallbackWarning",
    "KernelSelfCheck",
    "checked_triton_attention",
    "resolve_backend",
    "triton_available",
    "varlen_attention",
    "varlen_attention_padded",
    "varlen_attention_reference",
    "varlen_attention_weights",
]
