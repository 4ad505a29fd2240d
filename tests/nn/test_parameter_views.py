"""Cached parameter views: reused while the parameter keeps its memory, remade when it is replaced, never stale."""

from __future__ import annotations

import copy
import pickle

import torch
from torch import nn

from sagnn_lightning.nn.dense import mlp
from sagnn_lightning.nn.parameter_views import ParameterViews, transposed


def test_a_view_is_reused_and_sees_in_place_updates():
    weight = nn.Parameter(torch.randn(3, 4))
    views = ParameterViews()
    first = views.get("w", weight, transposed)
    with torch.no_grad():
        weight.mul_(2.0)  # what an optimizer step does
    again = views.get("w", weight, transposed)
    assert again is first and not again.requires_grad
    torch.testing.assert_close(again, weight.detach().t())


def test_a_replaced_parameter_gets_a_new_view():
    weight = nn.Parameter(torch.randn(3, 4))
    views = ParameterViews()
    first = views.get("w", weight, transposed)
    weight.data = torch.randn(3, 4, dtype=torch.float64)  # what module.to()/.double() does
    again = views.get("w", weight, transposed)
    assert again is not first and again.dtype == torch.float64
    torch.testing.assert_close(again, weight.detach().t())


def test_pickle_and_deepcopy_drop_the_views():
    views = ParameterViews()
    views.get("w", nn.Parameter(torch.randn(2, 2)), transposed)
    assert pickle.loads(pickle.dumps(views))._views == {}
    assert copy.deepcopy(views)._views == {}


def test_a_stack_trained_then_converted_or_reloaded_still_computes_with_its_own_weights():
    """The fused dense stack caches its transposed weights: after an optimizer step, ``.double()``,
    ``load_state_dict(assign=True)`` and a deep copy it equals ``nn.Sequential``'s forward with the current weights."""
    torch.manual_seed(0)
    stack = mlp([4, 8, 3])
    x = torch.randn(5, 4, requires_grad=True)
    optimizer = torch.optim.Adam(stack.parameters(), lr=0.1, fused=True)
    stack(x).sum().backward()
    optimizer.step()

    def check(module, inputs):
        torch.testing.assert_close(module(inputs), nn.Sequential.forward(module, inputs))

    check(stack, x)
    stack = stack.double()
    check(stack, x.double())
    fresh = {k: torch.randn_like(v) for k, v in stack.state_dict().items()}
    stack.load_state_dict(fresh, assign=True)
    check(stack, x.double())
    twin = copy.deepcopy(stack)
    with torch.no_grad():
        twin[0].weight.add_(1.0)
    check(twin, x.double())
    check(stack, x.double())
