"""The edge update's first layer without the concatenation (:func:`gathered_linear`, one autograd node in eager
training) against ``nn.Linear`` on the explicit ``[v_i ‖ v_j ‖ e ‖ u_g]`` (an independent reference): values and
every gradient over several shapes, ``gradcheck`` in float64 (finite differences), and the plain-torch fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sagnn_lightning.nn.gathered_linear import GatheredLinear, gathered_linear, gathered_linear_reference, weight_parts


def _graph(atoms: int, edges: int, graphs: int, dims: tuple[int, int, int], out: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batch = torch.sort(torch.randint(0, graphs, (atoms,), generator=g)).values
    i, j = torch.randint(0, atoms, (edges,), generator=g), torch.randint(0, atoms, (edges,), generator=g)
    dv, de, du = dims
    tensors = [torch.randn(n, d, generator=g, dtype=dtype) for n, d in ((atoms, dv), (edges, de), (graphs, du))]
    weight = torch.randn(out, 2 * dv + de + du, generator=g, dtype=dtype)
    bias = torch.randn(out, generator=g, dtype=dtype)
    return (*tensors, i, j, batch[i], weight, bias)


def _concatenated(v, e, u, i, j, edge_batch, weight, bias):
    return F.linear(torch.cat([v[i], v[j], e, u[edge_batch]], dim=-1), weight, bias)


def _fused(v, e, u, i, j, edge_batch, weight, bias):
    return GatheredLinear.apply(v, e, u, i, j, edge_batch, _parts(weight, v, e, u), weight, bias)


def _values_and_grads(fn, args):
    leaves = [a.detach().requires_grad_(True) if a.is_floating_point() else a for a in args]
    out = fn(*leaves)
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), *(a.grad for a in leaves if a.is_floating_point())]


@pytest.mark.parametrize(
    ("atoms", "edges", "graphs", "dims", "out"),
    [(1, 1, 1, (3, 3, 3), 2), (7, 40, 3, (4, 4, 4), 6), (20, 13, 5, (5, 2, 3), 8), (9, 60, 9, (32, 32, 32), 64)],
)
def test_fused_equals_concatenation(atoms, edges, graphs, dims, out):
    args = _graph(atoms, edges, graphs, dims, out, seed=atoms + edges)
    for fused, reference in zip(_values_and_grads(_fused, args), _values_and_grads(_concatenated, args), strict=True):
        torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    for plain, reference in zip(
        _values_and_grads(gathered_linear_reference, args), _values_and_grads(_concatenated, args), strict=True
    ):
        torch.testing.assert_close(plain, reference, rtol=1e-12, atol=1e-12)


def _parts(weight, v, e, u):
    """The weight's split views, as :func:`gathered_linear` passes them (views: gradcheck's perturbations show)."""
    return weight_parts(weight.detach(), (v.shape[1], v.shape[1], e.shape[1], u.shape[1]))


def test_gradcheck_every_input():
    v, e, u, i, j, edge_batch, weight, bias = _graph(6, 17, 2, (3, 2, 4), 5, seed=3)
    inputs = [t.requires_grad_(True) for t in (v, e, u, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda v, e, u, w, b: GatheredLinear.apply(v, e, u, i, j, edge_batch, _parts(w, v, e, u), w, b), tuple(inputs)
    )


def test_partial_gradients():
    """Inputs that need no gradient get none (the first block's encoders feed all four; a frozen layer needs none)."""
    v, e, u, i, j, edge_batch, weight, bias = _graph(5, 11, 2, (3, 3, 3), 4, seed=4)
    weight.requires_grad_(True)
    GatheredLinear.apply(v, e, u, i, j, edge_batch, _parts(weight, v, e, u), weight, bias).sum().backward()
    (expected,) = torch.autograd.grad(_concatenated(v, e, u, i, j, edge_batch, weight, bias).sum(), weight)
    torch.testing.assert_close(weight.grad, expected)
    assert v.grad is None and e.grad is None and u.grad is None and bias.grad is None


def test_dispatch():
    """One ``GatheredLinear`` node in eager training; the plain graph without grad, under autocast, or without
    a bias; all equal."""
    args = list(_graph(6, 20, 2, (4, 4, 4), 5, seed=5, dtype=torch.float32))
    args[0].requires_grad_(True)
    assert type(gathered_linear(*args).grad_fn).__name__ == "GatheredLinearBackward"
    with torch.no_grad():
        torch.testing.assert_close(gathered_linear(*args), _concatenated(*args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(gathered_linear(*args).grad_fn).__name__ != "GatheredLinearBackward"
    no_bias = gathered_linear(*args[:-1], None)
    assert type(no_bias.grad_fn).__name__ != "GatheredLinearBackward"
    torch.testing.assert_close(no_bias, _concatenated(*args[:-1], None))
