"""ConcatFeatures (one split in the backward) equals torch.cat, values and gradients; gradcheck in float64."""

from __future__ import annotations

import torch

from sagnn_lightning.nn.concat import ConcatFeatures, concat_features


def test_equals_torch_cat_with_gradients():
    torch.manual_seed(0)
    parts = [torch.randn(6, d, requires_grad=True) for d in (3, 1, 5)]
    weight = torch.randn(6, 9)
    out = concat_features(parts)
    assert "ConcatFeatures" in type(out.grad_fn).__name__
    grads = torch.autograd.grad((out * weight).sum(), parts)
    expected = torch.autograd.grad((torch.cat(parts, dim=-1) * weight).sum(), parts)
    torch.testing.assert_close(out, torch.cat(parts, dim=-1))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    parts = [torch.randn(4, d, dtype=torch.float64, requires_grad=True) for d in (2, 3)]
    assert torch.autograd.gradcheck(lambda *p: ConcatFeatures.apply(*p), tuple(parts))


def test_inference_and_other_shapes_use_torch_cat():
    with torch.no_grad():
        assert concat_features([torch.ones(2, 1), torch.zeros(2, 2)]).grad_fn is None
    out = concat_features([torch.ones(2, 3, 1, requires_grad=True), torch.zeros(2, 3, 2)])
    assert out.shape == (2, 3, 3) and "Cat" in type(out.grad_fn).__name__
