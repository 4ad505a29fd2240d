"""``sagnn_lightning.lit.EpochHistory``: one CSV row per validated epoch, from a recipe's command line, and kept
right across resumes (rows of a killed sitting dropped, earlier rows kept, time summed over the sittings)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from sagnn_lightning.cli import cli_main
from sagnn_lightning.lit import EpochHistory
from tests.lit.conftest import REPO, quickstart_argv, run_python

RECIPE = [REPO / "recipes" / "configs" / "sagnn.yaml", REPO / "recipes" / "quickstart.yaml"]
HEADER = "epoch,global_step,val_mae,val_auroc,val_loss,lr,train_seconds,sitting,finished_utc"
STEPS = 7  # 28 training crystals (48 - 10 val - 10 test), batch 4


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _fit(sample_run: dict[str, Path], root: Path, epochs: int, *extra: str, ckpt_path: str | None = None) -> Path:
    """The quickstart recipe's objects built by the CLI in this process (tiny model, 48 crystals), then ``fit``."""
    args = [
        "--config",
        str(sample_run["data"]),
        "--config",
        str(sample_run["tiny"]),
        "--data.init_args.batch_size=4",
        f"--trainer.max_epochs={epochs}",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]
    cli = cli_main(args, name="quickstart", configs=RECIPE, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return root / "checkpoints" / "last.ckpt"


def test_history_from_a_recipe_command_line(sample_run, offline_env, tmp_path):
    root, final = tmp_path / "run", tmp_path / "final.json"
    callbacks = tmp_path / "final.yaml"
    callbacks.write_text(
        f"trainer:\n  callbacks:\n    - class_path: tests.lit.helpers.FinalState\n      init_args:\n"
        f"        path: {final}\n"
    )
    run_python(
        quickstart_argv(
            sample_run,
            "--config",
            str(callbacks),
            "--trainer.callbacks+=sagnn_lightning.lit.EpochHistory",
            "--data.init_args.batch_size=4",
            "--trainer.max_epochs=3",
            "--trainer.logger=false",
            root=root,
        ),
        offline_env,
        timeout=240,
    )
    text = (root / "history.csv").read_text()
    assert text.splitlines()[0] == HEADER
    rows = _rows(root / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["global_step"]) for r in rows] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert [r["sitting"] for r in rows] == ["1", "1", "1"] and [r["val_auroc"] for r in rows] == ["", "", ""]
    seconds = [float(r["train_seconds"]) for r in rows]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    metrics = json.loads(final.read_text())["metrics"]  # what the run itself saw after its last validation
    assert float(rows[-1]["val_mae"]) == pytest.approx(metrics["val/mae"], abs=1e-6)
    assert float(rows[-1]["val_loss"]) == pytest.approx(metrics["val/loss"], abs=1e-6)
    assert not list(root.glob(".history.csv.*"))  # written atomically: no temporary file left


@pytest.mark.parametrize("state_in_checkpoint", [True, False])
def test_resume_keeps_the_checkpoints_epochs_and_drops_later_rows(
    sample_run, offline_env, tmp_path, state_in_checkpoint
):
    """Two epochs, then a row of an epoch that ``last.ckpt`` does not hold (a sitting killed after that validation);
    resumed to three epochs: epochs 1-2 as written, the stray row replaced by the new epoch 3 of sitting 2. Without
    the callback's state in the checkpoint (a run started without it) the file's rows up to the checkpoint's epoch
    are kept the same way."""
    root = tmp_path / "run"
    last = _fit(sample_run, root, 2, "--trainer.callbacks+=sagnn_lightning.lit.EpochHistory")
    path = root / "history.csv"
    first = path.read_text()
    assert [r["epoch"] for r in _rows(path)] == ["1", "2"]
    stray = "3,21,9.0,,9.0,0.003,99.0,1,2000-01-01T00:00:00Z\n"
    path.write_text(first + stray)
    if not state_in_checkpoint:
        state = torch.load(last, map_location="cpu", weights_only=False)
        assert state["callbacks"].pop("EpochHistory")["rows"][-1]["epoch"] == 2
        torch.save(state, last)

    _fit(sample_run, root, 3, "--trainer.callbacks+=sagnn_lightning.lit.EpochHistory", ckpt_path=str(last))
    text = path.read_text()
    assert text.startswith(first) and stray not in text
    rows = _rows(path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and [r["sitting"] for r in rows] == ["1", "1", "2"]
    assert rows[2]["global_step"] == str(3 * STEPS) and float(rows[2]["val_mae"]) != 9.0
    assert float(rows[2]["train_seconds"]) > float(rows[1]["train_seconds"])


def test_path_option_and_state_round_trip(tmp_path):
    history = EpochHistory(path=tmp_path / "elsewhere.csv")
    history.rows = [{"epoch": 1, "val_mae": 0.5}]
    history.sittings = 2
    restored = EpochHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.rows == history.rows and restored.sittings == 2
    assert restored.train_seconds == pytest.approx(history.train_seconds)
    assert history.file(trainer=None) == tmp_path / "elsewhere.csv"  # type: ignore[arg-type]
