"""The matbench leaderboard runner (benchmarks/matbench_v0.1_sagnn/run.py) on real jdft2d folds.

The runner trains every fold through the recipes' CLI (MatbenchDataModule + SAGNNModule + Trainer). Checked here,
with a tiny model and 1-3 epochs per fold:

* a submission built in two runs (two folds, then all five; recorded folds are not retrained) is valid for
  matbench's own ``MatbenchBenchmark.from_file``; its scores equal an independent MAE against the data file's
  targets; the prediction stored for a test id is what the fold's kept checkpoint predicts for that id's structure
  (read from the data file and graphed by the user-facing predict pipeline); ``info.json`` has the fields
  matbench's submission check requires;
* a fold SIGKILLed mid-fold, its work dir then moved (another machine), resumes to the weights and predictions of
  an uninterrupted run; so does a fold cut mid-epoch by ``--max-time``; ``--jobs 2`` records what ``--jobs 1``
  records; progress lines carry an ETA.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sagnn_lightning.data.matbench import MatbenchDataModule, official_fold

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO / "../shared/data/matbench").resolve()
RUNNER = REPO / "benchmarks" / "matbench_v0.1_sagnn" / "run.py"
TASK = "matbench_jdft2d"
TINY = {
    "atom_embedding_dim": 4,
    "num_gaussians": 10,
    "num_blocks": 1,
    "hidden_dim": 8,
    "dense_hidden": 8,
    "conv_hidden": [8],
    "heads": 2,
    "readout_hidden": [8],
    "set2set_steps": 1,
    "gaussian_width": 0.5,
}
EPOCHS = 3  # of the resume / max-time / jobs tests
#: constant 1e-3 (the tiny model's validation MAE is then not monotone in 3 epochs: the resume tests need a
#: best epoch before the last)
TRAINING = ("--model.optimizer.init_args.lr=0.001", "--model.scheduler=null")

pytestmark = pytest.mark.skipif(
    not (DATA / f"{TASK}.json.gz").is_file(),
    reason=f"shared matbench data not found at {DATA} (repo root/../shared/data)",
)


def _load_runner():
    spec = importlib.util.spec_from_file_location("matbench_v01_sagnn_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner():
    return _load_runner()


def _sibling(runner, name: str):
    """A module beside run.py (``folds``, ``submission``, ...): run.py puts its folder on ``sys.path``."""
    assert Path(runner.__file__).parent == RUNNER.parent
    return importlib.import_module(name)


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


def _column_from_file(column: str) -> dict[str, object]:
    """One column by matbench id, read straight from the data file (independent of matminer/matbench and of
    the runner's id mapping)."""
    with gzip.open(DATA / f"{TASK}.json.gz", "rt") as fh:
        d = json.load(fh)
    n = len(d["index"])
    digits = math.floor(math.log10(n)) + 1
    col = d["columns"].index(column)
    return {f"mb-jdft2d-{int(i) + 1:0{digits}d}": row[col] for i, row in zip(d["index"], d["data"])}


def _targets_from_file() -> dict[str, float]:
    return {k: float(v) for k, v in _column_from_file("exfoliation_en").items()}


def _own_predictions(checkpoint: Path, model_config: dict, ids: list[str], structures: dict[str, dict]) -> np.ndarray:
    """What the checkpoint predicts for each id's structure: pymatgen ``Structure.from_dict`` of the data file's
    entry → ``structure_to_graph`` → ``collate_graphs`` → ``SAGNNModule.predict_step`` (the user-facing
    ``predict_structures``), one crystal per batch so no batching order can pair a value with another id."""
    from pymatgen.core import Structure

    from sagnn_lightning.lit.inference import predict_structures
    from sagnn_lightning.lit.module import SAGNNModule
    from sagnn_lightning.models.sagnn import SAGNN

    model = SAGNN(num_targets=1, **model_config)  # the recorded configuration rebuilds the network
    module = SAGNNModule.load_from_checkpoint(checkpoint, model=model, map_location="cpu", weights_only=False)
    module.eval()
    result = predict_structures(  # the graphs the run trained on: its cutoff and neighbour cap (the recipe's)
        module,
        ids,
        [Structure.from_dict(structures[i]) for i in ids],
        cutoff=float(model_config["cutoff"]),
        max_neighbors=module.graph_settings["max_neighbors"] if module.graph_settings else None,
        batch_size=1,
    )
    assert result.ids == ids and not result.errors
    return result.prediction.reshape(-1).double().numpy()


def _argv(out: Path, folds: list[int], epochs: int = 1, cache: Path | None = None, *extra: str) -> list[str]:
    return [
        "--tasks",
        TASK,
        "--folds",
        *map(str, folds),
        "--max-epochs",
        str(epochs),
        "--data-home",
        str(DATA),
        "--out",
        str(out),
        "--threads",
        "1",
        "--model-overrides",
        json.dumps(TINY),
        "--cache-dir",
        str(cache or out.parent / "graph_cache"),
        "--checkpoint-dir",
        str(out.parent / "checkpoints"),
        *extra,
        "--",  # recipe CLI options follow (callers may append more)
        *TRAINING,
    ]


def test_two_folds_then_resume_to_a_valid_submission(runner, one_thread, tmp_path, capsys):
    from matbench.bench import MatbenchBenchmark
    from matbench.metadata import mbv01_validation

    out = tmp_path / "submission"
    assert runner.main(_argv(out, [0, 1])) == 0
    results = out / "results.json.gz"
    assert results.is_file() and not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    cache_files = list((tmp_path / "graph_cache").glob("*.graphs"))
    assert len(cache_files) == 1  # one graph cache file for the task, in --cache-dir
    cache_stat = cache_files[0].stat()
    assert "graphs built into the graph cache" in capsys.readouterr().out
    for k in (0, 1):  # each fold trained in its own run dir, as a recipe run
        run_dir = out / "work" / TASK / f"fold_{k}"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
        assert (run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,global_step,val_mae")

    # matbench itself refuses a file with unrecorded folds; the runner's loader reads it back
    with pytest.raises(ValueError, match="not recorded"):
        MatbenchBenchmark.from_file(str(results))
    partial = runner.load_results(results, [TASK])
    task = partial.tasks_map[TASK]
    assert task.is_recorded == {0: True, 1: True, 2: False, 3: False, 4: False}
    first = {k: dict(task.results[f"fold_{k}"]["data"]) for k in (0, 1)}
    # a partial file changed after matbench wrote it is refused (matbench's own hash check, before the folds)
    stored = json.loads(results.read_text())
    some_id = next(iter(stored["tasks"][TASK]["results"]["fold_0"]["data"]))
    stored["tasks"][TASK]["results"]["fold_0"]["data"][some_id] += 1.0
    (tmp_path / "changed.json.gz").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="Hash of dictionary does not match"):
        runner.load_results(tmp_path / "changed.json.gz", [TASK])

    # resume: folds 0 and 1 are skipped (not retrained), 2-4 are added
    capsys.readouterr()
    assert runner.main(_argv(out, [0, 1, 2, 3, 4])) == 0
    printed = capsys.readouterr().out
    assert "fold 0: already recorded" in printed and "fold 1: already recorded" in printed
    assert "fold 2: MAE" in printed
    # the second run reads the graphs back from the cache: structures not graphed again, file untouched
    assert "graphs read from the graph cache" in printed and "graphs built" not in printed
    after = cache_files[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (cache_stat.st_ino, cache_stat.st_mtime_ns)

    mb = MatbenchBenchmark.from_file(str(results))  # validates every task on load
    assert mb.is_recorded and mb.is_valid and mb.validate() == {}
    task = mb.tasks_map[TASK]
    truth = _targets_from_file()
    structures = _column_from_file("structure")
    model_config = mb.user_metadata["configs"][TASK]["model"]
    for k in range(5):
        fold = task.results[f"fold_{k}"]
        test_ids = list(mbv01_validation.splits[TASK][f"fold_{k}"]["test"])
        assert list(fold["data"]) == test_ids  # predictions keyed by exactly matbench's test ids
        pred = np.array([fold["data"][i] for i in test_ids])
        mae = float(np.mean(np.abs(pred - np.array([truth[i] for i in test_ids]))))
        assert fold["scores"]["mae"] == pytest.approx(mae, rel=1e-9)
        params = fold["parameters"]
        assert params["n_train"] + params["n_val"] == len(mbv01_validation.splits[TASK][f"fold_{k}"]["train"])
        assert params["n_test"] == len(test_ids) and params["epochs_run"] == 1 and params["train_seconds"] > 0
        if k in first:
            assert dict(fold["data"]) == first[k]
        # each stored prediction belongs to its id: the fold's checkpoint, run on that id's own structure, gives it
        # (the MAE above is recomputed from the same dict and cannot see predictions paired with the wrong ids)
        picked = [test_ids[j] for j in (0, 1, len(test_ids) // 3, len(test_ids) - 2, len(test_ids) - 1)]
        own = _own_predictions(tmp_path / "checkpoints" / TASK / f"fold_{k}.ckpt", model_config, picked, structures)
        stored = np.array([fold["data"][i] for i in picked])
        scale = float(np.std(list(truth.values())))
        tol = 1e-4 * scale
        assert np.ptp(own) > 20 * tol, f"fold {k}: the model predicts ~one value for all ids; the check would be blind"
        np.testing.assert_allclose(stored, own, rtol=0, atol=tol, err_msg=f"fold {k}: stored prediction != model(id)")
    meta = mb.user_metadata
    assert meta["configs"][TASK]["model"]["hidden_dim"] == TINY["hidden_dim"]
    assert meta["summary"][TASK]["n_folds"] == 5

    info = json.loads((out / "info.json").read_text())
    assert "notes" in info  # matbench's scripts/test_submission.py: these must be present and non-empty
    for field in ("authors", "algorithm", "algorithm_long", "bibtex_refs", "requirements"):
        assert info[field], field
    assert 5 <= len(info["algorithm"]) <= 15
    reqs = info["requirements"]["python"]
    for name in ("python", "torch", "pytorch-lightning", "torch_geometric", "pymatgen", "matbench", "sagnn-lightning"):
        assert any(r.startswith(f"{name}==") for r in reqs), name
    for key in ("Cui", "Chen", "Dunn"):
        assert key in info["bibtex_refs"]


def test_resume_with_another_config_is_refused(runner, one_thread, tmp_path):
    out = tmp_path / "submission"
    assert runner.main(_argv(out, [0])) == 0
    with pytest.raises(ValueError, match="another configuration"):
        runner.main(_argv(out, [1], epochs=2))
    # the same for a fold dir started with other settings (an unrecorded fold continues only with its own)
    (out / "results.json.gz").unlink()
    with pytest.raises(ValueError, match="holds a fold started with another configuration"):
        runner.main(_argv(out, [0], epochs=2))


def test_fold_configuration_is_the_recipes_cli(runner, tmp_path):
    """The model, optimizer and data settings come from the recipes' YAML through the CLI (no copy of them in the
    runner); ``--variant`` and CLI options after ``--`` change them; the runner's own flags win."""
    spec = runner.fold_spec(
        TASK,
        2,
        variant="no_mhsa",
        max_epochs=7,
        seed=3,
        work_dir=tmp_path,
        config_dir=runner.DEFAULT_CONFIG_DIR,
        data_home=DATA,
        cache_dir=tmp_path / "cache",
        graph_workers=0,
        model_overrides=None,
        threads=None,
        deadline=None,
        checkpoint_dir=None,
        cli_args=["--model.optimizer.lr=5e-4", "--trainer.max_epochs=99"],
    )
    cli = runner.build_cli(spec)
    config = runner.config_summary(cli, spec)
    import yaml

    recipe = yaml.safe_load((runner.DEFAULT_CONFIG_DIR / "sagnn.yaml").read_text())["model"]
    assert config["model"]["attention"] == "none" and config["max_epochs"] == 7 and config["seed"] == 3
    assert config["model"]["hidden_dim"] == recipe["model"]["init_args"]["hidden_dim"]
    assert config["training"]["optimizer"]["init_args"]["lr"] == 5e-4
    assert config["training"]["scheduler"]["class_path"].endswith(recipe["scheduler"]["class_path"].rsplit(".")[-1])
    assert config["training"]["batch_size"] == 32 and config["config_files"] == ["sagnn.yaml", f"{TASK}.yaml"]
    assert cli.datamodule.fold == 2 and cli.trainer.max_epochs == 7
    assert Path(cli.trainer.default_root_dir) == tmp_path.resolve() / TASK / "fold_2"
    with pytest.raises(FileNotFoundError, match="recipe config files not found"):
        _sibling(runner, "folds").recipe_configs(TASK, tmp_path)


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory):
    """Folds 0 and 1, uninterrupted, ``EPOCHS`` epochs, one thread, in this process (``--jobs 1``)."""
    root = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = runner.main(_argv(root / "out", [0, 1], EPOCHS, root.parent / "shared_graph_cache"))
    torch.set_num_threads(before)
    assert status == 0, printed.getvalue()[-3000:]
    results = json.loads((root / "out" / "results.json.gz").read_text())["tasks"][TASK]["results"]
    return {
        "out": root / "out",
        "results": results,
        "printed": printed.getvalue(),
        "steps_per_epoch": math.ceil(results["fold_0"]["parameters"]["n_train"] / 32),
        "cache": root.parent / "shared_graph_cache",
    }


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {"global_step": state["global_step"], **state["state_dict"]}


def _same_fold(run_dir: Path, results: dict, reference: dict, fold: int) -> None:
    """The fold's final weights and recorded predictions equal the uninterrupted run's (rel 1e-6)."""
    ours, theirs = _weights(run_dir), _weights(reference["out"] / "work" / TASK / f"fold_{fold}")
    assert ours.pop("global_step") == theirs.pop("global_step") == EPOCHS * reference["steps_per_epoch"]
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-6, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")
    a, b = results[f"fold_{fold}"], reference["results"][f"fold_{fold}"]
    assert list(a["data"]) == list(b["data"])
    np.testing.assert_allclose(list(a["data"].values()), list(b["data"].values()), rtol=1e-6)
    assert a["parameters"]["best_epoch"] == b["parameters"]["best_epoch"]


def test_report_reads_the_submission_and_the_fold_histories(reference, tmp_path, capsys):
    """``report.py``: test MAE as matbench scored it, best epoch/validation as recorded, one history row per
    epoch equal to the fold's ``history.csv``, and the first epoch at a reference level (1 at a level above every
    MAE, never at 0)."""
    spec = importlib.util.spec_from_file_location("mb_report", RUNNER.parent / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    prefix = tmp_path / "five_fold"
    report.main(["--variant", f"sagnn={reference['out']}", "--reference", f"{TASK}=1000", "--out", str(prefix)])
    with open(f"{prefix}_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    with open(f"{prefix}_history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    assert [row["fold"] for row in summary] == ["0", "1"]
    for row in summary:
        record = reference["results"][f"fold_{row['fold']}"]
        assert float(row["test_mae"]) == pytest.approx(record["scores"]["mae"], abs=1e-3)
        assert int(row["best_epoch"]) == record["parameters"]["best_epoch"]
        assert row["first_epoch_at_reference"] == "1"
    fold0 = [row for row in history if row["fold"] == "0"]
    with open(reference["out"] / "work" / TASK / "fold_0" / "history.csv", newline="") as fh:
        own = list(csv.DictReader(fh))
    assert [float(r["val_mae"]) for r in fold0] == [float(r["val_mae"]) for r in own] and len(own) == EPOCHS
    assert Path(f"{prefix}.png").stat().st_size > 0 and "| sagnn | matbench_jdft2d | 0 |" in capsys.readouterr().out
    assert report.first_reaching([{"val_mae": 5.0, "train_seconds": 1.0, "epoch": 1.0}], 0.0) == (None, None)


def test_progress_lines_have_an_eta(reference):
    lines = [line for line in reference["printed"].splitlines() if f"{TASK} fold 0: epoch " in line]
    assert [line.split(": ")[1] for line in lines] == [f"epoch {e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    assert all("val/mae=" in line for line in lines)
    assert all(", ETA " in line for line in lines[:-1]) and "ETA" not in lines[-1]  # none after the last epoch
    from sagnn_lightning.lit.progress import format_duration

    assert [format_duration(s) for s in (7.9, 200, 7500, 200_000)] == ["7 s", "3 min 20 s", "2 h 05 min", "2 d 07 h"]


def test_killed_fold_resumes_mid_fold_to_the_weights_of_an_uninterrupted_run(runner, reference, tmp_path, capsys):
    """SIGKILL in the last epoch (a crash: the runner process dies), the work dir is then moved (another machine),
    and the same command with the new --work-dir continues the fold from the end of epoch 2. The best validation
    epoch comes before the kill, so the resumed fold must also carry over which checkpoint is the best."""
    steps = reference["steps_per_epoch"]
    assert reference["results"]["fold_0"]["parameters"]["best_epoch"] < EPOCHS, "the check needs an earlier best"
    kill = tmp_path / "kill.yaml"
    kill.write_text(
        "trainer:\n  callbacks:\n    - class_path: tests.lit.helpers.KillAtStep\n"
        f"      init_args:\n        step: {2 * steps + 4}\n"
    )
    out, work = tmp_path / "out", tmp_path / "machine_a"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            *_argv(out, [0], EPOCHS, reference["cache"], "--work-dir", str(work)),
            "--config",
            str(kill),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-3000:]
    assert f"{TASK} fold 0: epoch 1/{EPOCHS}" in killed.stdout and not (out / "results.json.gz").exists()
    assert _weights(work / TASK / "fold_0")["global_step"] == 2 * steps  # last.ckpt: the end of epoch 2

    moved = tmp_path / "machine_b"
    shutil.move(work, moved)
    assert runner.main(_argv(out, [0], EPOCHS, reference["cache"], "--work-dir", str(moved))) == 0
    printed = capsys.readouterr().out
    last = moved / TASK / "fold_0" / "checkpoints" / "last.ckpt"
    assert f"fold 0: resuming from {last} (saved at step {2 * steps}, epoch 2 of {EPOCHS})" in printed
    assert f"fold 0: epoch 2/{EPOCHS}" not in printed  # epochs 1-2 were not trained again
    results = json.loads((out / "results.json.gz").read_text())["tasks"][TASK]["results"]
    _same_fold(moved / TASK / "fold_0", results, reference, 0)
    assert results["fold_0"]["parameters"]["sittings"] == 2
    assert len(list((moved / TASK / "fold_0" / "checkpoints").glob("best-*.ckpt"))) == 1
    history = (moved / TASK / "fold_0" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == [str(e) for e in range(1, EPOCHS + 1)]


def test_max_time_cuts_a_fold_mid_epoch_and_a_rerun_continues_it(
    runner, reference, one_thread, tmp_path, capsys, monkeypatch
):
    """``--max-time`` spent 5 batches into epoch 2 (a fake clock makes the cut exact): the fold is not recorded,
    exit status 3; the same command without the budget continues at the next batch, to the reference weights."""
    steps = reference["steps_per_epoch"]
    cut_step = steps + 5
    # clock reads: run start, fold start, train start (#0-#2), then one after each training step (#g+2 after step g)
    # (the runner's clock and the one of its sagnn_lightning.lit.Deadline callback)
    import sagnn_lightning.lit.deadline as deadline

    calls, start = itertools.count(), time.time()
    fake_clock = lambda: start + (0 if next(calls) < cut_step + 2 else 10**6)  # noqa: E731
    monkeypatch.setattr(runner, "_clock", fake_clock)
    monkeypatch.setattr(deadline, "_clock", fake_clock)
    out = tmp_path / "out"
    assert runner.main(_argv(out, [1], EPOCHS, reference["cache"], "--max-time", "00:01:00:00")) == 3
    printed = capsys.readouterr().out
    assert f"fold 1: stopped in epoch 2 of {EPOCHS} (step {cut_step}): --max-time reached" in printed
    assert not (out / "results.json.gz").exists()
    assert _weights(out / "work" / TASK / "fold_1")["global_step"] == cut_step  # mid-epoch

    monkeypatch.setattr(runner, "_clock", time.time)
    monkeypatch.setattr(deadline, "_clock", time.time)
    assert runner.main(_argv(out, [1], EPOCHS, reference["cache"], "--max-time", "00:01:00:00")) == 0
    printed = capsys.readouterr().out
    assert (
        f"fold 1: resuming from {out / 'work' / TASK / 'fold_1' / 'checkpoints' / 'last.ckpt'} (saved at step "
        f"{cut_step}, epoch 2 of {EPOCHS})" in printed
    )
    results = json.loads((out / "results.json.gz").read_text())["tasks"][TASK]["results"]
    _same_fold(out / "work" / TASK / "fold_1", results, reference, 1)


def test_parallel_jobs_record_what_one_job_records(runner, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert runner.main(_argv(out, [0, 1], EPOCHS, reference["cache"], "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    for k in (0, 1):  # each worker's lines reach this process's output, tagged with the fold
        assert f"[sagnn] {TASK} fold {k}: epoch {EPOCHS}/{EPOCHS}: " in printed
    results = json.loads((out / "results.json.gz").read_text())["tasks"][TASK]["results"]
    for k in (0, 1):
        _same_fold(out / "work" / TASK / f"fold_{k}", results, reference, k)
        assert results[f"fold_{k}"]["parameters"]["torch_threads"] == 1


class JdftAboveMedian(MatbenchDataModule):
    """matbench_jdft2d as a binary task: exfoliation energy above the median of fold 0's training rows (the real
    crystals, with a 0/1 label), for the runner's classification path."""

    @property
    def task_type(self) -> str:
        return "classification"

    def _read_table(self):
        table = super()._read_table()
        row = {sid: k for k, sid in enumerate(table.ids)}
        threshold = np.median(table.targets[[row[i] for i in official_fold(self.task.name, 0)[0]], 0])
        table.targets = (table.targets > threshold).astype(np.float64)
        return table

    def _fingerprint(self) -> str:
        return "above-median-" + super()._fingerprint()


def test_classification_path_stores_true_rocauc(runner, one_thread, tmp_path):
    """The is_metal hook, on real jdft2d fold-0 rows with a 0/1 label: a fold trained through the CLI with a
    classification DataModule predicts probabilities for exactly the test ids; the stored ROC-AUC is sklearn's on
    the probabilities, while matbench's own ``rocauc`` is the balanced accuracy."""
    from matbench.data_ops import score_array
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    spec = runner.fold_spec(
        TASK,
        0,
        variant="sagnn",
        max_epochs=1,
        seed=0,
        work_dir=tmp_path,
        config_dir=runner.DEFAULT_CONFIG_DIR,
        data_home=DATA,
        cache_dir=tmp_path / "cache",
        graph_workers=0,
        model_overrides=TINY,
        threads=1,
        deadline=None,
        checkpoint_dir=None,
        cli_args=[f"--data={__name__}.JdftAboveMedian"],
    )
    spec["config"] = runner.config_summary(runner.build_cli(spec), spec)
    assert spec["config"]["training"]["data_class"].endswith("JdftAboveMedian")
    result = runner.train_fold(spec)
    train_ids, test_ids = official_fold(TASK, 0)
    assert result["status"] == "done" and result["ids"] == test_ids
    assert "best_val_auroc" in result["params"]
    prob = np.asarray(result["predictions"])
    assert prob.shape == (len(test_ids),) and np.all((prob >= 0) & (prob <= 1))
    targets = _targets_from_file()
    threshold = float(np.median([targets[i] for i in train_ids]))
    truth = np.array([targets[i] > threshold for i in test_ids])
    extras = _sibling(runner, "submission").classification_extras(truth, prob)
    assert extras["rocauc_from_probabilities"] == pytest.approx(roc_auc_score(truth, prob))
    scores = score_array([bool(t) for t in truth], [float(p) for p in prob], "classification")
    assert scores["rocauc"] == pytest.approx(balanced_accuracy_score(truth, prob > 0.5))


def test_inner_fold_members_are_averaged_into_the_fold_record(runner, one_thread, tmp_path, capsys):
    from matbench.metadata import mbv01_validation

    out = tmp_path / "study" / "runner"
    assert runner.main(_argv(out, [0], 1, None, "--val-folds", "2")) == 0
    printed = capsys.readouterr().out
    assert "fold 0 (inner 1/2): member test MAE" in printed and "fold 0 (inner 2/2): member test MAE" in printed
    task = runner.load_results(out / "results.json.gz", [TASK]).tasks_map[TASK]
    fold = task.results["fold_0"]
    params = fold["parameters"]
    official_train = mbv01_validation.splits[TASK]["fold_0"]["train"]
    test_ids = list(mbv01_validation.splits[TASK]["fold_0"]["test"])
    assert params["val_folds"] == 2 and len(params["members"]) == 2 and params["epochs_run"] == [1, 1]
    # the two members validated on the two halves of the fold's training rows
    assert [m["n_val"] for m in params["members"]] == [
        len(official_train) // 2,
        len(official_train) - len(official_train) // 2,
    ]
    assert all(m["n_train"] + m["n_val"] == len(official_train) for m in params["members"])
    for j in range(2):
        run_dir = out / "work" / TASK / "fold_0" / f"inner_{j}"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "history.csv").is_file()
    # the record is the mean of what each member's own checkpoint predicts for each id's structure
    truth = _targets_from_file()
    structures = _column_from_file("structure")
    model_config = json.loads((out / "work" / TASK / "fold_0" / "inner_0" / "runner_config.json").read_text())["model"]
    own = np.stack(
        [
            _own_predictions(
                tmp_path / "study" / "checkpoints" / TASK / f"fold_0_inner_{j}.ckpt", model_config, test_ids, structures
            )
            for j in range(2)
        ]
    )
    scale = float(np.std(list(truth.values())))
    assert np.abs(own[0] - own[1]).max() > 1e-2 * scale  # two different models: an average is not a copy
    stored = np.array([fold["data"][i] for i in test_ids])
    np.testing.assert_allclose(stored, own.mean(axis=0), rtol=0, atol=1e-4 * scale)
    target = np.array([truth[i] for i in test_ids])
    np.testing.assert_allclose(params["member_test_mae"], np.abs(own - target).mean(axis=1), rtol=1e-4)
    assert fold["scores"]["mae"] == pytest.approx(float(np.mean(np.abs(stored - target))), rel=1e-9)

    # benchmarks/inner_cv_study.py reads this submission, and K separate ones (`-- --data.val_folds=2
    # --data.val_fold=k`, same seeds) give the same members, hence the same ensemble scored by the script itself
    for k in range(2):
        separate = tmp_path / "study" / "separate" / f"inner_{k}"
        assert (
            runner.main(
                [
                    *_argv(separate, [0], 1, tmp_path / "study" / "graph_cache"),
                    "--data.val_folds=2",
                    f"--data.val_fold={k}",
                ]
            )
            == 0
        )
    spec = importlib.util.spec_from_file_location("inner_cv_study", REPO / "benchmarks" / "inner_cv_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    prefix = tmp_path / "results" / "jdft2d"
    assert (
        study.main(
            [
                "--study",
                str(tmp_path / "study"),
                "--configs",
                "runner",
                "separate",
                "--task",
                TASK,
                "--data-home",
                str(DATA),
                "--out",
                str(prefix),
            ]
        )
        == 0
    )
    with open(prefix.with_name("jdft2d_summary.csv"), newline="") as fh:
        rows = {(r["config"], r["inner_fold"]): r for r in csv.DictReader(fh)}
    for config in ("runner", "separate"):
        for j in range(2):
            assert float(rows[(config, str(j))]["test_mae"]) == pytest.approx(params["member_test_mae"][j], rel=1e-5)
            assert float(rows[(config, str(j))]["best_val_mae"]) == pytest.approx(
                params["members"][j]["best_val_mae"], rel=1e-5
            )
        ensemble = float(rows[(config, "ensemble of 2")]["test_mae"])
        assert ensemble == pytest.approx(fold["scores"]["mae"], rel=1e-5)
    with open(prefix.with_name("jdft2d_curves.csv"), newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 2  # two configs x two members x one epoch
    assert prefix.with_name("jdft2d.png").stat().st_size > 10_000


TINY_COMPOSITION = {
    "element_features": "megnet",
    "hidden_dim": 8,
    "num_blocks": 1,
    "message_hidden": [8],
    "heads": 2,
    "pool_hidden": [8],
    "readout_hidden": [8],
}


def test_a_composition_task_fold_runs_on_the_composition_recipe(runner, one_thread, tmp_path):
    """matbench_steels (formulas only): the runner takes the composition recipe (composition.yaml + the task's
    YAML), trains the official fold through the CLI and predicts exactly its test ids; info.json describes the
    composition model."""
    if not (DATA / "matbench_steels.json.gz").is_file():
        pytest.skip("needs the shared matbench_steels data")
    spec = runner.fold_spec(
        "matbench_steels",
        1,
        variant="sagnn",
        max_epochs=1,
        seed=0,
        work_dir=tmp_path,
        config_dir=runner.DEFAULT_CONFIG_DIR,
        data_home=DATA,
        cache_dir=tmp_path / "cache",
        graph_workers=0,
        model_overrides=TINY_COMPOSITION,
        threads=1,
        deadline=None,
        checkpoint_dir=None,
        cli_args=[],
    )
    assert [Path(c).name for c in spec["configs"]] == ["composition.yaml", "matbench_steels.yaml"]
    spec["config"] = config = runner.config_summary(runner.build_cli(spec), spec)
    assert config["training"]["model_class"] == "sagnn_lightning.models.CompositionSAGNN"
    assert config["model"]["attention"] == "last" and config["model"]["heads"] == 8 - 6  # variant, then overrides
    result = runner.train_fold(spec)
    _, test_ids = official_fold("matbench_steels", 1)
    assert result["status"] == "done" and result["ids"] == test_ids
    assert np.all(np.isfinite(result["predictions"]))
    info = _sibling(runner, "submission").info_json("sagnn", {"matbench_steels": config}, {})
    assert "Composition SA-GNN" in info["algorithm_long"] and "MEGNet graph network" not in info["algorithm_long"]


def test_report_handles_classification_histories(tmp_path):
    """A classification fold's history has no validation MAE (empty cells) but a validation ROC-AUC: ``report.py``
    reads it, never counts it as reaching an MAE level, and prints matbench's score beside the probabilities'."""
    spec = importlib.util.spec_from_file_location("mb_report", RUNNER.parent / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    path = tmp_path / "history.csv"
    path.write_text(
        "epoch,global_step,val_mae,val_auroc,val_loss,lr,train_seconds,sitting,finished_utc\n1,10,,0.91,0.3,0.001,2.0,1,x\n"
    )
    rows = report.read_history(path)
    assert rows == [
        {"epoch": 1.0, "val_mae": None, "val_auroc": 0.91, "lr": 0.001, "train_seconds": 2.0, "sitting": 1.0}
    ]
    assert report.first_reaching(rows, 1e9) == (None, None)
    summary = [
        {
            "variant": "sagnn",
            "task": "matbench_glass",
            "fold": 0,
            "metric": "rocauc",
            "test_score": 0.8612,
            "rocauc_from_probabilities": 0.93456,
            "best_epoch": 40,
            "best_val": 0.94,
            "seconds_per_epoch": 2.5,
            "train_seconds": 250.0,
            "reference_mae": None,
            "first_epoch_at_reference": None,
        }
    ]
    assert "| sagnn | matbench_glass | 0 | rocauc 0.8612 | 0.9346 | 40 | 0.94 | 2.5 | 250 |  |" in report.markdown(
        summary
    )


def test_inner_fold_ensemble_with_calibration_rows_writes_error_bars(runner, one_thread, tmp_path, capsys):
    """``--val-folds 2 -- --data.init_args.calibration_fraction=0.2``: both members leave the same calibration rows
    out; the fold writes the test set and the calibration rows with the ensemble mean, the members' spread and the
    recalibrated σ fit on the calibration rows (recomputed here from the CSV)."""
    import pandas as pd
    from matbench.metadata import mbv01_validation

    out = tmp_path / "cal" / "runner"
    argv = _argv(out, [0], 1, None, "--val-folds", "2") + ["--data.init_args.calibration_fraction=0.2"]
    assert runner.main(argv) == 0
    assert "test calibration (raw -> recalibrated on" in capsys.readouterr().out
    official_train = mbv01_validation.splits[TASK]["fold_0"]["train"]
    test_ids = list(mbv01_validation.splits[TASK]["fold_0"]["test"])
    params = runner.load_results(out / "results.json.gz", [TASK]).tasks_map[TASK].results["fold_0"]["parameters"]
    n_cal = round(0.2 * len(official_train))
    assert all(m["n_train"] + m["n_val"] == len(official_train) - n_cal for m in params["members"])
    test = pd.read_csv(out / "uncertainty" / f"{TASK}_fold_0.csv")
    cal = pd.read_csv(out / "uncertainty" / f"{TASK}_fold_0_calibration.csv")
    assert test["id"].tolist() == test_ids and len(cal) == n_cal and not set(cal["id"]) & set(test_ids)
    for frame in (test, cal):
        members = frame[["member_0", "member_1"]].to_numpy()
        np.testing.assert_allclose(frame["prediction"], members.mean(axis=1))
        np.testing.assert_allclose(frame["std_raw"], np.abs(members[:, 0] - members[:, 1]) / np.sqrt(2))
    truth = _targets_from_file()
    np.testing.assert_allclose(cal["target"], [truth[i] for i in cal["id"]])
    scale = np.sqrt(np.mean(((cal["target"] - cal["prediction"]) / cal["std_raw"]) ** 2))
    stored = params["uncertainty"]
    assert stored["calibration"]["scale"] == pytest.approx(scale)
    np.testing.assert_allclose(test["std"], scale * test["std_raw"])
    assert stored["test_after"]["mae"] == pytest.approx(np.mean(np.abs(test["target"] - test["prediction"])))


def test_info_json_names_the_graph_and_the_ensemble_that_made_the_predictions(runner):
    """A knn-graph, inner-fold-ensemble submission says so in ``algorithm_long`` (it said "5.0 A cutoff" and "the
    checkpoint ... predicts the test fold" for the 24-neighbour ensembles); a plain run keeps the single-model text."""
    submission = _sibling(runner, "submission")
    model = {
        "attention": "last",
        "heads": 8,
        "atom_embedding_dim": 64,
        "num_gaussians": 25,
        "cutoff": 5.0,
        "gaussian_width": 0.4,
        "num_blocks": 3,
        "hidden_dim": 32,
    }
    training = {"val_fraction": 0.1, "checkpoint": {"monitor": "auto"}, "max_epochs": 300}
    ensemble = training | {"cutoff": 8.0, "max_neighbors": 24, "val_folds": 5, "calibration_fraction": 0.1}
    texts = {
        name: submission.info_json(
            "sagnn", {"matbench_jdft2d": {"model": model, "training": t, "max_epochs": 300}}, {}
        )["algorithm_long"]
        for name, t in (("single", training), ("ensemble", ensemble))
    }
    assert "every neighbour within 5.0 A" in texts["single"] and "the checkpoint with the best" in texts["single"]
    assert "the 24 nearest neighbours of each atom within 8.0 A" in texts["ensemble"]
    assert "Gaussians on 0-8.0 A" in texts["ensemble"] and "5.0" not in texts["ensemble"]
    assert (
        "an ensemble of 5 members" in texts["ensemble"]
        and "10% of each fold's training rows are held out" in texts["ensemble"]
    )
    assert "auto" not in texts["single"] and "best validation MAE (ROC-AUC for classification)" in texts["single"]

    # tasks that chose their models differently (calibration rows held out or not) each get their own text
    both = submission.info_json(
        "sagnn",
        {
            "matbench_jdft2d": {"model": model, "training": ensemble, "max_epochs": 300},
            "matbench_phonons": {
                "model": model,
                "training": ensemble | {"calibration_fraction": 0.0},
                "max_epochs": 300,
            },
        },
        {},
    )["algorithm_long"]
    held = both.index("matbench_jdft2d: an ensemble of 5 members predicts each test fold: 10% of each fold's")
    plain = both.index("matbench_phonons: an ensemble of 5 members predicts each test fold: member j trains")
    assert held < plain and both.count("an ensemble of 5 members") == 2


def test_uncertainty_rows_calibrate_with_a_floor_on_request(runner):
    """``--calibration-floor``: members that agree on half the rows but err there get a floor; without the flag
    one factor is fit (the summary says which, and the rows' std follows it)."""
    ensemble = _sibling(runner, "ensemble")
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.normal(0.0, 1.0, n)
    agree = np.arange(n) < n // 2
    spread = np.where(agree, 1e-4, 0.5)
    errors = rng.normal(0.0, np.hypot(spread, 0.3))

    def members(ids):
        centre = truth[: len(ids)] - errors[: len(ids)]
        offsets = np.outer([-1.5, -0.5, 0.5, 1.5], spread[: len(ids)] / np.std([-1.5, -0.5, 0.5, 1.5], ddof=1))
        return [centre + o for o in offsets]

    ids = [f"id-{k}" for k in range(n)]
    results = [
        {"predictions": p.tolist(), "calibration": {"ids": ids, "targets": truth.tolist(), "predictions": p.tolist()}}
        for p in members(ids)
    ]
    for floor in (False, True):
        rows, held, summary = ensemble.uncertainty_rows(results, ids, truth, floor)
        fitted = summary["calibration"]
        assert (fitted["floor"] > 0.2) if floor else (fitted["floor"] == 0.0 and fitted["scale"] > 100)
        std = np.array([r["std"] for r in rows])
        raw = np.array([r["std_raw"] for r in rows])
        np.testing.assert_allclose(std, np.hypot(fitted["scale"] * raw, fitted["floor"]), rtol=1e-9)


def test_recipe_options_the_runner_would_override_are_refused_with_the_flag_to_use(runner, tmp_path, capsys):
    """An option after ``--`` that the runner's own flags would override (the variant's attention, the fold, the
    seed, ...) is refused in one line naming it and the runner flag to use: never dropped silently."""
    out = tmp_path / "never_written"
    argv = ["--tasks", TASK, "--folds", "0", "--out", str(out), "--"]
    for passthrough, expected in [
        (["--model.model.init_args.attention=each"], "--model-overrides '{\"attention\": ...}'"),
        (["--model.model.heads", "4"], "heads=8"),
        (["--data.init_args.fold=3"], "(--folds)"),
        (["--seed_everything=7"], "(--seed + fold)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            runner.main([*argv, *passthrough])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert passthrough[0] in err and expected in err, err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:  # a bad budget is one line too, not fold_cli_args' traceback
        runner.main(["--tasks", TASK, "--folds", "0", "--out", str(out), "--max-epochs", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--max-epochs must be >= 1, got 0")
    assert not out.exists()
    folds = _sibling(runner, "folds")
    kwargs = {"max_epochs": None, "val_folds": None, "data_home": None, "cache_dir": None}
    # what the runner does not fix passes, and so does a variant's key set through --model-overrides
    assert not folds.fixed_option_conflicts(
        ["--data.cutoff=8.0", "--model.model.init_args.attention_dropout=0.1", "--config", "my.yaml"],
        variant="sagnn",
        model_overrides={"attention": "each"},
        **kwargs,
    )
    assert folds.fixed_option_conflicts(
        ["--trainer.max_epochs=5"], variant="no_mhsa", model_overrides=None, **{**kwargs, "max_epochs": 10}
    ) == ["--trainer.max_epochs=5: --max-epochs sets it"]


def test_report_plots_a_study_of_many_variants(tmp_path):
    """A configuration study compares more variants than a submission has (8 here): each gets its own colour."""
    spec = importlib.util.spec_from_file_location("mb_report", RUNNER.parent / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    variants = [f"config_{i}" for i in range(8)]
    summary = [{"variant": v, "task": TASK, "fold": 0, "metric": "mae", "reference_mae": None} for v in variants]
    history = [
        {"variant": v, "task": TASK, "fold": 0, "epoch": e, "val_mae": 50.0 - e + i}
        for i, v in enumerate(variants)
        for e in range(1, 4)
    ]
    path = tmp_path / "study.png"
    report.plot(history, summary, path)
    assert path.stat().st_size > 0
