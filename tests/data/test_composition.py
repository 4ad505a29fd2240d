"""Composition → element graph, its cache round trip, and the composition DataModules on real matbench data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Composition

from sagnn_lightning.data import collate_graphs
from sagnn_lightning.data.cache import load_or_build_graphs
from sagnn_lightning.data.composition import (
    CompositionError,
    CompositionSettings,
    composition_graph_arrays,
    composition_to_graph,
)
from sagnn_lightning.data.composition_table import CompositionDataModule
from sagnn_lightning.data.graph import GraphSettings, StructureError
from sagnn_lightning.data.inputs import item_to_graph, settings_from_dict
from sagnn_lightning.data.matbench import MatbenchDataModule, official_fold
from sagnn_lightning.errors import SAGNNError

MATBENCH = (Path(__file__).resolve().parents[2] / "../shared/data/matbench").resolve()
COMPOSITION_TASKS = ("matbench_expt_gap", "matbench_expt_is_metal", "matbench_glass", "matbench_steels")


def task_rows(task: str) -> tuple[list[int], list[str], list]:
    path = MATBENCH / f"{task}.json.gz"
    if not path.exists():
        pytest.skip(f"shared matbench data not found at {path}")
    with gzip.open(path, "rt") as fh:
        doc = json.load(fh)
    return doc["index"], [r[0] for r in doc["data"]], [r[1] for r in doc["data"]]


@pytest.mark.parametrize("formula", ["Fe2O3", "Ag(AuS)2", "Si", "Fe0.62C0.000953Mn0.000521Ni0.192Co0.146", "LiFePO4"])
def test_graph_is_the_fraction_weighted_complete_graph_of_pymatgen_composition(formula: str) -> None:
    reference = Composition(formula).fractional_composition  # pymatgen's own fractions
    g = composition_graph_arrays(formula)
    n = len(reference)
    expected = sorted((el.Z, amt) for el, amt in reference.items())
    assert g.atomic_numbers.tolist() == [z for z, _ in expected]
    np.testing.assert_allclose(g.fractions, [a for _, a in expected], rtol=1e-12)
    assert g.fractions.sum() == pytest.approx(1.0)
    # every ordered pair (self pairs included), each exactly once
    pairs = set(map(tuple, g.edge_index.T.tolist()))
    assert len(pairs) == g.edge_index.shape[1] == n * n
    assert pairs == {(i, j) for i in range(n) for j in range(n)}


def test_scaling_and_writing_order_give_the_same_graph() -> None:
    graphs = [composition_to_graph(f) for f in ("Fe2O3", "Fe4O6", "O3Fe2", "Fe0.4O0.6")]
    for g in graphs[1:]:
        assert torch.equal(g.atomic_numbers, graphs[0].atomic_numbers)
        assert torch.equal(g.edge_index, graphs[0].edge_index)
        torch.testing.assert_close(g.fractions, graphs[0].fractions, rtol=1e-12, atol=0)
    assert composition_to_graph({"Fe": 2, "O": 3}).fractions.tolist() == graphs[0].fractions.tolist()
    assert composition_to_graph(Composition("Fe2O3")).fractions.tolist() == graphs[0].fractions.tolist()


@pytest.mark.parametrize(
    "formula, match",
    [
        ("Fe2O3)", "cannot read the formula"),
        ("Xx2O", "unknown element symbol Xx\\."),
        ("Fe0O3", "amount of 0"),
        ("Fe-1O2", "cannot be negative"),
        ("", "empty formula"),
        ("  ", "empty formula"),
    ],
)
def test_bad_formulas_are_one_line_errors_naming_the_row(formula: str, match: str) -> None:
    with pytest.raises(CompositionError, match=match) as info:
        composition_graph_arrays(formula, name="mb-expt-gap-0042")
    message = str(info.value)
    assert message.startswith("mb-expt-gap-0042: ") and "\n" not in message
    assert isinstance(info.value, SAGNNError)


def test_settings_kind_round_trips_and_keys_differ() -> None:
    assert settings_from_dict(CompositionSettings().as_dict()) == CompositionSettings()
    assert settings_from_dict(GraphSettings(cutoff=4.0).as_dict()) == GraphSettings(cutoff=4.0)
    data = item_to_graph("Fe2O3", CompositionSettings(), name="x")
    assert torch.equal(data.fractions, composition_to_graph("Fe2O3").fractions)


def test_cache_round_trip_equals_direct_graphs_and_counts_skipped(tmp_path: Path) -> None:
    formulas = ["Fe2O3", "Ag(AuS)2", "Fe0O", "NaCl", "Xx", "Fe0.62C0.000953Mn0.000521"]
    ids = [f"row-{i}" for i in range(len(formulas))]
    targets = np.arange(len(formulas), dtype=np.float64)
    with pytest.raises(StructureError, match="row-2: .*leave bad formulas out with on_error=skip"):
        load_or_build_graphs(tmp_path, "fp", ids, formulas, targets, CompositionSettings(), progress=False)
    ds = load_or_build_graphs(
        tmp_path, "fp", ids, formulas, targets, CompositionSettings(), progress=False, on_error="skip"
    )
    assert [s.sample_id for s in ds.skipped] == ["row-2", "row-4"]
    assert ds.sample_ids == ["row-0", "row-1", "row-3", "row-5"]
    assert isinstance(ds.settings, CompositionSettings)
    for k, row in enumerate([0, 1, 3, 5]):
        direct, cached = composition_to_graph(formulas[row]), ds[k]
        assert torch.equal(cached.atomic_numbers, direct.atomic_numbers)
        assert torch.equal(cached.edge_index, direct.edge_index)
        assert torch.equal(cached.fractions, direct.fractions)
        assert cached.y.item() == targets[row] and cached.sample_id == ids[row]
        assert not hasattr(cached, "pos") or cached.pos is None
    # a second open is a hit (no rebuild); the batch packs element graphs like crystal graphs
    again = load_or_build_graphs(
        tmp_path, "fp", ids, lambda: pytest.fail("rebuilt"), targets, CompositionSettings(), on_error="skip"
    )
    assert again.path == ds.path
    batch = collate_graphs([ds[0], ds[1]])
    assert batch.max_num_atoms == 3 and batch.ptr.tolist() == [0, 2, 5]
    assert batch.edge_index.max().item() == 4 and batch.fractions.shape == (5,)


@pytest.mark.parametrize("task", COMPOSITION_TASKS)
def test_matbench_composition_task_has_official_folds_and_the_file_rows(task: str, tmp_path: Path) -> None:
    index, formulas, targets = task_rows(task)
    dm = MatbenchDataModule(task, fold=2, data_home=str(MATBENCH), cache_dir=str(tmp_path), progress=False)
    assert isinstance(dm.settings, CompositionSettings)
    assert dm.num_targets == 1 and dm.task_type == dm.task.task_type
    train_ids, test_ids = official_fold(task, 2)  # matbench's own validation file
    assert sorted(dm.split_ids["train"] + dm.split_ids["val"]) == sorted(train_ids)
    assert dm.split_ids["test"] == test_ids
    if task == "matbench_steels":  # graph the whole (small) task and compare rows with the file
        dm.setup("test")
        graphs = dm.graph_dataset()
        assert len(graphs) == len(formulas) and dm.skipped == []
        position = {sid: k for k, sid in enumerate(graphs.sample_ids)}
        for row in (0, 17, len(formulas) - 1):
            sid = f"mb-steels-{index[row] + 1:03d}"
            g = graphs[position[sid]]
            expected = composition_to_graph(formulas[row])
            assert torch.equal(g.atomic_numbers, expected.atomic_numbers)
            assert g.y.item() == pytest.approx(targets[row])


def test_composition_datamodule_reads_a_users_csv_and_names_bad_rows(tmp_path: Path) -> None:
    _, formulas, targets = task_rows("matbench_expt_gap")
    frame = pd.DataFrame({"id": [f"c{i}" for i in range(60)], "formula": formulas[:60], "gap": targets[:60]})
    path = tmp_path / "mine.csv"
    frame.to_csv(path, index=False)
    dm = CompositionDataModule(str(path), target_columns=["gap"], cache_dir=str(tmp_path / "cache"), progress=False)
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.split_ids["test"]) == 60
    g = dm.train_dataset[0]
    row = frame.set_index("id").loc[g.sample_id]
    assert torch.equal(g.atomic_numbers, composition_to_graph(row["formula"]).atomic_numbers)

    frame.loc[7, "formula"] = "Qz3O"
    frame.to_csv(path, index=False)
    bad = CompositionDataModule(str(path), target_columns=["gap"], cache_dir=str(tmp_path / "c2"), progress=False)
    with pytest.raises(StructureError, match="c7: .*'Qz3O': unknown element symbol Qz\\. .*on_error=skip") as info:
        bad.setup("fit")
    assert "\n" not in str(info.value)
    skip = CompositionDataModule(
        str(path), target_columns=["gap"], cache_dir=str(tmp_path / "c3"), progress=False, on_error="skip"
    )
    skip.setup("fit")
    assert [s.sample_id for s in skip.skipped] == ["c7"]


def test_composition_datamodule_on_the_bundled_sample_uses_its_formula_column(tmp_path: Path) -> None:
    dm = CompositionDataModule.from_sample("mp_abx3_band_gap", cache_dir=str(tmp_path), progress=False)
    dm.setup("fit")
    g = dm.train_dataset[0]
    assert g.fractions.shape[0] == g.num_nodes and torch.isclose(
        g.fractions.sum(), torch.tensor(1.0, dtype=torch.float64)
    )
