"""MatbenchDataModule: official folds id for id (matbench's validation file), sizes, statistics, graphs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sagnn_lightning.data.matbench import (
    MATBENCH_COMPOSITION_TASKS,
    MATBENCH_TASKS,
    MatbenchDataModule,
    carve_validation,
    get_task,
    inner_fold_validation,
)
from sagnn_lightning.data.table import DataFormatError
from sagnn_lightning.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
MATBENCH_DIR = ROOT / "../shared/data/matbench"


@pytest.fixture(scope="module")
def validation() -> dict:
    from matbench.constants import MBV01_VALIDATION_DATA_PATH

    with open(MBV01_VALIDATION_DATA_PATH) as fh:
        return json.load(fh)["splits"]


def data_home() -> Path:
    if not (MATBENCH_DIR / "matbench_jdft2d.json.gz").exists():
        pytest.skip(f"shared matbench data not available at {MATBENCH_DIR}")
    return MATBENCH_DIR


def test_task_table_matches_matbench_metadata():
    from matbench.constants import MBV01_DATASET_METADATA_PATH

    with open(MBV01_DATASET_METADATA_PATH) as fh:
        meta = json.load(fh)
    structure = {k for k, v in meta.items() if v["input_type"] == "structure"}
    assert set(MATBENCH_TASKS) == structure and len(structure) == 9
    assert set(MATBENCH_COMPOSITION_TASKS) == {k for k, v in meta.items() if v["input_type"] == "composition"}
    for name, task in MATBENCH_TASKS.items():
        assert (task.target, task.unit, task.task_type, task.n_samples) == (
            meta[name]["target"],
            meta[name]["unit"],
            meta[name]["task_type"],
            meta[name]["n_samples"],
        )
    assert [t.task_type for t in MATBENCH_TASKS.values()].count("classification") == 1
    assert get_task("jdft2d") is MATBENCH_TASKS["matbench_jdft2d"]


@pytest.mark.parametrize("task", ["matbench_jdft2d", "matbench_phonons"])
def test_folds_equal_matbench_validation_file(task, validation, tmp_path):
    home = data_home()
    all_test: list[str] = []
    for fold in range(5):
        dm = MatbenchDataModule(task, fold=fold, data_home=str(home), cache_dir=str(tmp_path), val_fraction=0.1)
        ids = dm.split_ids
        official = validation[task][f"fold_{fold}"]
        assert ids["test"] == official["test"]  # id for id, in matbench's order
        assert sorted(ids["train"] + ids["val"]) == sorted(official["train"])
        assert not set(ids["train"]) & set(ids["val"])
        assert not (set(ids["train"]) | set(ids["val"])) & set(ids["test"])
        n_val = round(0.1 * len(official["train"]))
        assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (
            len(official["train"]) - n_val,
            n_val,
            len(official["test"]),
        )
        all_test += ids["test"]
    assert sorted(all_test) == sorted(dm.table.ids)  # the 5 test folds partition the task


def test_known_sizes_jdft2d_fold0(tmp_path):
    dm = MatbenchDataModule("matbench_jdft2d", fold=0, data_home=str(data_home()), cache_dir=str(tmp_path))
    assert {k: len(v) for k, v in dm.split_ids.items()} == {"train": 457, "val": 51, "test": 128}


def test_validation_carve_is_seeded_and_from_train_only(tmp_path):
    home = str(data_home())
    a = MatbenchDataModule("jdft2d", fold=2, data_home=home, split_seed=7, cache_dir=str(tmp_path)).split_ids
    b = MatbenchDataModule("jdft2d", fold=2, data_home=home, split_seed=7, cache_dir=str(tmp_path)).split_ids
    c = MatbenchDataModule("jdft2d", fold=2, data_home=home, split_seed=8, cache_dir=str(tmp_path)).split_ids
    assert a == b
    assert a["val"] != c["val"] and a["test"] == c["test"]
    train, val = carve_validation([f"x{i}" for i in range(10)], 0.3, seed=0)
    assert len(val) == 3 and sorted(train + val) == sorted(f"x{i}" for i in range(10))


def test_inner_folds_partition_the_official_training_rows(tmp_path, validation):
    home = str(data_home())
    official_train = validation["matbench_jdft2d"]["fold_3"]["train"]
    splits = [
        MatbenchDataModule(
            "jdft2d", fold=3, data_home=home, val_folds=5, val_fold=k, split_seed=4, cache_dir=str(tmp_path)
        ).split_ids
        for k in range(5)
    ]
    vals = [s["val"] for s in splits]
    assert sorted(i for v in vals for i in v) == sorted(official_train)  # every training row validates once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for s in splits:
        assert sorted(s["train"] + s["val"]) == sorted(official_train)
        assert s["test"] == splits[0]["test"] and not set(s["test"]) & set(official_train)
    again = MatbenchDataModule(
        "jdft2d", fold=3, data_home=home, val_folds=5, val_fold=2, split_seed=4, cache_dir=str(tmp_path)
    ).split_ids
    other_seed = MatbenchDataModule(
        "jdft2d", fold=3, data_home=home, val_folds=5, val_fold=2, split_seed=5, cache_dir=str(tmp_path)
    ).split_ids
    assert again == splits[2] and other_seed["val"] != splits[2]["val"]
    ids = [f"x{i}" for i in range(11)]
    assert [len(inner_fold_validation(ids, 3, k, seed=0)[1]) for k in range(3)] == [4, 4, 3]


def test_calibration_rows_are_held_out_from_every_inner_fold_member(tmp_path, validation):
    """``calibration_fraction``: the same rows for all members of an ensemble, never trained or validated on."""
    home = str(data_home())
    official_train = validation["matbench_jdft2d"]["fold_1"]["train"]
    modules = [
        MatbenchDataModule(
            "jdft2d",
            fold=1,
            data_home=home,
            val_folds=5,
            val_fold=k,
            split_seed=3,
            calibration_fraction=0.1,
            cache_dir=str(tmp_path),
        )
        for k in range(5)
    ]
    splits = [m.split_ids for m in modules]
    calibration = splits[0]["calibration"]
    assert len(calibration) == round(0.1 * len(official_train)) and set(calibration) <= set(official_train)
    for s in splits:
        assert s["calibration"] == calibration
        assert not set(calibration) & set(s["train"] + s["val"])
        assert sorted(s["train"] + s["val"] + calibration) == sorted(official_train)
    assert sorted(i for s in splits for i in s["val"]) == sorted(set(official_train) - set(calibration))
    loader_ids = [i for batch in modules[0].calibration_dataloader() for i in batch.sample_id]
    assert loader_ids == calibration
    targets = modules[0].targets_of(calibration[:3])
    table = modules[0].table
    assert targets[:, 0].tolist() == [table.targets[table.ids.index(i), 0] for i in calibration[:3]]
    without = MatbenchDataModule("jdft2d", fold=1, data_home=home, cache_dir=str(tmp_path))
    with pytest.raises(UsageError, match="calibration_fraction"):
        without.calibration_dataloader()


@pytest.mark.parametrize(
    "flags, name", [({"val_folds": 1}, "val_folds"), ({"val_folds": 5, "val_fold": 5}, "val_fold")]
)
def test_bad_inner_fold_settings_name_the_flag(flags, name, tmp_path):
    """A Python caller reads the argument's name, the LightningCLI its flag."""
    from sagnn_lightning.errors import UsageError, lightning_flag

    with pytest.raises(UsageError, match=rf"\({name}\), got") as info:
        MatbenchDataModule("jdft2d", fold=0, data_home=str(data_home()), cache_dir=str(tmp_path), **flags)
    assert f"(--data.{name}), got" in info.value.render(lightning_flag)


