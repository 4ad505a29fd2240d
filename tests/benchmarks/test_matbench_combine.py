"""``benchmarks/matbench_v0.1_sagnn/combine.py``: runner submissions put together (disjoint folds) and averaged
(one fold, several seeds), checked against the input files read as plain JSON, targets read straight from the
data file, and matbench's own loader; refusals of inputs that are not one configuration."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.test_matbench_runner import DATA, TASK, TINY, _argv, _targets_from_file

REPO = Path(__file__).resolve().parents[2]
COMBINE = REPO / "benchmarks" / "matbench_v0.1_sagnn" / "combine.py"
RUNNER = REPO / "benchmarks" / "matbench_v0.1_sagnn" / "run.py"

pytestmark = pytest.mark.skipif(not (DATA / f"{TASK}.json.gz").is_file(), reason=f"no shared data at {DATA}")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs: seed 0 on folds 0 and 1 (two "lanes": one fold each) and seed 1 on fold 0, 1 epoch each, and
    seed 1 on fold 0 for 2 epochs (another configuration)."""
    import torch

    runner = _load(RUNNER, "matbench_v01_sagnn_run_for_combine")
    root = tmp_path_factory.mktemp("combine")
    before = torch.get_num_threads()
    made = {}
    for label, folds, seed, epochs in (
        ("s0_f0", [0], 0, 1),
        ("s0_f1", [1], 0, 1),
        ("s1_f0", [0], 1, 1),
        ("e2", [0], 1, 2),
    ):
        out = root / label
        argv = _argv(out, folds, epochs, root / "graph_cache")
        cut = argv.index("--")
        assert runner.main([*argv[:cut], "--seed", str(seed), *argv[cut:]]) == 0
        made[label] = out
    torch.set_num_threads(before)
    return made


def _fold(folder: Path, k: int) -> dict:
    return json.loads((folder / "results.json.gz").read_text())["tasks"][TASK]["results"][f"fold_{k}"]


