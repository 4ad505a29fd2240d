"""The self-attention layer's fused CPU training node equals the layer's PyTorch path (padded SDPA through
autograd's graph), values and every gradient, over crystal sizes that hit each branch; gradcheck in float64."""

from __future__ import annotations

import math

import pytest
import torch

from sagnn_lightning.nn.attention import AtomSelfAttention
from sagnn_lightning.nn.fused_attention import FusedSelfAttention, PaddedLayout, cpu_attention_kernel_available

pytestmark = pytest.mark.skipif(not cpu_attention_kernel_available(), reason="this torch has no fused CPU attention")

SIZES = [[1], [1, 5, 2, 9, 3], [4, 0, 7], [16, 16], [3] * 11]  # a one-atom crystal, an empty one, equal sizes


def _batch(lengths, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), dim, generator=g, dtype=dtype) * 2
    ptr = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    batch = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return x, ptr, batch, max(lengths)


def _values_and_grads(layer, x, ptr, batch, max_len):
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = layer(x, ptr, max_len, batch=batch)
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in layer.parameters())], out.grad_fn


@pytest.mark.parametrize("lengths", SIZES)
@pytest.mark.parametrize(("dim", "heads"), [(32, 8), (32, 1), (12, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_first", [False, True])
def test_fused_equals_the_layers_pytorch_path(lengths, dim, heads, dtype, norm_first, monkeypatch):
    torch.manual_seed(len(lengths) + heads)
    layer = AtomSelfAttention(dim, heads, norm_first=norm_first).to(dtype)
    args = _batch(lengths, dim, dtype, seed=dim + heads)
    fused, node = _values_and_grads(layer, *args)
    assert any("FusedSelfAttention" in type(f).__name__ for f, _ in _walk(node))
    monkeypatch.setattr(AtomSelfAttention, "_fusable", lambda *a: False)
    plain, plain_node = _values_and_grads(layer, *args)
    assert not any("FusedSelfAttention" in type(f).__name__ for f, _ in _walk(plain_node))
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for a, b in zip(fused, plain, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **tol)


def _walk(node, depth=0):
    """The autograd nodes under ``node`` (a few levels: residual, norm, the attention)."""
    if node is None or depth > 4:
        return []
    found = [(node, depth)]
    for child, _ in node.next_functions:
        found += _walk(child, depth + 1)
    return found


def test_gradcheck_float64_every_input():
    torch.manual_seed(0)
    dim, heads, lengths = 8, 2, [3, 1, 4]
    layer = AtomSelfAttention(dim, heads).double()
    x, ptr, batch, max_len = _batch(lengths, dim, torch.float64, seed=1)
    layout = PaddedLayout.of(ptr, x.shape[0], max_len, x.dtype, batch)
    params = [p.detach().clone().requires_grad_(True) for name, p in layer.named_parameters() if "norm" not in name]

    def attention(x, *p):  # the transposed weights as views of the parameters, as the layer passes them
        weights_t = tuple(w.detach().t() for w in p[0::2])
        return FusedSelfAttention.apply(x, layout, heads, 1 / math.sqrt(dim // heads), weights_t, *p)

    assert torch.autograd.gradcheck(attention, (x.requires_grad_(True), *params))


@pytest.mark.parametrize("lengths", SIZES)
def test_padded_layout_places_each_atom_at_its_crystal_and_slot(lengths):
    x, ptr, batch, max_len = _batch(lengths, 4, torch.float32, seed=2)
    from_ptr = PaddedLayout.of(ptr, x.shape[0], max_len, x.dtype)
    from_batch = PaddedLayout.of(ptr, x.shape[0], max_len, x.dtype, batch)
    expected = [b * max_len + slot for b, n in enumerate(lengths) for slot in range(n)]
    for layout in (from_ptr, from_batch):
        assert layout.position.tolist() == expected
        keys = layout.mask.view(len(lengths), max_len)
        for b, n in enumerate(lengths):
            assert (keys[b, :n] == 0).all() and torch.isneginf(keys[b, n:]).all()


@pytest.mark.parametrize("case", ["no_grad", "dropout", "key_bias", "return_weights"])
def test_other_cases_take_the_layers_own_path(case):
    layer = AtomSelfAttention(8, 2, dropout=0.1 if case == "dropout" else 0.0).train()
    x, ptr, batch, max_len = _batch([3, 2], 8, torch.float32, seed=3)
    x.requires_grad_(True)
    key_bias = torch.zeros(5) if case == "key_bias" else None
    with torch.set_grad_enabled(case != "no_grad"):
        out = layer(x, ptr, max_len, key_bias=key_bias, return_weights=case == "return_weights", batch=batch)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (5, 8)
    assert not any("FusedSelfAttention" in type(f).__name__ for f, _ in _walk(out.grad_fn))
