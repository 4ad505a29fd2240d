"""``HoldThenLinearDecay`` with a warm-up: the rate per epoch against the formula written out here, the budget
fitted by ``fit_to`` (warm-up + hold + decay = max_epochs), the argument checks and a resume."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.lit.schedules import HoldThenLinearDecay


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _expected(epoch: int, warmup: int, start: float, hold: int, decay: int, end: float) -> float:
    if epoch < warmup:
        return start + (1 - start) * epoch / warmup
    t = epoch - warmup - hold
    return 1.0 if t <= 0 else 1.0 - (1.0 - end) * min(t, decay) / decay


@pytest.mark.parametrize(("warmup", "start", "hold"), [(0, 0.1, 3), (5, 0.1, 3), (4, 0.5, 0), (1, 1.0, 2)])
def test_rates_per_epoch(warmup, start, hold):
    optimizer = _optimizer(2e-3)
    schedule = HoldThenLinearDecay(
        optimizer, hold_epochs=hold, decay_epochs=None, end_factor=0.05, warmup_epochs=warmup, warmup_start_factor=start
    )
    schedule.fit_to(20)
    assert schedule.decay_epochs == 20 - warmup - hold
    rates = []
    for _ in range(25):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [2e-3 * _expected(e, warmup, start, hold, 20 - warmup - hold, 0.05) for e in range(25)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[20] == pytest.approx(2e-3 * 0.05) and rates[0] == pytest.approx(2e-3 * (start if warmup else 1))


def test_resume_continues_the_warm_up():
    first = _optimizer()
    schedule = HoldThenLinearDecay(first, hold_epochs=2, decay_epochs=4, warmup_epochs=4, warmup_start_factor=0.2)
    for _ in range(2):
        first.step()
        schedule.step()
    second = _optimizer()
    resumed = HoldThenLinearDecay(second, hold_epochs=2, decay_epochs=4, warmup_epochs=4, warmup_start_factor=0.2)
    resumed.load_state_dict(schedule.state_dict())
    second.param_groups[0]["lr"] = first.param_groups[0]["lr"]
    for _ in range(3):
        second.step()
        resumed.step()
        first.step()
        schedule.step()
        assert second.param_groups[0]["lr"] == pytest.approx(first.param_groups[0]["lr"])
    assert first.param_groups[0]["lr"] == pytest.approx(1.0)  # epoch 5: warm-up over, holding


@pytest.mark.parametrize(
    "kwargs", [{"warmup_epochs": -1}, {"warmup_start_factor": 0.0}, {"warmup_start_factor": 1.5}, {"end_factor": 0.0}]
)
def test_bad_arguments_name_themselves(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name.split("_")[0]):
        HoldThenLinearDecay(_optimizer(), **kwargs)
