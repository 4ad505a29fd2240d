"""``benchmarks/ablation.py --quick`` on the real matbench_perovskites fold-0 training file: every variant trains
through the recipes' CLI into the same CSV columns as before, with the network the variant names."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagnn_lightning.models import SAGNN

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO / "../shared/data/matbench/matbench_perovskites_fold0_train.json.gz").resolve()
COLUMNS = (
    "variant,description,heads,attention,seed,params,epochs,batch_size,lr,train_crystals,val_crystals,val_mae_best,"
    "best_epoch,val_mae_final,train_mae_final,train_crystals_per_s,train_crystals_per_cpu_s,train_time_s,val_time_s,"
    "wall_time_s,threads,machine"
)
CURVE_COLUMNS = "variant,seed,epoch,val_mae,train_mae,epoch_train_time_s"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_file(), reason=f"shared matbench data not found at {DATA}")
def test_quick_ablation_writes_the_table_through_the_cli(tmp_path):
    out = tmp_path / "ablation.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "benchmarks/ablation.py", "--quick", "--variants", "h8_last", "none"]
    command += ["--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.read_text().splitlines()[0] == COLUMNS
    assert out.with_name("ablation_curves.csv").read_text().splitlines()[0] == CURVE_COLUMNS
    with out.open(newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    with out.with_name("ablation_curves.csv").open(newline="") as fh:
        curves = {r["variant"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(curves) == {"h8_last", "none"}
    for name, kwargs in (("h8_last", {"heads": 8, "attention": "last"}), ("none", {"attention": "none"})):
        row = rows[name]
        # the CLI built the network the variant names (SAGNN defaults + its arguments, one target)
        assert int(row["params"]) == sum(p.numel() for p in SAGNN(num_targets=1, **kwargs).parameters())
        assert (row["train_crystals"], row["val_crystals"], row["epochs"], row["lr"]) == ("256", "64", "1", "0.001")
        assert row["best_epoch"] == "1" and row["val_mae_best"] == row["val_mae_final"] == curves[name]["val_mae"]
        assert 0.0 < float(row["val_mae_final"]) < 5.0 and float(row["train_mae_final"]) > 0.0
        assert float(row["train_crystals_per_s"]) > 0 and float(row["wall_time_s"]) >= float(row["train_time_s"])
        assert f"   val MAE best {row['val_mae_best']} (epoch 1)" in proc.stdout
    assert rows["h8_last"]["val_mae_final"] != rows["none"]["val_mae_final"]  # two different models trained
    assert "graphs ready in" in proc.stdout and "13628 train / 1514 val crystals" in proc.stdout

    report = subprocess.run(
        [sys.executable, "benchmarks/ablation.py", "--report", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        report.returncode == 0 and "| h8_last: SA-GNN, 8 heads" in report.stdout and "| none: w/o MHSA" in report.stdout
    )
