"""A training step never waits for the device: forward, loss, metric updates, backward and the recipes' optimizer
(Adam, fused) dispatch no host synchronisation, for SA-GNN and the composition model at the recipes' configuration
(counted with ``benchmarks/step_ops.py``'s ``OpCounter`` on real batches)."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.lit.module import SAGNNModule
from tests.scripts import load_script

step_ops = load_script("benchmarks/step_ops.py")


@pytest.fixture(scope="module")
def batches():
    return step_ops.real_batches(16)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
@pytest.mark.parametrize("name", ["sagnn_recipe", "composition_recipe"])
def test_a_training_step_has_no_host_sync(name, batches):
    factory, kind = step_ops.models()[name]
    module = SAGNNModule(factory(), target_mean=[1.0], target_std=[2.0])
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)  # as recipes/configs/*.yaml
    batch = batches[kind]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = module._step(batch, "train")["loss"]
        loss.backward()
        optimizer.step()

    step()  # creates the optimizer state
    with step_ops.OpCounter() as counter:
        step()
    assert counter.total > 100  # the counter sees the step
    assert dict(counter.syncs) == {}


def test_the_counter_sees_a_host_sync():
    """Not blind: ``.item()``, a boolean mask and ``bool(t)`` are counted."""
    x = torch.arange(5.0)
    with step_ops.OpCounter() as counter:
        x.sum().item()
        _ = x[x > 2]
        bool((x > 3).any())
    assert counter.syncs["aten._local_scalar_dense"] == 2 and counter.syncs["aten.index (boolean mask)"] == 1
