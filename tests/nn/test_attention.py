"""AtomSelfAttention vs torch.nn.MultiheadAttention run crystal by crystal; masking; gradcheck in float64."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from sagnn_lightning.nn.attention import AtomSelfAttention

LENGTHS = [1, 5, 2, 9, 3]  # a one-atom crystal, and one bigger than the others


def packed(lengths, dim, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), dim, generator=g, dtype=dtype)
    ptr = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return x, ptr, max(lengths)


def mha_copy(layer: AtomSelfAttention, dtype: torch.dtype) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` holding the layer's q/k/v and output projections (eval mode)."""
    mha = nn.MultiheadAttention(layer.dim, layer.heads, batch_first=True, dtype=dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]))
        mha.out_proj.weight.copy_(layer.out_proj.weight)
        mha.out_proj.bias.copy_(layer.out_proj.bias)
    return mha.eval()


def torch_mha_reference(layer: AtomSelfAttention, x, ptr):
    """The same weights in ``nn.MultiheadAttention``, applied to each crystal separately."""
    mha = mha_copy(layer, x.dtype)
    outs = []
    for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist()):
        xs = x[a:b].unsqueeze(0)
        outs.append(layer.norm(xs + mha(xs, xs, xs, need_weights=False)[0]).squeeze(0))
    return torch.cat(outs)


@pytest.mark.parametrize("heads", [1, 4, 8, 16])
def test_matches_multihead_attention_per_crystal(heads):
    torch.manual_seed(heads)
    layer = AtomSelfAttention(32, heads, backend="torch").double()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x, ptr, max_len = packed(LENGTHS, 32)
    out = layer(x, ptr, max_len)
    assert out.shape == x.shape
    with torch.no_grad():
        torch.testing.assert_close(out, torch_mha_reference(layer, x, ptr), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("heads", [1, 8])
def test_norm_first_matches_pre_norm_multihead_attention_per_crystal(heads):
    """Pre-norm: ``x + MHA(LayerNorm(x))`` crystal by crystal, no LayerNorm after the sum."""
    torch.manual_seed(heads)
    layer = AtomSelfAttention(32, heads, backend="torch", norm_first=True).double()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x, ptr, max_len = packed(LENGTHS, 32)
    mha = mha_copy(layer, x.dtype)
    expected = []
    for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist()):
        h = layer.norm(x[a:b]).unsqueeze(0)
        expected.append(x[a:b] + mha(h, h, h, need_weights=False)[0].squeeze(0))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, ptr, max_len), torch.cat(expected), rtol=1e-10, atol=1e-10)
        out, weights = layer(x, ptr, max_len, return_weights=True)  # the inspection path agrees
        torch.testing.assert_close(out, torch.cat(expected), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(weights.sum(-1)[0, :, : LENGTHS[0]], torch.ones(heads, LENGTHS[0], dtype=x.dtype))
        layer.out_proj.weight.zero_()
        layer.out_proj.bias.zero_()
        torch.testing.assert_close(layer(x, ptr, max_len), x)  # a silent attention leaves x as it was
    with pytest.raises(ValueError, match="norm_first"):
        AtomSelfAttention(32, heads, residual=False, norm_first=True)


def test_no_information_crosses_crystals():
    torch.manual_seed(0)
    layer = AtomSelfAttention(16, 4, backend="torch").double()
    x, ptr, max_len = packed(LENGTHS, 16)
    out = layer(x, ptr, max_len)
    y = x.clone()
    y[ptr[3] : ptr[4]] += 1.0  # change crystal 3 only
    out2 = layer(y, ptr, max_len)
    same = torch.ones(x.shape[0], dtype=torch.bool)
    same[ptr[3] : ptr[4]] = False
    torch.testing.assert_close(out2[same], out[same], rtol=0, atol=1e-13)
    assert not torch.allclose(out2[~same], out[~same])


def test_atom_order_equivariance():
    torch.manual_seed(0)
    layer = AtomSelfAttention(16, 2, backend="torch").double()
    x, ptr, max_len = packed(LENGTHS, 16)
    perm = torch.cat([a + torch.randperm(b - a) for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())])
    torch.testing.assert_close(layer(x[perm], ptr, max_len), layer(x, ptr, max_len)[perm], rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    torch.manual_seed(0)
    layer = AtomSelfAttention(8, 2, backend="torch").double()
    x, ptr, max_len = packed([1, 3, 2], 8)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: layer(t, ptr, max_len), (x,))
    small = AtomSelfAttention(4, 2, backend="torch").double()  # parameters too: keep it small (88 inputs)
    x4, ptr4, max4 = packed([1, 3, 2], 4)

    def with_params(t, *ps):
        names = [n for n, _ in small.named_parameters()]
        return torch.func.functional_call(small, dict(zip(names, ps)), (t, ptr4, max4))

    params = [p.detach().clone().requires_grad_(True) for p in small.parameters()]
    assert torch.autograd.gradcheck(with_params, (x4, *params))


def test_residual_and_norm_options_and_errors():
    x, ptr, max_len = packed([3, 2], 8)
    bare = AtomSelfAttention(8, 2, backend="torch", residual=False, layer_norm=False).double()
    assert isinstance(bare.norm, nn.Identity)
    assert not torch.allclose(bare(x, ptr, max_len), x)
    wide = AtomSelfAttention(8, 3, head_dim=5, backend="torch").double()
    assert wide(x, ptr, max_len).shape == x.shape and wide.q_proj.out_features == 15
    with pytest.raises(ValueError, match="divisible"):
        AtomSelfAttention(8, 3)
    with pytest.raises(ValueError, match="backend"):
        AtomSelfAttention(8, 2, backend="cuda")  # type: ignore[arg-type]


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = AtomSelfAttention(8, 2, dropout=0.5, backend="torch").double()
    x, ptr, max_len = packed([4, 4], 8)
    layer.eval()
    torch.testing.assert_close(layer(x, ptr, max_len), layer(x, ptr, max_len))
    layer.train()
    assert not torch.allclose(layer(x, ptr, max_len), layer(x, ptr, max_len))


def test_int32_and_int64_ptr_agree():
    layer = AtomSelfAttention(8, 2, backend="torch").double()
    x, ptr, max_len = packed(LENGTHS, 8)
    torch.testing.assert_close(layer(x, ptr.int(), max_len), layer(x, ptr.long(), max_len))


def test_triton_backend_matches_torch_backend():
    """The interface contract with the Triton kernel (int32 ptr, max_seqlen); interpreted on CPU."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'sagnn-lightning[triton]')")
    kernel = importlib.import_module("sagnn_lightning.kernels.triton_attention")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not kernel.interpreted():
        pytest.skip("no GPU and Triton was imported without TRITON_INTERPRET=1 (set in tests/conftest.py)")
    torch.manual_seed(0)
    layer = AtomSelfAttention(16, 4, backend="torch").to(device)
    x, ptr, max_len = packed([1, 5, 3], 16, dtype=torch.float32)
    x, ptr = x.to(device).requires_grad_(True), ptr.to(device)
    ref = layer(x, ptr, max_len)
    (gx_ref,) = torch.autograd.grad(ref.square().sum(), x)
    layer.backend = "triton"
    out = layer(x, ptr, max_len)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-3, atol=2e-3)


def test_auto_backend_runs_float64():
    layer = AtomSelfAttention(8, 2).double()  # auto: the PyTorch path for float64 on any device
    x, ptr, max_len = packed([2, 3], 8)
    assert layer(x, ptr, max_len).dtype == torch.float64
