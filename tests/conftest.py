"""Session-wide test setup (loaded before any test module is imported).

Without a GPU, the Triton kernels (``tests/kernels``) run on CPU tensors through Triton's interpreter.
Triton fixes interpreted-vs-compiled when ``triton`` itself is first imported, and torch_geometric
imports it, so ``TRITON_INTERPRET=1`` has to be set here, before the first test module's imports.
An explicit ``TRITON_INTERPRET`` in the environment is respected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
