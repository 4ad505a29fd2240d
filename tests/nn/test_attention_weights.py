"""AtomSelfAttention(return_weights=True): the weights are torch.nn.MultiheadAttention's, rows sum to 1, padding is
zero, the output is the usual one, and a crystal's weights do not depend on its batch."""

from __future__ import annotations

import torch

from sagnn_lightning.nn.attention import AtomSelfAttention, split_by_crystal
from tests.nn.test_attention import LENGTHS, mha_copy, packed


def _layer(dim: int, heads: int, seed: int = 0) -> AtomSelfAttention:
    torch.manual_seed(seed)
    layer = AtomSelfAttention(dim, heads, backend="torch").double()
    with torch.no_grad():  # non-zero biases and LayerNorm affine parameters: every parameter matters
        for lin in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
            lin.bias.uniform_(-0.5, 0.5)
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    return layer.eval()


def test_weights_equal_multihead_attention_on_one_crystal():
    layer = _layer(32, 8)
    mha = mha_copy(layer, torch.float64)
    x, ptr, n = packed([9], 32, seed=1)
    with torch.no_grad():
        out, weights = layer(x, ptr, n, return_weights=True)
        ref_out, ref_heads = mha(x[None], x[None], x[None], need_weights=True, average_attn_weights=False)
        _, ref_mean = mha(x[None], x[None], x[None], need_weights=True, average_attn_weights=True)
    assert weights.shape == (1, 8, 9, 9)
    torch.testing.assert_close(weights, ref_heads, rtol=1e-10, atol=1e-12)  # [1, H, n, n], unaveraged
    torch.testing.assert_close(weights.mean(dim=1), ref_mean, rtol=1e-10, atol=1e-12)  # heads averaged
    torch.testing.assert_close(out, layer.norm(x + ref_out[0]), rtol=1e-10, atol=1e-10)


def test_key_bias_weights_equal_multihead_attention_with_an_additive_mask():
    """The composition model's ``key_bias = log w`` is MultiheadAttention's float ``attn_mask`` on every row."""
    layer = _layer(16, 4, seed=2)
    mha = mha_copy(layer, torch.float64)
    x, ptr, n = packed([5], 16, seed=3)
    fractions = torch.tensor([0.05, 0.4, 0.2, 0.3, 0.05], dtype=torch.float64)
    bias = fractions.log()
    with torch.no_grad():
        out, weights = layer(x, ptr, n, key_bias=bias, return_weights=True)
        ref_out, ref = mha(
            x[None], x[None], x[None], attn_mask=bias.expand(5, 5), need_weights=True, average_attn_weights=False
        )
    torch.testing.assert_close(weights, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, layer.norm(x + ref_out[0]), rtol=1e-10, atol=1e-10)


def test_rows_sum_to_one_and_padding_is_zero():
    layer = _layer(16, 4)
    lengths = [1, 5, 0, 9, 3]  # a one-atom crystal and an empty one
    x, ptr, n = packed(lengths, 16)
    with torch.no_grad():
        _, weights = layer(x, ptr, n, return_weights=True)
    assert weights.shape == (len(lengths), 4, 9, 9)
    for b, size in enumerate(lengths):
        rows = weights[b, :, :size, :size].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-12)
        assert (weights[b, :, size:, :] == 0).all() and (weights[b, :, :, size:] == 0).all()
        assert (weights[b, :, :size, :size] > 0).all()
    assert [w.shape for w in split_by_crystal(weights, ptr)] == [(4, s, s) for s in lengths]


def test_output_is_the_usual_one():
    layer = _layer(32, 8)
    x, ptr, n = packed(LENGTHS, 32)
    bias = torch.randn(x.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for key_bias in (None, bias):
            plain = layer(x, ptr, n, key_bias=key_bias)
            out, _ = layer(x, ptr, n, key_bias=key_bias, return_weights=True)
            torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    x32 = x.float()
    layer32 = layer.float()
    with torch.no_grad():
        torch.testing.assert_close(layer32(x32, ptr, n, return_weights=True)[0], layer32(x32, ptr, n))


def test_batched_weights_equal_one_by_one():
    layer = _layer(16, 2)
    x, ptr, n = packed(LENGTHS, 16)
    with torch.no_grad():
        batched = split_by_crystal(layer(x, ptr, n, return_weights=True)[1], ptr)
        for b, (start, end) in enumerate(zip(ptr[:-1].tolist(), ptr[1:].tolist())):
            alone = layer(x[start:end], torch.tensor([0, end - start]), end - start, return_weights=True)[1][0]
            torch.testing.assert_close(batched[b], alone, rtol=1e-12, atol=1e-14)


def test_weights_are_differentiable():
    layer = _layer(8, 2)
    x, ptr, n = packed([3, 2], 8)
    x.requires_grad_(True)
    _, weights = layer(x, ptr, n, return_weights=True)
    (grad,) = torch.autograd.grad(weights[0, 0, 0, 1], x)
    assert grad[:3].abs().sum() > 0 and (grad[3:] == 0).all()  # only crystal 0's atoms move its weights
