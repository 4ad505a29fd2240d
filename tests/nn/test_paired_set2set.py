"""The paired Set2Set as one autograd node (:class:`PairedSet2Set`) against its plain-torch form and against two
``Set2Set`` modules (tests/nn/test_readout.py): values and the gradients of the features and of every LSTM
parameter, ``gradcheck`` in float64 over all inputs, empty segments, and separate bias gradients."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.nn.paired_set2set import PairedSet2Set, set2set_pair, set2set_pair_reference
from sagnn_lightning.nn.readout import Set2Set


def _inputs(sizes1, sizes2, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    index1 = torch.repeat_interleave(torch.arange(len(sizes1)), torch.tensor(sizes1))
    index2 = torch.repeat_interleave(torch.arange(len(sizes2)), torch.tensor(sizes2))
    index2 = index2[torch.randperm(index2.numel(), generator=g)]  # an index need not be sorted
    x1 = torch.randn(index1.numel(), dim, generator=g, dtype=dtype)
    x2 = torch.randn(index2.numel(), dim, generator=g, dtype=dtype)
    lstm = [p.detach().to(dtype) for s in (Set2Set(dim, 1), Set2Set(dim, 1)) for p in s.lstm._layer(0)]
    return x1, index1, x2, index2, lstm


def _run(fn, x1, index1, x2, index2, dim_size, steps, lstm):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x1, x2, *lstm)]
    a, b, *params = leaves
    out = fn(a, index1, b, index2, dim_size, steps, *params)
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), *(torch.zeros_like(t) if t.grad is None else t.grad for t in leaves)]


def _reference(x1, index1, x2, index2, dim_size, steps, *lstm):
    return set2set_pair_reference(x1, index1, x2, index2, dim_size, steps, lstm[:4], lstm[4:])


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize(
    ("sizes1", "sizes2", "dim"), [([1, 4, 7, 2], [5, 9, 3, 11], 6), ([3], [8], 2), ([2, 0, 5], [0, 4, 1], 4)]
)
def test_function_equals_reference(steps, sizes1, sizes2, dim):
    torch.manual_seed(steps)
    x1, index1, x2, index2, lstm = _inputs(sizes1, sizes2, dim, seed=steps + dim)
    args = (x1, index1, x2, index2, len(sizes1), steps, lstm)
    for fused, plain in zip(_run(PairedSet2Set.apply, *args), _run(_reference, *args), strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("steps", [1, 3])
def test_gradcheck_every_input(steps):
    torch.manual_seed(0)
    x1, index1, x2, index2, lstm = _inputs([2, 3], [1, 4], 3, seed=7)
    inputs = tuple(t.requires_grad_(True) for t in (x1, x2, *lstm))
    assert torch.autograd.gradcheck(
        lambda a, b, *params: PairedSet2Set.apply(a, index1, b, index2, 2, steps, *params), inputs
    )


def test_bias_gradients_are_separate_tensors():
    """``b_ih`` and ``b_hh`` get equal gradients, but as two tensors: a clip scales each one in place once."""
    torch.manual_seed(0)
    x1, index1, x2, index2, lstm = _inputs([2, 3], [1, 4], 3, seed=1, dtype=torch.float32)
    params = [t.requires_grad_(True) for t in lstm]
    PairedSet2Set.apply(x1, index1, x2, index2, 2, 3, *params).sum().backward()
    torch.testing.assert_close(params[2].grad, params[3].grad)
    assert params[2].grad.data_ptr() != params[3].grad.data_ptr()


def test_dispatch():
    """One ``PairedSet2Set`` node in eager training; the plain graph without grad or under autocast."""
    x1, index1, x2, index2, lstm = _inputs([2, 3], [1, 4], 3, seed=2, dtype=torch.float32)
    x1.requires_grad_(True)
    out = set2set_pair(x1, index1, x2, index2, 2, 3, lstm[:4], lstm[4:])
    assert type(out.grad_fn).__name__ == "PairedSet2SetBackward"
    with torch.no_grad():
        torch.testing.assert_close(set2set_pair(x1, index1, x2, index2, 2, 3, lstm[:4], lstm[4:]), out.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = set2set_pair(x1, index1, x2, index2, 2, 3, lstm[:4], lstm[4:])
    assert type(auto.grad_fn).__name__ != "PairedSet2SetBackward"
