"""What a run shows the user: the parity plot of the best checkpoint (with units), one line per epoch when
stdout is a log file, no upstream noise (W&B's anonymous warning, Lightning's tips), and a clear error for
data files too small to split."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.cli import cli_main
from sagnn_lightning.lit.callbacks import ParityPlot
from sagnn_lightning.lit.module import SAGNNModule
from tests.lit.conftest import REPO, crystal_data_yaml, quickstart_argv, run_python, write_sample_csv

BASE = REPO / "recipes" / "configs" / "sagnn.yaml"


def test_parity_plot_shows_the_best_checkpoint(sample_run, offline_env, tmp_path):
    # epoch 0 is the best by construction ("epoch", min): the plot must show epoch 0, not the last epoch
    cli = cli_main(
        [
            "fit",
            "--config",
            str(sample_run["data"]),
            "--config",
            str(sample_run["tiny"]),
            f"--trainer.default_root_dir={sample_run['root']}",
            "--trainer.max_epochs=3",
            "--trainer.logger=false",
            "--checkpoint.monitor=epoch",
            "--checkpoint.mode=min",
            "--model.optimizer.init_args.lr=0.01",
            "--data.init_args.target_units=[eV]",
        ],
        configs=[BASE],
    )
    parity = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ParityPlot))
    assert parity._labels["val"] == "best checkpoint, epoch 0"
    best = cli.trainer.checkpoint_callback.best_model_path
    assert "best-0-" in best
    module = SAGNNModule.load_from_checkpoint(best).eval()
    with torch.no_grad():
        expected = {
            sid: float(p) for b in cli.datamodule.val_dataloader() for sid, p in zip(b.sample_id, module(b)[:, 0])
        }
    plotted = {row[0]: row[2][0] for row in parity._last["val"]}
    assert plotted.keys() == expected.keys()
    for sid, value in plotted.items():
        assert value == pytest.approx(expected[sid], rel=1e-5, abs=1e-6)
    last = SAGNNModule.load_from_checkpoint(cli.trainer.checkpoint_callback.last_model_path).eval()
    with torch.no_grad():  # and the last epoch's model predicts differently (the check above can tell them apart)
        moved = [
            abs(float(p) - expected[sid])
            for b in cli.datamodule.val_dataloader()
            for sid, p in zip(b.sample_id, last(b)[:, 0])
        ]
    assert max(moved) > 1e-3
    assert cli.datamodule.target_units == ["eV"]  # labels the axes


def test_bundled_sample_knows_its_units():
    from sagnn_lightning.data.crystal import CrystalDataModule

    dm = CrystalDataModule("sample:mp_abx3_perovskites", target_columns=["band_gap", "formation_energy_per_atom"])
    assert dm.target_units == ["eV", "eV/atom"]


def test_a_run_logged_to_a_file_is_one_line_per_epoch_and_free_of_upstream_noise(sample_run, offline_env, tmp_path):
    env = {k: v for k, v in offline_env.items() if k != "WANDB_SILENT"}  # W&B's own warnings must show if any
    tiny = sample_run["tiny"].read_text().replace("  enable_progress_bar: false\n", "")
    sample_run["tiny"].write_text(tiny)
    proc = run_python(quickstart_argv(sample_run, "--trainer.max_epochs=3"), env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val/mae=" in line and "train/loss" in line for line in epochs)
    assert "\r" not in proc.stdout  # no tqdm refreshes in a log
    output = proc.stdout + proc.stderr
    assert "anonymous" not in output and "Tip:" not in output and "litlogger" not in output
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    assert "\x1b" not in output  # no ANSI colour codes in a log (W&B's sync lines included)


@pytest.mark.parametrize("rich_installed", [True, False])
@pytest.mark.parametrize("terminal", [True, False])
def test_lightning_default_bar_becomes_one_line_per_epoch_only_in_logs(
    rich_installed, terminal, sample_run, offline_env, monkeypatch
):
    # Lightning's default bar is Rich when `rich` is importable, else tqdm; seen on a GPU machine with rich:
    # the log held only the Rich bar's last frame. Either default is replaced in a log, neither in a terminal.
    from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
    from pytorch_lightning.trainer.connectors import callback_connector

    import sagnn_lightning.cli.lightning as cli_module
    from sagnn_lightning.lit.progress import EpochLineProgressBar

    monkeypatch.setattr(callback_connector, "_RICH_AVAILABLE", rich_installed)
    monkeypatch.setattr(cli_module, "_stdout_is_terminal", lambda: terminal)
    tiny = sample_run["tiny"].read_text().replace("  enable_progress_bar: false\n", "")
    sample_run["tiny"].write_text(tiny)
    cli = cli_main(
        [
            "--config",
            str(sample_run["data"]),
            "--config",
            str(sample_run["tiny"]),
            f"--trainer.default_root_dir={sample_run['root']}",
            "--trainer.logger=false",
        ],
        configs=[BASE],
        run=False,
    )
    bars = [cb for cb in cli.trainer.callbacks if isinstance(cb, ProgressBar)]
    default = RichProgressBar if rich_installed else TQDMProgressBar
    assert [type(bar) for bar in bars] == [default if terminal else EpochLineProgressBar]


@pytest.mark.parametrize("rows, split", [(1, "train"), (3, "val")])
def test_data_too_small_to_split_is_one_clear_error(rows, split, offline_env, tmp_path):
    csv = write_sample_csv(tmp_path / f"mp{rows}.csv", rows)
    data = tmp_path / "data.yaml"
    data.write_text(
        crystal_data_yaml(csv)
        .replace("val_fraction: 0.2", "val_fraction: 0.1")
        .replace("test_fraction: 0.2", "test_fraction: 0.0")
    )
    proc = run_python(
        quickstart_argv({"data": data}, "--trainer.max_epochs=1", "--trainer.logger=false", root=tmp_path / "run"),
        offline_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    size = {"train": rows, "val": 0}[split]
    assert f"the {split} split has {size} crystal(s) of {rows} usable rows" in errors[0]
    assert "--data.val_fraction" in errors[0] and "at least 2" in errors[0]


def test_configure_wandb_run_is_the_one_place_for_the_run_dir_and_id(tmp_path):
    """W&B files go under the run dir unless save_dir is given; a resumed fit continues the run its checkpoint
    names, unless an id is given."""
    import torch

    from sagnn_lightning.lit.wandb import CHECKPOINT_RUN_ID_KEY, configure_wandb_run

    init: dict = {}
    configure_wandb_run(init, tmp_path / "run", None)
    assert init == {"save_dir": str(tmp_path / "run")}
    mine = {"save_dir": "/elsewhere"}
    configure_wandb_run(mine, tmp_path / "run", None)
    assert mine == {"save_dir": "/elsewhere"}
    ckpt = tmp_path / "last.ckpt"
    torch.save({CHECKPOINT_RUN_ID_KEY: "abc123", "state_dict": {}}, ckpt)
    resumed: dict = {"save_dir": "."}
    configure_wandb_run(resumed, tmp_path / "run", ckpt)
    assert resumed == {"save_dir": str(tmp_path / "run"), "id": "abc123"}
    given = {"id": "keep"}
    configure_wandb_run(given, None, ckpt)
    assert given == {"id": "keep"}


def test_an_error_of_every_rank_is_printed_once(offline_env, tmp_path):
    """``--trainer.devices=3`` (DDP on CPU, 3 processes) on data too small to split: every rank fails the same way,
    the user reads one line (rank 0's), not three."""
    csv = write_sample_csv(tmp_path / "mp1.csv", 1)
    data = tmp_path / "data.yaml"
    data.write_text(crystal_data_yaml(csv).replace("test_fraction: 0.2", "test_fraction: 0.0"))
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=3", "--trainer.strategy=ddp"]
    options = ["--trainer.max_epochs=1", "--trainer.logger=false", *ddp]
    argv = quickstart_argv({"data": data}, *options, root=tmp_path / "run")
    proc = run_python(argv, dict(offline_env, OMP_NUM_THREADS="1"), timeout=300, check=False)
    assert proc.returncode != 0, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "usable rows" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