def test_target_statistics_over_training_split_only(tmp_path):
    home = data_home()
    dm = MatbenchDataModule("jdft2d", fold=1, data_home=str(home), cache_dir=str(tmp_path))
    csv = pd.read_csv(home / "matbench_jdft2d.csv.gz").set_index("mbid")
    train = csv.loc[dm.split_ids["train"], "exfoliation_en"].to_numpy()
    assert dm.task_type == "regression" and dm.num_targets == 1 and dm.target_names == ["exfoliation_en"]
    np.testing.assert_allclose(dm.target_mean, [train.mean()], rtol=1e-12)
    np.testing.assert_allclose(dm.target_std, [train.std()], rtol=1e-12)
    everything = csv["exfoliation_en"].to_numpy()
    assert abs(dm.target_mean[0] - everything.mean()) > 1e-9  # really the training split, not all rows


def test_setup_builds_graphs_for_fold_rows(tmp_path):
    home = data_home()
    dm = MatbenchDataModule(
        "jdft2d", fold=0, data_home=str(home), cache_dir=str(tmp_path), batch_size=32, progress=False
    )
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (457, 51, 128)
    csv = pd.read_csv(home / "matbench_jdft2d.csv.gz").set_index("mbid")
    for split in ("train", "val", "test"):
        dataset = getattr(dm, f"{split}_dataset")
        got = [dataset[k].sample_id for k in range(len(dataset))]
        assert got == dm.split_ids[split]
    g = dm.test_dataset[5]
    assert g.y.shape == (1, 1) and g.y.dtype.is_floating_point
    assert g.y.item() == pytest.approx(csv.loc[g.sample_id, "exfoliation_en"], rel=1e-6)
    assert g.num_nodes == csv.loc[g.sample_id, "nsites"]
    batch = next(iter(dm.predict_dataloader()))
    assert batch.num_graphs == 32 and list(batch.sample_id) == dm.split_ids["test"][:32]
    assert batch.max_num_atoms == int(batch.ptr.diff().max())
    # seeded shuffle: same order twice, not file order
    first = [list(next(iter(dm.train_dataloader())).sample_id) for _ in range(2)]
    assert first[0] == first[1] and first[0] != dm.split_ids["train"][:32]


