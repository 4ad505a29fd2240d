"""``sagnn_lightning.lit.Deadline``: training stops mid-epoch at the deadline with its state in ``last.ckpt``, and
``--ckpt_path last`` ends with the weights of an uninterrupted run; usable from a recipe's command line."""

from __future__ import annotations

import itertools

import pytest
import torch

import sagnn_lightning.lit.deadline as deadline_module
from sagnn_lightning.errors import lightning_flag
from sagnn_lightning.lit import Deadline
from sagnn_lightning.lit.deadline import DeadlineReached, parse_duration
from tests.lit.conftest import quickstart_argv, run_python
from tests.lit.test_history import STEPS, _fit

EPOCHS = 2


def test_parse_duration():
    assert parse_duration("1:00:00:00") == 86400.0 and parse_duration("00:07:50:00") == 7 * 3600 + 50 * 60
    assert parse_duration("8:00:00") == 28800.0 and parse_duration("90") == 90.0
    for bad in ("1h", "1:2:3:4:5", "", "-5", "1.5"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_exactly_one_of_max_time_and_at(monkeypatch):
    monkeypatch.setattr(deadline_module, "_clock", lambda: 1000.0)
    assert Deadline(max_time="00:00:01:00").deadline == 1060.0 and Deadline(at=5.0).deadline == 5.0
    for kwargs in ({}, {"max_time": "1", "at": 5.0}):
        with pytest.raises(ValueError, match="exactly one"):
            Deadline(**kwargs)


def test_stops_mid_epoch_and_resumes_to_the_uninterrupted_weights(sample_run, offline_env, tmp_path, monkeypatch):
    cut = STEPS + 3  # 3 batches into epoch 2
    _fit(sample_run, tmp_path / "reference", EPOCHS)
    # clock reads: train start (#0), then one after each training step (#g after step g)
    calls = itertools.count()
    monkeypatch.setattr(deadline_module, "_clock", lambda: 0.0 if next(calls) < cut else 10.0)
    root = tmp_path / "cut"
    with pytest.raises(DeadlineReached) as stop:
        _fit(sample_run, root, EPOCHS, "--trainer.callbacks+=sagnn_lightning.lit.Deadline", "--trainer.callbacks.at=5")
    last = root / "checkpoints" / "last.ckpt"
    assert stop.value.step == cut and stop.value.checkpoint == last and stop.value.exit_code == 3
    assert "deadline reached" in str(stop.value) and "ckpt_path=last to continue" in str(stop.value)
    assert "--ckpt_path=last to continue" in stop.value.render(lightning_flag)  # as the recipe's command line names it
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == cut  # mid-epoch

    monkeypatch.setattr(deadline_module, "_clock", lambda: 0.0)
    _fit(
        sample_run,
        root,
        EPOCHS,
        "--trainer.callbacks+=sagnn_lightning.lit.Deadline",
        "--trainer.callbacks.at=5",
        ckpt_path=str(last),
    )
    ours = torch.load(last, map_location="cpu", weights_only=False)
    theirs = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ours["global_step"] == theirs["global_step"] == EPOCHS * STEPS
    for key, value in theirs["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][key], value, rtol=1e-6, atol=1e-7)


def test_a_recipe_stops_with_exit_status_3(sample_run, offline_env, tmp_path):
    """``--trainer.callbacks.max_time=00:00:00:00``: spent before the first batch, nothing trained or saved."""
    root = tmp_path / "run"
    proc = run_python(
        quickstart_argv(
            sample_run,
            "--trainer.callbacks+=sagnn_lightning.lit.Deadline",
            "--trainer.callbacks.max_time=00:00:00:00",
            "--trainer.logger=false",
            root=root,
        ),
        offline_env,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: deadline reached before training started" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(root.glob("checkpoints/*.ckpt"))
