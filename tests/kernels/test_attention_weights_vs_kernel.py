"""The attention maps that ``return_weights=True`` exports are the ones the Triton kernel applies.

The kernel never materialises the weights, so the export takes an explicit-softmax PyTorch path. Here a layer on
the Triton backend (compiled on CUDA, interpreted on CPU) and the same layer's weights path must give the same
output, and the exported weights times the values must give the kernel's attention output, for 4, 8 and 16 heads
(SA-GNN's head widths 8, 4 and 2), with and without a key bias. ``benchmarks/gpu_check.sh`` runs this on a GPU.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from sagnn_lightning.kernels.dispatch import varlen_attention
from sagnn_lightning.nn.attention import AtomSelfAttention

LENGTHS = [5, 1, 17, 3, 40, 5]


def _layer(heads: int, device: torch.device) -> AtomSelfAttention:
    torch.manual_seed(heads)
    layer = AtomSelfAttention(32, heads, backend="triton")
    with torch.no_grad():
        for lin in (layer.q_proj, layer.k_proj, layer.v_proj):
            lin.weight.mul_(3.0)  # sharper than at initialisation: weights far from uniform
    return layer.to(device).eval()


@pytest.mark.parametrize("heads", [4, 8, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exported_weights_are_the_kernels(
    heads: int, with_bias: bool, triton_attention: ModuleType, device: torch.device
) -> None:
    layer = _layer(heads, device)
    g = torch.Generator().manual_seed(heads + 100 * with_bias)
    x = torch.randn(sum(LENGTHS), 32, generator=g).to(device)
    ptr = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], device=device)
    bias = torch.randn(x.shape[0], generator=g).to(device) if with_bias else None
    max_atoms = max(LENGTHS)
    with torch.no_grad():
        kernel_out = layer(x, ptr, max_atoms, key_bias=bias)
        weights_out, weights = layer(x, ptr, max_atoms, key_bias=bias, return_weights=True)
        # the same attention output from the kernel directly and from the exported weights
        v = layer.v_proj(x).view(-1, heads, 32 // heads)
        q = layer.q_proj(x).view(-1, heads, 32 // heads)
        k = layer.k_proj(x).view(-1, heads, 32 // heads)
        cu = ptr.to(torch.int32)
        direct = varlen_attention(q, k, v, cu, max_atoms, backend="triton", key_bias=bias)
    assert weights.amax() > 0.5  # not near-uniform: a wrong weight would show
    torch.testing.assert_close(weights_out, kernel_out, rtol=1e-4, atol=1e-4)
    for b, (start, end) in enumerate(zip(ptr[:-1].tolist(), ptr[1:].tolist())):
        n = end - start
        from_weights = torch.einsum("hij,jhd->ihd", weights[b, :, :n, :n], v[start:end])
        torch.testing.assert_close(from_weights, direct[start:end], rtol=1e-4, atol=1e-4)