def test_csv_twin_gives_same_splits(tmp_path):
    home = data_home()
    a = MatbenchDataModule("jdft2d", fold=4, data_file=str(home / "matbench_jdft2d.csv.gz"), cache_dir=str(tmp_path))
    b = MatbenchDataModule("jdft2d", fold=4, data_home=str(home), cache_dir=str(tmp_path))
    assert a.split_ids == b.split_ids
    np.testing.assert_allclose(a.target_mean, b.target_mean)


def test_partial_file_fold0_train_only(tmp_path, validation):
    path = MATBENCH_DIR / "matbench_perovskites_fold0_train.json.gz"
    if not path.exists():
        pytest.skip(f"{path} not available")
    dm = MatbenchDataModule("perovskites", fold=0, data_file=str(path), cache_dir=str(tmp_path))
    ids = dm.split_ids
    assert sorted(ids["train"] + ids["val"]) == sorted(validation["matbench_perovskites"]["fold_0"]["train"])
    assert ids["test"] is None
    with pytest.raises(DataFormatError, match=r"lacks 3786 test rows .*fold 0"):
        dm.setup("test")
    with pytest.raises(DataFormatError, match=r"all training rows of folds \[0\]"):
        _ = MatbenchDataModule("perovskites", fold=1, data_file=str(path), cache_dir=str(tmp_path)).split_ids


def test_matminer_data_home_file_agrees_with_matbench_own_loader(tmp_path, monkeypatch):
    """The download location (matminer's data home, resolved when the rows are needed) is read by our reader;
    ids, folds and targets equal matbench's own loading (MatbenchBenchmark → task.load → fold API)."""
    home = data_home()
    reference = MatbenchDataModule("jdft2d", fold=3, data_home=str(home), cache_dir=str(tmp_path / "a"))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MATMINER_DATA", str(empty))
    dm = MatbenchDataModule("jdft2d", fold=3, cache_dir=str(tmp_path / "b"))
    assert dm.data_file is None  # → matminer's data home, downloaded there if still missing when needed
    local = tmp_path / "matminer"
    local.mkdir()
    os.symlink((home / "matbench_jdft2d.json.gz").resolve(), local / "matbench_jdft2d.json.gz")
    monkeypatch.setenv("MATMINER_DATA", str(local))  # now it is there: no download
    assert dm.split_ids == reference.split_ids
    # same reader on the same file: the targets are the same parse of the same bytes
    np.testing.assert_array_equal(dm.table.targets, reference.table.targets)
    assert dm.fingerprint == reference.fingerprint  # same file bytes → same graph cache

    from matbench.bench import MatbenchBenchmark

    task = MatbenchBenchmark(autoload=False, subset=["matbench_jdft2d"]).tasks_map["matbench_jdft2d"]
    task.load()  # matminer's load_dataset on $MATMINER_DATA: the file exists, nothing is downloaded
    train = task.get_train_and_val_data(3, as_type="df")
    test = task.get_test_data(3, as_type="df", include_target=True)
    assert sorted(train.index) == sorted(dm.split_ids["train"] + dm.split_ids["val"])
    assert list(test.index) == dm.split_ids["test"]
    row = {sid: k for k, sid in enumerate(dm.table.ids)}
    # matbench's values come from its own JSON decode (pandas/monty) of the same text: stated tolerance
    np.testing.assert_allclose(
        dm.table.targets[[row[i] for i in test.index], 0], test["exfoliation_en"].to_numpy(), rtol=1e-12, atol=0
    )


