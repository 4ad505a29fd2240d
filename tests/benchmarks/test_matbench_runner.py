"""The matbench leaderboard runner (benchmarks/matbench_v0.1_sagnn/run.py) on real jdft2d folds.

A tiny model trained for one epoch per fold: two folds first (the partial file is resumable), then all
five (recorded folds are not retrained); matbench's own ``MatbenchBenchmark.from_file`` loads and
validates the submission, its scores equal an independent MAE against the data file's targets, the
prediction stored for a test id is what the fold's kept checkpoint predicts for that id's structure (read
from the data file and graphed by the user-facing predict pipeline), and ``info.json`` has the fields
matbench's submission check requires.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DATA = (REPO / "../shared/data/matbench").resolve()
RUNNER = REPO / "benchmarks" / "matbench_v0.1_sagnn" / "run.py"
TASK = "matbench_jdft2d"
TINY = {"atom_embedding_dim": 4, "num_gaussians": 10, "num_blocks": 1, "hidden_dim": 8, "dense_hidden": 8,
        "conv_hidden": [8], "heads": 2, "readout_hidden": [8], "set2set_steps": 1}

pytestmark = pytest.mark.skipif(not (DATA / f"{TASK}.json.gz").is_file(),
                                reason=f"shared matbench data not found at {DATA} (repo root/../shared/data)")


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("matbench_v01_sagnn_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

    from sagnn_lightning.lit.module import SAGNNModule
    from sagnn_lightning.lit.predict import predict_structures
    from sagnn_lightning.models.sagnn import SAGNN

    model = SAGNN(num_targets=1, **model_config)  # built in Python by the runner: the checkpoint holds weights
    module = SAGNNModule.load_from_checkpoint(checkpoint, model=model, map_location="cpu", weights_only=False)
    module.eval()
    result = predict_structures(module, ids, [Structure.from_dict(structures[i]) for i in ids],
                                cutoff=float(model_config["cutoff"]), batch_size=1)
    assert result.ids == ids and not result.errors
    return result.prediction.reshape(-1).double().numpy()


def _argv(out: Path, folds: list[int], epochs: int = 1) -> list[str]:
    return ["--tasks", TASK, "--folds", *map(str, folds), "--max-epochs", str(epochs), "--data-home", str(DATA),
            "--out", str(out), "--threads", "1", "--model-overrides", json.dumps(TINY),
            "--cache-dir", str(out.parent / "graph_cache"), "--checkpoint-dir", str(out.parent / "checkpoints")]


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

    # matbench itself refuses a file with unrecorded folds; the runner's loader reads it back
    with pytest.raises(ValueError, match="not recorded"):
        MatbenchBenchmark.from_file(str(results))
    partial = runner.load_results(results, [TASK])
    task = partial.tasks_map[TASK]
    assert task.is_recorded == {0: True, 1: True, 2: False, 3: False, 4: False}
    first = {k: dict(task.results[f"fold_{k}"]["data"]) for k in (0, 1)}

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


def test_fixed_config_reads_the_recipes(runner):
    cfg = runner.fixed_config(TASK, "no_mhsa", 7, runner.DEFAULT_CONFIG_DIR)
    assert cfg["model"]["attention"] == "none" and cfg["max_epochs"] == 7
    cfg = runner.fixed_config(TASK, "sagnn", 7, None)  # built-in fallback = the recipes' values
    assert cfg["model"]["attention"] == "last" and cfg["model"]["heads"] == 8


def test_classification_path_stores_true_rocauc(runner, one_thread, tmp_path):
    """The is_metal hook, on real jdft2d fold-0 rows with a 0/1 label (exfoliation energy above the training
    median): the classification branch predicts probabilities for exactly the test ids, and the stored
    ROC-AUC is sklearn's on the probabilities, while matbench's own ``rocauc`` is the balanced accuracy."""
    from matbench.data_ops import score_array
    from matbench.metadata import mbv01_validation
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    df = runner.local_task_frame(TASK, DATA)
    split = mbv01_validation.splits[TASK]["fold_0"]
    threshold = float(df.loc[list(split["train"]), "exfoliation_en"].median())
    labels = df["exfoliation_en"] > threshold
    train_df = df.loc[list(split["train"])].assign(exfoliation_en=labels.loc[list(split["train"])])
    test_df = df.loc[list(split["test"]), ["structure"]]
    graphs, built = runner.task_graphs(TASK, df, "structure", 5.0, tmp_path / "cache",
                                       source=DATA / f"{TASK}.json.gz")
    assert built and list(graphs.sample_ids) == list(df.index)
    assert all(math.isnan(float(graphs[k].y)) for k in range(3))  # the cache holds no targets
    config = runner.fixed_config(TASK, "sagnn", 1, None, TINY)
    torch.set_num_threads(one_thread)
    result = runner.train_and_predict(config, "classification", train_df, test_df, "exfoliation_en", graphs, 0,
                                      tmp_path)
    assert result["ids"] == list(split["test"])
    prob = result["predictions"]
    assert prob.shape == (len(split["test"]),) and np.all((prob >= 0) & (prob <= 1))
    truth = labels.loc[list(split["test"])].to_numpy()
    extras = runner.classification_extras(truth, prob)
    assert extras["rocauc_from_probabilities"] == pytest.approx(roc_auc_score(truth, prob))
    scores = score_array([bool(t) for t in truth], [float(p) for p in prob], "classification")
    assert scores["rocauc"] == pytest.approx(balanced_accuracy_score(truth, prob > 0.5))
