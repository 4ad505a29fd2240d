"""``benchmarks/eager_fusions.py`` runs as its docstring says and writes one row per model."""

from __future__ import annotations

import csv

from tests.scripts import load_script


def test_writes_ops_and_speed_per_model(tmp_path):
    out = tmp_path / "fusions.csv"
    script = load_script("benchmarks/eager_fusions.py")
    argv = ["--batch-size", "4", "--batches", "1", "--rounds", "1", "--models", "composition_recipe", "--out", str(out)]
    assert script.main(argv) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["model"] == "composition_recipe"
    assert int(row["fwd_bwd_ops_fused"]) < int(row["fwd_bwd_ops_unfused"])
    assert float(row["crystals_per_s_fused"]) > 0 and float(row["crystals_per_s_unfused"]) > 0
