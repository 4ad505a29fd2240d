"""The composition recipes as a user types them, on the real matbench composition tasks (subprocess + timeout)."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
import torch

from tests.lit.conftest import SHARED, run_python

MATBENCH = SHARED / "matbench"


def needs(task: str):
    path = MATBENCH / f"{task}.json.gz"
    if not path.is_file():
        pytest.skip(f"needs the shared matbench data ({path})")
    return path


@pytest.mark.shared_data
def test_steels_recipe_fits_and_tests_with_its_own_config(tmp_path, offline_env) -> None:
    needs("matbench_steels")
    root = tmp_path / "run"
    common = [f"--data.data_home={MATBENCH}", "--data.progress=false", f"--trainer.default_root_dir={root}"]
    proc = run_python(["recipes/matbench_steels.py", "fit", *common, "--trainer.max_epochs=2"], offline_env)
    assert "sagnn fit done:" in proc.stdout and "best val/mae=" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["class_path"] == "sagnn_lightning.models.CompositionSAGNN"
    assert hp["target_names"] == ["yield strength"] and hp["task_type"] == "regression"
    proc = run_python(
        [
            "recipes/matbench_steels.py",
            "test",
            *common,
            "--trainer.logger=false",
            f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}",
        ],
        offline_env,
    )
    assert "sagnn test done:" in proc.stdout and "test/mae=" in proc.stdout


@pytest.mark.shared_data
def test_classification_recipe_logs_auroc_and_the_ablation_override(tmp_path, offline_env) -> None:
    needs("matbench_expt_is_metal")
    root = tmp_path / "run"
    proc = run_python(
        [
            "recipes/matbench_expt_is_metal.py",
            f"--data.data_home={MATBENCH}",
            "--data.progress=false",
            "--model.model.init_args.attention=none",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=10",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={root}",
        ],
        offline_env,
    )
    assert "best val/auroc=" in proc.stdout, proc.stdout[-2000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["task_type"] == "classification"
    assert not any(k.startswith("model.attention_layers") for k in ckpt["state_dict"])


@pytest.mark.shared_data
def test_users_formula_csv_trains_through_the_composition_datamodule(tmp_path, offline_env) -> None:
    with gzip.open(needs("matbench_expt_gap"), "rt") as fh:
        rows = json.load(fh)["data"][:200]
    data = tmp_path / "my_gaps.csv"
    pd.DataFrame({"formula": [r[0] for r in rows], "gap_eV": [r[1] for r in rows]}).to_csv(data, index=False)
    root = tmp_path / "run"
    proc = run_python(
        [
            "-m",
            "sagnn_lightning",
            "fit",
            "--config",
            "recipes/configs/composition.yaml",
            "--data=sagnn_lightning.data.CompositionDataModule",
            f"--data.data_file={data}",
            "--data.target_columns=[gap_eV]",
            "--data.progress=false",
            "--trainer.max_epochs=2",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={root}",
        ],
        offline_env,
    )
    assert "best val/mae=" in proc.stdout
    proc = run_python(
        [
            "-m",
            "sagnn_lightning",
            "test",
            "--config",
            "recipes/configs/composition.yaml",
            "--data=sagnn_lightning.data.CompositionDataModule",
            f"--data.data_file={data}",
            "--data.target_columns=[gap_eV]",
            "--data.progress=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={root}",
            f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}",
        ],
        offline_env,
    )
    assert "sagnn test done:" in proc.stdout and "test/mae=" in proc.stdout
