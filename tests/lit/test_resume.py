"""Resume after a hard kill mid-epoch: ``--ckpt_path last`` ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json

import pytest

from tests.lit.conftest import quickstart_argv, run_python

EPOCHS, BATCH, STEPS = 2, 4, 7  # 28 training crystals (48 - 10 val - 10 test) → 7 steps per epoch


def _callbacks(path, *items: str) -> str:
    path.write_text("trainer:\n  callbacks:\n" + "".join(items))
    return str(path)


def _item(class_path: str, **init_args) -> str:
    args = "".join(f"        {k}: {v}\n" for k, v in init_args.items())
    return f"    - class_path: {class_path}\n      init_args:\n{args}"


def test_killed_mid_epoch_and_resumed_matches_uninterrupted(sample_run, offline_env, tmp_path):
    common = [f"--trainer.max_epochs={EPOCHS}", f"--data.init_args.batch_size={BATCH}", "--trainer.logger=false"]

    # reference: uninterrupted
    ref = tmp_path / "ref.json"
    run_python(
        quickstart_argv(
            sample_run,
            *common,
            "--config",
            _callbacks(tmp_path / "a.yaml", _item("tests.lit.helpers.FinalState", path=ref)),
            root=tmp_path / "reference",
        ),
        offline_env,
    )

    # interrupted: SIGKILL at step 11 (epoch 1, batch 4 of 7); the newest checkpoint (step 10) is mid-epoch
    root = tmp_path / "interrupted"
    killed = run_python(
        quickstart_argv(
            sample_run,
            *common,
            "--checkpoint.last_every_n_train_steps=1",
            "--config",
            _callbacks(tmp_path / "b.yaml", _item("tests.lit.helpers.KillAtStep", step=11)),
            root=root,
        ),
        offline_env,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt").is_file()

    # resume with the same command + --ckpt_path last
    out = tmp_path / "resumed.json"
    proc = run_python(
        quickstart_argv(
            sample_run,
            *common,
            "--ckpt_path=last",
            "--checkpoint.last_every_n_train_steps=1",
            "--config",
            _callbacks(tmp_path / "c.yaml", _item("tests.lit.helpers.FinalState", path=out)),
            root=root,
        ),
        offline_env,
    )
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    assert "resuming from a checkpoint that ended before the epoch ended" not in proc.stderr

    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert b["global_step"] == a["global_step"] == EPOCHS * STEPS
    assert b["param_head"] == pytest.approx(a["param_head"], rel=1e-6, abs=1e-7)
    assert b["param_sum"] == pytest.approx(a["param_sum"], rel=1e-6)
    for key in ("val/loss", "val/mae", "val/rmse", "val/r2"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-6, abs=1e-7), key


def test_loader_order_depends_on_seed_and_epoch_and_skips_after_restore():
    import torch

    from sagnn_lightning.data.loader import EpochRandomSampler, ResumableDataLoader

    data = list(range(10))
    sampler = EpochRandomSampler(data, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == data
    loader = ResumableDataLoader(data, batch_size=3, sampler=EpochRandomSampler(data, seed=3))
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    seen = [next(iterator), next(iterator)]
    state = loader.state_dict()
    assert state == {"trained_batches": 2, "epoch": 1}
    fresh = ResumableDataLoader(data, batch_size=3, sampler=EpochRandomSampler(data, seed=3))
    fresh.load_state_dict(state)  # a new process: epoch and position come from the checkpoint
    rest = list(fresh)
    sampler.set_epoch(1)
    full = [b.tolist() for b in ResumableDataLoader(data, batch_size=3, sampler=sampler)]
    assert [b.tolist() for b in seen + rest] == full
    assert [torch.cat(rest).numel()] == [10 - 6]


def test_default_last_ckpt_is_the_last_epoch_and_resume_continues_the_wandb_run(sample_run, offline_env, tmp_path):
    """Default checkpoint settings (no mid-epoch saves): killed mid-epoch long after the last improvement,
    ``--ckpt_path last`` redoes at most that epoch, ends with the uninterrupted run's weights, and logs to
    the same W&B run (same id)."""
    epochs, kill_step = 5, 3 * STEPS + 3  # SIGKILL in epoch 3 (0-based), three batches in
    # the best checkpoint stays at epoch 0 (monitor "epoch", mode min): every later epoch is "no improvement"
    common = [
        f"--trainer.max_epochs={epochs}",
        f"--data.init_args.batch_size={BATCH}",
        "--checkpoint.monitor=epoch",
        "--checkpoint.mode=min",
    ]
    ref = tmp_path / "ref.json"
    run_python(
        quickstart_argv(
            sample_run,
            *common,
            "--trainer.logger=false",
            "--config",
            _callbacks(tmp_path / "a.yaml", _item("tests.lit.helpers.FinalState", path=ref)),
            root=tmp_path / "reference",
        ),
        offline_env,
    )

    root = tmp_path / "interrupted"
    killed = run_python(
        quickstart_argv(
            sample_run,
            *common,
            "--config",
            _callbacks(tmp_path / "b.yaml", _item("tests.lit.helpers.KillAtStep", step=kill_step)),
            root=root,
        ),
        offline_env,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    import torch

    last = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = [p for p in (root / "checkpoints").glob("best-*.ckpt")]
    assert len(best) == 1 and best[0].name.startswith("best-0-")  # the last improvement was epoch 0
    assert last["global_step"] == 3 * STEPS  # the end of epoch 2, the last finished epoch
    first_run_id = last.get("wandb_run_id")
    assert first_run_id

    out = tmp_path / "resumed.json"
    run_python(
        quickstart_argv(
            sample_run,
            *common,
            "--ckpt_path=last",
            "--config",
            _callbacks(
                tmp_path / "c.yaml",
                _item("tests.lit.helpers.FinalState", path=out),
                _item("tests.lit.helpers.FirstStep", path=tmp_path / "first_step.json"),
            ),
            root=root,
        ),
        offline_env,
    )
    first_step = json.loads((tmp_path / "first_step.json").read_text())
    assert first_step["global_step"] == 3 * STEPS  # resumed at the start of epoch 3: only that epoch is redone

    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert b["global_step"] == a["global_step"] == epochs * STEPS
    assert b["param_head"] == pytest.approx(a["param_head"], rel=1e-6, abs=1e-7)
    assert b["param_sum"] == pytest.approx(a["param_sum"], rel=1e-6)

    # the same W&B run continues: both offline run folders carry the first run's id
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{first_run_id}") for r in runs), [r.name for r in runs]
