"""Per-part learning rates (``SAGNNModule(lr_multipliers=...)``): the optimizer's groups and rates, counted
against the model's own parameter names; the schedule scales every group alike; bad prefixes and multipliers
are one-line errors that name the option; the CLI flag as a user types it."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.errors import UsageError
from sagnn_lightning.lit.lr_multipliers import check_lr_multipliers, lr_param_groups
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.schedules import HoldThenLinearDecay
from sagnn_lightning.models import SAGNN


def _model() -> SAGNN:
    torch.manual_seed(0)
    return SAGNN(
        atom_embedding_dim=8,
        num_gaussians=6,
        num_blocks=2,
        hidden_dim=8,
        dense_hidden=8,
        conv_hidden=[8],
        heads=2,
        readout_hidden=[8],
    )


def test_groups_follow_the_names():
    model = _model()
    groups = lr_param_groups(model, {"attention_layers": 0.1, "blocks.1": 0.5, "blocks": 2.0})
    names = {id(p): n for n, p in model.named_parameters()}
    by_factor = {g["lr_multiplier"]: [names[id(p)] for p in g["params"]] for g in groups}
    assert set(by_factor) == {0.1, 0.5, 2.0, 1.0}
    assert all(n.startswith("attention_layers.") for n in by_factor[0.1])
    assert all(n.startswith("blocks.1.") for n in by_factor[0.5])  # the longer prefix wins
    assert all(n.startswith("blocks.0.") for n in by_factor[2.0])
    assert sorted(n for ns in by_factor.values() for n in ns) == sorted(names.values())  # each parameter once


def test_module_optimizer_and_schedule():
    module = SAGNNModule(
        _model(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        scheduler=lambda opt: HoldThenLinearDecay(opt, hold_epochs=1, decay_epochs=2, end_factor=0.5),
        lr_multipliers={"attention_layers": 0.1},
    )
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = {g["lr_multiplier"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx({0.1: 1e-4, 1.0: 1e-3})
    for _ in range(3):
        optimizer.step()
        schedule.step()
    rates = {g["lr_multiplier"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx({0.1: 0.5e-4, 1.0: 0.5e-3})  # both decayed to 50 %


def test_without_multipliers_one_group():
    module = SAGNNModule(_model(), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    (group,) = module.configure_optimizers().param_groups
    assert len(group["params"]) == sum(1 for _ in module.parameters())


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [
        ({"attention": 0.1}, "'attention' names no parameters; use any of: .*attention_layers"),
        ({"readout": 0}, "the multiplier of 'readout' must be a number > 0"),
        ({"readout": "fast"}, "the multiplier of 'readout' must be a number > 0"),
    ],
)
def test_bad_multipliers_name_the_option(multipliers, message):
    with pytest.raises(UsageError, match=r"^lr_multipliers: " + message):
        check_lr_multipliers(_model(), multipliers)
