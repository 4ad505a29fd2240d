"""DDP on CPU with 2 processes (a subprocess: DDP re-launches the script): both ranks train on disjoint
shards, weights stay identical, logged metrics are global, W&B and files are written by rank 0 only.
Every run has a hard timeout, so a hang (ranks waiting in different collectives) fails instead of
stalling the suite; the README's command runs as typed, in a terminal, with Lightning's tqdm bar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sagnn_lightning.lit.module import SAGNNModule
from tests.lit.conftest import REPO, quickstart_argv, read_rows, run_in_terminal, run_python, wandb_run_bytes

#: Lightning's advice printed when an epoch-level value is logged without a cross-process reduction
SYNC_DIST_ADVICE = "sync_dist"


def _with_progress_bar(tiny_yaml):
    """The tiny model config with Lightning's default progress bar left on (a DDP run must not need it off)."""
    text = tiny_yaml.read_text().replace("  enable_progress_bar: false\n", "")
    assert "enable_progress_bar" not in text
    tiny_yaml.write_text(text)
    return tiny_yaml


def _rank_recorder_config(tmp_path, ranks):
    """A config adding ``RankRecorder`` (each rank writes ``<ranks>/rank<r>.json`` at the end of fit)."""
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: tests.lit.helpers.RankRecorder\n"
        f"      init_args:\n        out_dir: {ranks}\n"
    )
    return callbacks