def test_matminer_data_env_is_honoured(tmp_path, monkeypatch):
    home = data_home()
    monkeypatch.setenv("MATMINER_DATA", str(home))
    dm = MatbenchDataModule("phonons", cache_dir=str(tmp_path))
    assert dm.data_file == home / "matbench_phonons.json.gz"


def test_missing_dataset_offline_names_expected_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"expected .*empty_home/matbench_phonons\.json\.gz"):
        MatbenchDataModule("phonons", data_home=str(tmp_path / "empty_home"), cache_dir=str(tmp_path))
    monkeypatch.setenv("MATMINER_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/matbench_dielectric\.json\.gz"):
        MatbenchDataModule("dielectric", download=False, cache_dir=str(tmp_path))


def test_classification_task_statistics(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"index": [], "columns": ["structure", "is_metal"], "data": []}))
    dm = MatbenchDataModule("matbench_mp_is_metal", data_file=str(tmp_path / "m.json"), cache_dir=str(tmp_path))
    assert dm.task_type == "classification" and dm.unit is None
    assert (dm.target_mean, dm.target_std, dm.target_names) == ([0.0], [1.0], ["is_metal"])


def test_cache_dir_resolution(tmp_path, monkeypatch):
    home = str(data_home())
    monkeypatch.setenv("SAGNN_CACHE_DIR", str(tmp_path / "env"))
    assert MatbenchDataModule("jdft2d", data_home=home).cache_dir == tmp_path / "env"
    assert MatbenchDataModule("jdft2d", data_home=home, cache_dir=str(tmp_path / "arg")).cache_dir == tmp_path / "arg"
    monkeypatch.delenv("SAGNN_CACHE_DIR")
    assert "sagnn_lightning" in str(MatbenchDataModule("jdft2d", data_home=home).cache_dir)


def test_second_run_reads_row_index_not_structures(tmp_path, monkeypatch):
    home = str(data_home())
    first = MatbenchDataModule("jdft2d", fold=0, data_home=home, cache_dir=str(tmp_path), progress=False)
    first.setup("fit")
    import sagnn_lightning.data.matbench as mb

    calls = []
    real = mb.read_matbench_json
    monkeypatch.setattr(mb, "read_matbench_json", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = MatbenchDataModule("jdft2d", fold=2, data_home=home, cache_dir=str(tmp_path), progress=False)
    assert second.table.structures is None and second.split_ids["test"]  # ids/targets from the row index
    np.testing.assert_array_equal(second.table.targets, first.table.targets)  # float64 index bytes read back
    second.setup()  # graph cache hit: still no parse
    assert calls == []
    third = MatbenchDataModule("jdft2d", fold=2, data_home=home, cache_dir=str(tmp_path), cutoff=4.0, progress=False)
    third.setup("test")  # graph cache miss: the structures are read again, once
    assert calls == [1] and len(third.test_dataset) == 127
    assert third.test_dataset[0].sample_id == second.test_dataset[0].sample_id
    assert third.test_dataset[0].edge_index.shape[1] < second.test_dataset[0].edge_index.shape[1]
