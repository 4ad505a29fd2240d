"""Fixtures for the attention-kernel tests (``TRITON_INTERPRET`` is set in ``tests/conftest.py``)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when available (compiled kernels), else CPU (interpreted kernels)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def triton_attention(device: torch.device) -> ModuleType:
    """``sagnn_lightning.kernels.triton_attention``; skips when Triton is missing or cannot run here."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'sagnn-lightning[triton]')")
    module = importlib.import_module("sagnn_lightning.kernels.triton_attention")
    if device.type == "cpu" and not module.interpreted():
        pytest.skip(
            "no GPU and Triton was imported without TRITON_INTERPRET=1 (set it before the first import of triton)"
        )
    return module