@pytest.mark.parametrize("bar", ["default", "tqdm"])
def test_readme_multi_device_command_in_a_terminal(bar, offline_env, tmp_path):
    """The README's DDP command, typed in a shell (stdout is a terminal: progress bars on), finishes: with
    Lightning's default bar (Rich, since the test extras install `rich`) and with tqdm (the bar of the original
    hang, Lightning's default where `rich` is absent)."""
    env = {**offline_env, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(REPO / "recipes" / "quickstart.py"),
        "fit",
        "--config",
        str(REPO / "recipes" / "quickstart.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
    ]
    if bar == "tqdm":
        command.append("--trainer.callbacks+=pytorch_lightning.callbacks.TQDMProgressBar")
    status, output = run_in_terminal(command, env, cwd=tmp_path, timeout=300)
    assert status == 0, output[-4000:]
    assert output.count("sagnn fit done:") == 1, output[-4000:]
    if bar == "tqdm":
        assert "Validation DataLoader" in output  # the tqdm bar really was on
    else:
        assert "\x1b[" in output and "Epoch 0/0" in output  # Rich's live bar really was on
    assert SYNC_DIST_ADVICE not in output and "Traceback" not in output, output[-4000:]
    assert (tmp_path / "runs" / "quickstart" / "checkpoints" / "last.ckpt").is_file()


def test_sigterm_ends_a_two_process_run(sample_run, offline_env, tmp_path):
    """SIGTERM to the launching process ends both ranks within seconds (no rank left in a collective)."""
    _with_progress_bar(sample_run["tiny"])
    env = {**offline_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            *quickstart_argv(
                sample_run,
                "--trainer.accelerator=cpu",
                "--trainer.devices=2",
                "--trainer.strategy=ddp",
                "--trainer.max_epochs=1000",
                "--trainer.logger=false",
            ),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # one line per epoch (stdout is a pipe): wait until training runs
            lines.append(line)
            if line.startswith("epoch 2/") or time.monotonic() > deadline:
                break
        assert any(line.startswith("epoch 2/") for line in lines), "".join(lines)[-3000:]
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        took = time.monotonic() - start
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert took < 10, f"took {took:.1f} s to stop"
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopping all ranks; resume with the same command plus --ckpt_path last" in rest
    for _ in range(50):  # no rank (or other child) is left behind
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        left = subprocess.run(["ps", "-o", "pid,stat,args", "-g", str(proc.pid)], capture_output=True, text=True)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"processes left 5 s after the launcher exited:\n{left.stdout}")


def test_ddp_two_cpu_processes(sample_run, offline_env, tmp_path):
    _with_progress_bar(sample_run["tiny"])
    root, ranks = sample_run["root"], tmp_path / "ranks"
    callbacks = _rank_recorder_config(tmp_path, ranks)
    proc = run_python(
        quickstart_argv(
            sample_run,
            "--config",
            str(callbacks),
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.max_epochs=2",
            "--data.init_args.batch_size=4",
            root=root,
        ),
        offline_env,
        timeout=280,
    )
    records = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2] and records[0]["strategy"] == "DDPStrategy"

    # both ranks trained, on disjoint halves of the training split (2 epochs each)
    ckpt_path = root / "checkpoints" / "last.ckpt"
    module = SAGNNModule.load_from_checkpoint(ckpt_path).eval()
    assert [len(r["train_ids"]) for r in records] == [2, 2]  # epochs seen by each rank
    from sagnn_lightning.data.crystal import CrystalDataModule

    dm = CrystalDataModule(
        str(sample_run["csv"]),
        target_columns=["band_gap"],
        val_fraction=0.2,
        test_fraction=0.2,
        batch_size=8,
        progress=False,
    )
    train_ids, val_ids = set(dm.split_ids["train"]), dm.split_ids["val"]
    for epoch in (0, 1):
        shards = [records[r]["train_ids"][epoch] for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) > 0
        assert set(shards[0]) | set(shards[1]) == train_ids
        # DistributedSampler pads an odd split with one repeat; otherwise the shards are disjoint
        assert len(shards[0]) + len(shards[1]) - len(train_ids) == len(set(shards[0]) & set(shards[1])) <= 1
    # gradients were all-reduced: identical weights on both ranks
    assert records[0]["param_checksum"] == pytest.approx(records[1]["param_checksum"], rel=1e-9, abs=1e-9)

    # logged validation metrics are global: same on both ranks and equal to the MAE over the whole split
    assert len(val_ids) % 2 == 0, "an even validation split makes the global metric exact"
    for key in ("val/mae", "val/rmse", "val/loss"):
        assert records[0]["metrics"][key] == pytest.approx(records[1]["metrics"][key], rel=1e-6)
    dm.setup("fit")
    with torch.no_grad():
        pairs = [(module(b)[:, 0], b.y[:, 0]) for b in dm.val_dataloader()]
    pred, y = torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs])
    assert records[0]["metrics"]["val/mae"] == pytest.approx(float((pred - y).abs().mean()), rel=1e-5)

    # rank 0 only: one W&B run, one summary line, files in the run dir
    run, data = wandb_run_bytes(root)
    assert len(list((root / "wandb").glob("offline-run-*"))) == 1 and b"val/mae" in data
    assert proc.stdout.count("sagnn fit done:") == 1
    assert (root / "parity_val.png").is_file()
    assert "Warning" not in proc.stderr and SYNC_DIST_ADVICE not in proc.stderr, proc.stderr[-3000:]
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]  # stdout is a pipe

    # predict with 2 processes: every test crystal exactly once
    out = tmp_path / "preds.csv"
    run_python(
        quickstart_argv(
            sample_run,
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.logger=false",
            f"--ckpt_path={ckpt_path}",
            f"--predictions.output={out}",
            root=root,
            subcommand="predict",
        ),
        offline_env,
        timeout=200,
    )
    ids = [r["id"] for r in read_rows(out)]
    assert sorted(ids) == sorted(dm.split_ids["test"])
    assert np.isfinite([float(r["prediction"]) for r in read_rows(out)]).all()


def test_torchrun_two_nodes_on_localhost(sample_run, offline_env, tmp_path):
    """Multi-node as a cluster launches it: ``torchrun --nnodes 2 --nproc-per-node 1`` twice (one per "node",
    node ranks 0 and 1) with a static localhost rendezvous, gloo, one epoch of a recipe. Lightning takes the
    torchrun environment; both ranks see world size 2 and end with identical weights."""
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root, ranks = sample_run["root"], tmp_path / "ranks"
    callbacks = _rank_recorder_config(tmp_path, ranks)
    recipe = quickstart_argv(
        sample_run,
        "--config",
        str(callbacks),
        "--trainer.accelerator=cpu",
        "--trainer.num_nodes=2",
        "--trainer.devices=1",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--data.init_args.batch_size=4",
        root=root,
    )
    env = {**offline_env, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                *recipe,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for node in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(out + err[-3000:] for out, err in outputs)
    records = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2] and records[0]["strategy"] == "DDPStrategy"
    assert all(len(r["train_ids"]) == 1 and r["train_ids"][0] for r in records)  # one epoch, a shard each
    assert records[0]["param_checksum"] == pytest.approx(records[1]["param_checksum"], rel=1e-9, abs=1e-9)
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert sum(out.count("sagnn fit done:") for out, _ in outputs) == 1  # rank 0 reports
