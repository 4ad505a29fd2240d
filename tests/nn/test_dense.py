"""The fused dense stack (:class:`ShiftedSoftplusStack`, taken by :class:`MLP` in eager training) against the plain
``nn.Sequential`` forward of the same modules: values and every gradient, over many shapes, plus ``gradcheck`` in
float64 (finite differences)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sagnn_lightning.nn.dense import MLP, ShiftedSoftplusStack, mlp


def _plain(stack: MLP, x: torch.Tensor) -> torch.Tensor:
    return nn.Sequential.forward(stack, x)


def _grads(stack: MLP, x: torch.Tensor, forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.detach().requires_grad_(True)
    stack.zero_grad(set_to_none=True)
    out = forward(stack, x)
    (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [x.grad, *(p.grad for p in stack.parameters())]


@pytest.mark.parametrize("dims", [(4, 3), (16, 64, 32), (96, 64, 64, 32), (7, 5, 9, 2, 3)])
@pytest.mark.parametrize("activate_last", [True, False])
@pytest.mark.parametrize("rows", [1, 33])
def test_fused_equals_sequential(dims, activate_last, rows):
    torch.manual_seed(len(dims) + rows)
    stack = mlp(dims, activate_last=activate_last)
    x = torch.randn(rows, dims[0]) * 3
    fused_out, fused_grads = _grads(stack, x, MLP.forward)
    plain_out, plain_grads = _grads(stack, x, _plain)
    assert stack._fused_plan(x.requires_grad_(), list(stack)) is not None  # the fused path was the one compared
    torch.testing.assert_close(fused_out, plain_out)
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(fused, plain)


def test_a_slice_that_starts_with_the_activation_is_fused_too():
    """``mlp(...)[1:]`` (MEGNet's edge update after its split first layer) starts with the activation."""
    torch.manual_seed(0)
    tail = mlp([8, 16, 16, 4])[1:]
    assert isinstance(tail, MLP)
    x = torch.randn(10, 16) * 4
    assert tail._fused_plan(x.requires_grad_(), list(tail)) == (True, (True, True))
    fused_out, fused_grads = _grads(tail, x, MLP.forward)
    plain_out, plain_grads = _grads(tail, x, _plain)
    torch.testing.assert_close(fused_out, plain_out)
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(fused, plain)


@pytest.mark.parametrize("activate_input", [False, True])
def test_gradcheck_float64(activate_input):
    torch.manual_seed(1)
    stack = mlp([5, 7, 3], activate_last=False).double()
    params = [p.detach().clone().requires_grad_(True) for p in stack.parameters()]
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    plan = (activate_input, (True, False))

    def stack_of(x, *p):  # the transposed weights as views of the parameters, as the module passes them
        return ShiftedSoftplusStack.apply(x, plan, (p[0].detach().t(), p[2].detach().t()), *p)

    assert torch.autograd.gradcheck(stack_of, (x, *params))


def test_input_without_grad_gets_none_and_parameters_still_train():
    torch.manual_seed(2)
    stack = mlp([4, 6, 2])
    out = stack(torch.randn(3, 4))
    assert out.grad_fn is not None and "ShiftedSoftplusStack" in type(out.grad_fn).__name__
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in stack.parameters())


@pytest.mark.parametrize(
    "case",
    ["silu", "no_grad", "three_dims", "float64_input"],
)
def test_other_cases_run_the_sequential_forward(case):
    torch.manual_seed(3)
    stack = mlp([4, 6, 2], activation="silu" if case == "silu" else "softplus2")
    x = torch.randn(2, 3, 4) if case == "three_dims" else torch.randn(3, 4)
    if case == "float64_input":
        x = x.double()
    with torch.set_grad_enabled(case != "no_grad"):
        assert stack._fused_plan(x, list(stack)) is None
        if case != "float64_input":
            torch.testing.assert_close(stack(x), _plain(stack, x))
