"""benchmarks/composition_features.py: one real recipe run per element-feature source, resumable CSV."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO / "../shared/data/matbench").resolve()
SCRIPT = REPO / "benchmarks" / "composition_features.py"


def test_runs_the_recipe_per_source_and_keeps_finished_rows(tmp_path, monkeypatch, capsys) -> None:
    if not (DATA / "matbench_steels.json.gz").is_file():
        pytest.skip("needs the shared matbench_steels data")
    monkeypatch.setenv("SAGNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    spec = importlib.util.spec_from_file_location("composition_features", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "features.csv"
    argv = ["--tasks", "matbench_steels", "--sources", "megnet", "--max-epochs", "1", "--jobs", "1"]
    argv += ["--data-home", str(DATA), "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert module.main(argv) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["task"], r["element_features"], r["metric"]) for r in rows] == [("matbench_steels", "megnet", "val/mae")]
    assert math.isfinite(float(rows[0]["best_val_metric"])) and float(rows[0]["best_val_metric"]) > 0
    assert (tmp_path / "work" / "steels_fold0_megnet" / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    assert module.main(argv) == 0  # finished rows are kept: nothing is trained again
    assert "fold 0 megnet: best" not in capsys.readouterr().out
