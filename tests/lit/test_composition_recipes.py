"""The composition recipes as a user types them, on the real matbench composition tasks (subprocess + timeout)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Composition

from sagnn_lightning.data import collate_graphs, composition_to_graph
from sagnn_lightning.data.matbench import official_fold
from sagnn_lightning.lit.module import SAGNNModule
from tests.lit.conftest import REPO, SHARED, run_python

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

    # the predict command on the task's official test split equals the module on pymatgen-parsed formulas
    out = tmp_path / "steels_fold0.csv"
    args = ["-m", "sagnn_lightning", "predict", "--ckpt", str(root / "checkpoints" / "last.ckpt")]
    run_python([*args, "--input", "matbench_steels", "--data-home", str(MATBENCH), "--output", str(out)], offline_env)
    predicted = pd.read_csv(out)
    _, test_ids = official_fold("matbench_steels", 0)
    assert predicted["id"].tolist() == test_ids
    with gzip.open(MATBENCH / "matbench_steels.json.gz", "rt") as fh:
        doc = json.load(fh)
    formula = {f"mb-steels-{i + 1:03d}": row[0] for i, row in zip(doc["index"], doc["data"])}
    module = SAGNNModule.load_from_checkpoint(root / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    with torch.no_grad():
        batch = collate_graphs([composition_to_graph(Composition(formula[i])) for i in test_ids])
        expected = module.predict_step(batch, 0)["prediction"].reshape(-1).numpy()
    np.testing.assert_allclose(predicted["prediction"].to_numpy(), expected, rtol=1e-5)
    # a formula table with one bad row: the rest is predicted, the bad one named on stderr
    table = tmp_path / "mine.csv"
    pd.DataFrame({"name": ["ok", "bad"], "composition": ["Fe0.7Ni0.2Co0.1", "Qz2"]}).to_csv(table, index=False)
    proc = run_python([*args, "--input", str(table), "--output", str(tmp_path / "mine_pred.csv")], offline_env)
    assert pd.read_csv(tmp_path / "mine_pred.csv")["id"].tolist() == ["ok"]
    assert "skipped: bad: cannot read the formula 'Qz2': unknown element symbol Qz." in proc.stderr
    wrong = subprocess.run(
        [sys.executable, *args, "--input", "matbench_jdft2d", "--output", str(tmp_path / "x.csv")],
        cwd=REPO,
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "error: --input matbench_jdft2d: a structure task, but the checkpoint is a composition (formula) model; "
        "predict structure tasks with a model trained on one"
    ]


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