def _combine(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(COMBINE), *map(str, args), "--data-home", str(DATA)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_lanes_are_joined_and_seeds_averaged(runs, tmp_path):
    from matbench.metadata import mbv01_validation

    out = tmp_path / "combined"
    done = _combine(runs["s0_f0"], runs["s0_f1"], runs["s1_f0"], "--out", out, "--cache-dir", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{TASK} fold 0: MAE" in done.stdout and "from 2 run(s)" in done.stdout
    truth = _targets_from_file()
    folds = json.loads((out / "results.json.gz").read_text())["tasks"][TASK]["results"]

    # fold 1: one run (a lane) recorded it, so it is copied as it was
    assert folds["fold_1"]["data"] == _fold(runs["s0_f1"], 1)["data"]
    assert folds["fold_1"]["scores"]["mae"] == pytest.approx(_fold(runs["s0_f1"], 1)["scores"]["mae"], rel=1e-12)

    # fold 0: two seeds, so the mean of their predictions, id by id, scored on the data file's targets
    ids = list(mbv01_validation.splits[TASK]["fold_0"]["test"])
    a = np.array([_fold(runs["s0_f0"], 0)["data"][i] for i in ids])
    b = np.array([_fold(runs["s1_f0"], 0)["data"][i] for i in ids])
    assert np.abs(a - b).max() > 1e-3  # two different models: a mean is not a copy
    stored = np.array([folds["fold_0"]["data"][i] for i in ids])
    np.testing.assert_allclose(stored, (a + b) / 2, rtol=1e-12)
    target = np.array([truth[i] for i in ids])
    assert folds["fold_0"]["scores"]["mae"] == pytest.approx(float(np.abs(stored - target).mean()), rel=1e-9)
    params = folds["fold_0"]["parameters"]
    np.testing.assert_allclose(params["member_test_mae"], [np.abs(a - target).mean(), np.abs(b - target).mean()])
    assert "seeds [0, 1]" in params["ensemble"] and len(params["combined_from"]) == 2

    # the runs' spread per row, as --val-folds writes it
    with open(out / "uncertainty" / f"{TASK}_fold_0.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ids
    np.testing.assert_allclose([float(r["member_1"]) for r in rows], b, rtol=1e-9)
    spread = np.array([float(r["std_raw"]) for r in rows])
    assert np.all(spread >= 0) and np.corrcoef(spread, np.abs(a - b))[0, 1] > 0.99

    # matbench reads it back (two folds recorded); info.json says how fold 0 was predicted
    meta = json.loads((out / "results.json.gz").read_text())["user_metadata"]
    assert meta["configs"][TASK]["seed"] == [0, 1] and meta["summary"][TASK]["n_folds"] == 2
    assert meta["configs"][TASK]["model"]["hidden_dim"] == TINY["hidden_dim"]
    info = json.loads((out / "info.json").read_text())
    assert "the mean of 2 models (seeds 0, 1)" in info["algorithm_long"]


def test_the_same_run_twice_is_refused_in_one_line(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["s0_f0"], copy, ignore=shutil.ignore_patterns("work"))
    done = _combine(runs["s0_f0"], copy, "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and "same --seed" in done.stderr and "fold 0" in done.stderr
    assert not (tmp_path / "out").exists()


def test_another_configuration_is_refused_naming_the_setting(runs, tmp_path):
    done = _combine(runs["s0_f0"], runs["e2"], "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "another configuration" in done.stderr and "max_epochs" in done.stderr and str(runs["e2"]) in done.stderr


def test_a_changed_file_is_refused_naming_it(runs, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(runs["s1_f0"], changed, ignore=shutil.ignore_patterns("work"))
    path = changed / "results.json.gz"
    stored = json.loads(path.read_text())
    stored["user_metadata"]["configs"][TASK]["max_epochs"] = 400
    path.write_text(json.dumps(stored))
    done = _combine(runs["s0_f0"], changed, "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {path}: ") and "Hash" in done.stderr


def test_a_folder_without_a_submission_is_named(runs, tmp_path):
    done = _combine(runs["s0_f0"], tmp_path, "--out", tmp_path / "out")
    assert (
        done.returncode == 2
        and done.stderr == f"error: {tmp_path}: no results.json.gz; give the --out folder of a run.py run\n"
    )


def test_a_combined_submission_is_an_input_again(runs, tmp_path):
    """A combined fold is copied with its spread file and seeds; it is not averaged again with one of its seeds."""
    pair = tmp_path / "pair"
    done = _combine(runs["s0_f0"], runs["s1_f0"], "--out", pair)
    assert done.returncode == 0, done.stderr[-2000:]

    joined = tmp_path / "joined"
    done = _combine(pair, runs["s0_f1"], "--out", joined)
    assert done.returncode == 0, done.stderr[-2000:]
    folds = json.loads((joined / "results.json.gz").read_text())["tasks"][TASK]["results"]
    assert (
        folds["fold_0"]["data"] == _fold(pair, 0)["data"] and folds["fold_1"]["data"] == _fold(runs["s0_f1"], 1)["data"]
    )
    assert folds["fold_0"]["parameters"]["seeds"] == [0, 1] and folds["fold_1"]["parameters"]["seeds"] == [0]
    name = f"{TASK}_fold_0.csv"
    assert (joined / "uncertainty" / name).read_bytes() == (pair / "uncertainty" / name).read_bytes()
    assert sorted(p.name for p in (joined / "uncertainty").iterdir()) == [name]  # fold 1 had none to carry
    meta = json.loads((joined / "results.json.gz").read_text())["user_metadata"]
    assert meta["configs"][TASK]["seed"] == [0, 1] and meta["summary"][TASK]["n_folds"] == 2

    done = _combine(pair, runs["s0_f0"], "--out", tmp_path / "again")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {pair}: ") and "already the mean of seeds [0, 1]" in done.stderr
    assert not (tmp_path / "again").exists()

    # a refusal at a later fold leaves nothing behind: fold 0's spread file is not written before fold 1's check
    twice = tmp_path / "twice"
    shutil.copytree(runs["s0_f1"], twice, ignore=shutil.ignore_patterns("work"))
    done = _combine(pair, runs["s0_f1"], twice, "--out", tmp_path / "partial")
    assert done.returncode == 2 and "fold 1" in done.stderr and "same --seed" in done.stderr, done.stderr
    assert not (tmp_path / "partial").exists()
