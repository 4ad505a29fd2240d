"""benchmarks/versus_commit.py: both sides run on the same data, the CSV has the ratio, the base's worktree is gone."""

from __future__ import annotations

import csv
import subprocess

from tests.scripts import load_script

versus_commit = load_script("benchmarks/versus_commit.py")


def test_this_checkout_against_head_writes_the_ratio_and_cleans_up(tmp_path):
    out = tmp_path / "versus.csv"
    argv = ["--base", "HEAD", "--models", "composition_recipe", "--rounds", "1", "--batches", "1"]
    assert versus_commit.main([*argv, "--passes", "1", "--batch-size", "4", "--out", str(out)]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["model"] == "composition_recipe" and float(row["base_crystals_per_s"]) > 0
    ratio = float(row["crystals_per_s"]) / float(row["base_crystals_per_s"])
    assert abs(float(row["ratio"]) - ratio) < 1e-2  # rounded to 3 decimals, from unrounded speeds
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=versus_commit.REPO, capture_output=True, text=True)
    assert ".versus_commit_" not in worktrees.stdout
