"""Every bad input gets a clear error naming the row/file and the fix, or (on_error="skip") a count and list."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.data.graph import StructureError
from sagnn_lightning.data.matbench import MATBENCH_TASKS, MatbenchDataModule
from sagnn_lightning.data.table import DataFormatError

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ROOT / "tests/fixtures/inputs"
JDFT2D = ROOT / "../shared/data/matbench/matbench_jdft2d.json.gz"


def cif_folder_with(tmp_path: Path, bad: list[str]) -> Path:
    """The 8 good fixture CIFs plus the named bad ones, all listed in id_prop.csv."""
    folder = tmp_path / "cifs"
    shutil.copytree(INPUTS / "cifs", folder)
    rows = (folder / "id_prop.csv").read_text().splitlines()
    for name in bad:
        shutil.copy(INPUTS / "bad" / f"{name}.cif", folder / f"{name}.cif")
        rows.append(f"{name},1.0,-1.0")
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    return folder


def module(path: Path, tmp_path: Path, **kw) -> CrystalDataModule:
    kw = {"val_fraction": 0.2, "test_fraction": 0.2, "cache_dir": str(tmp_path / "cache"), "progress": False, **kw}
    return CrystalDataModule(str(path), **kw)


@pytest.mark.parametrize("bad", ["garbage", "truncated", "empty"])
def test_unparsable_cif_names_the_sample(tmp_path, bad):
    dm = module(cif_folder_with(tmp_path, [bad]), tmp_path)
    with pytest.raises(StructureError, match=rf"\b{bad}\b.*could not parse.*on_error='skip'"):
        dm.setup()


def test_disordered_sites_name_the_sample_and_the_fix(tmp_path):
    dm = module(cif_folder_with(tmp_path, ["disordered"]), tmp_path)
    with pytest.raises(StructureError, match=r"\bdisordered\b.*partially occupied.*Order it first"):
        dm.setup()


def test_skip_mode_counts_and_lists_bad_structures(tmp_path, caplog):
    bad = ["garbage", "truncated", "disordered", "empty"]
    dm = module(cif_folder_with(tmp_path, bad), tmp_path, on_error="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert sorted(s.sample_id for s in dm.skipped) == sorted(bad)
    assert "skipped 4 of 12" in caplog.text and all(b in caplog.text for b in bad)
    used = {
        dataset[k].sample_id
        for dataset in (dm.train_dataset, dm.val_dataset, dm.test_dataset)
        for k in range(len(dataset))
    }
    assert used == {p.stem for p in (INPUTS / "cifs").glob("*.cif")}
    # a raise-mode run must not silently reuse the skip-mode cache
    with pytest.raises(DataFormatError, match="skipped 4 of 12"):
        module(dm.path, tmp_path).setup()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_target_names_the_row(tmp_path, value):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    frame.loc[2, "band_gap"] = value
    frame.to_csv(tmp_path / "t.csv", index=False)
    bad_id = frame.loc[2, "material_id"]
    with pytest.raises(DataFormatError, match=rf"{bad_id}: target band_gap is .*on_error='skip'"):
        _ = module(tmp_path / "t.csv", tmp_path, target_columns=["band_gap"]).table


def test_nan_target_skip_mode_counts(tmp_path, caplog):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    frame.loc[[1, 6], "band_gap"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    dm = module(tmp_path / "t.csv", tmp_path, target_columns=["band_gap"], on_error="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert [s.sample_id for s in dm.skipped] == list(frame.loc[[1, 6], "material_id"])
    assert "skipped 2 of 8 rows" in caplog.text
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 6
    assert np.isfinite(dm.target_mean).all()


def test_nan_target_in_matbench_file(tmp_path):
    if not JDFT2D.exists():
        pytest.skip(f"{JDFT2D} not available")
    with gzip.open(JDFT2D, "rt") as fh:
        doc = json.load(fh)
    doc["data"][9][1] = float("nan")  # row index 9 → mb-jdft2d-010
    home = tmp_path / "home"
    home.mkdir()
    with gzip.open(home / "matbench_jdft2d.json.gz", "wt") as fh:
        json.dump(doc, fh)
    with pytest.raises(DataFormatError, match=r"mb-jdft2d-010: target exfoliation_en is nan"):
        _ = MatbenchDataModule("jdft2d", data_home=str(home), cache_dir=str(tmp_path)).split_ids
    dm = MatbenchDataModule("jdft2d", data_home=str(home), cache_dir=str(tmp_path), on_error="skip")
    ids = dm.split_ids
    assert "mb-jdft2d-010" not in ids["train"] + ids["val"] + ids["test"]
    assert sum(len(v) for v in ids.values()) == 635
    assert [s.sample_id for s in dm.skipped] == ["mb-jdft2d-010"]


def test_missing_target_column_lists_available(tmp_path):
    with pytest.raises(
        DataFormatError,
        match=r"\['gap'\] not found; available columns: \['material_id', 'formula', "
        r"'cif', 'band_gap', 'formation_energy_per_atom'\]",
    ):
        _ = module(INPUTS / "mp_abx3_8.csv", tmp_path, target_columns=["gap"]).table
    with pytest.raises(DataFormatError, match=r"no target columns given; available columns: .*--data\.target_columns="):
        _ = module(INPUTS / "mp_abx3_8.csv", tmp_path).table
    with pytest.raises(DataFormatError, match=r"structure column\(s\) \['xyz'\] not found; available"):
        _ = module(INPUTS / "mp_abx3_8.csv", tmp_path, target_columns=["band_gap"], structure_column="xyz").table


def test_unknown_task_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown matbench task 'matbench_jdft3d'") as info:
        MatbenchDataModule("matbench_jdft3d", cache_dir=str(tmp_path))
    assert all(name in str(info.value) for name in MATBENCH_TASKS)


@pytest.mark.parametrize("task", ["matbench_steels", "expt_gap", "matbench_glass", "matbench_expt_is_metal"])
def test_composition_tasks_are_accepted_and_listed(tmp_path, task):
    from sagnn_lightning.data.composition import CompositionSettings

    dm = MatbenchDataModule(task, cache_dir=str(tmp_path), download=True)
    assert dm.task.input_type == "composition" and isinstance(dm.settings, CompositionSettings)
    with pytest.raises(ValueError, match="unknown matbench task") as info:
        MatbenchDataModule(task.replace("steels", "steel") + "x", cache_dir=str(tmp_path))
    assert dm.task.name in str(info.value)


def test_empty_dataset(tmp_path):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv").iloc[:0]
    frame.to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataFormatError, match="empty"):
        _ = module(tmp_path / "empty.csv", tmp_path, target_columns=["band_gap"]).table
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        _ = module(tmp_path / "blank.csv", tmp_path, target_columns=["band_gap"]).table
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "id_prop.csv").write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        _ = module(folder, tmp_path).table
    # everything skipped → empty too
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    frame["band_gap"] = np.nan
    frame.to_csv(tmp_path / "allnan.csv", index=False)
    with pytest.raises(DataFormatError, match="no usable rows left; skipped 8 of 8"):
        _ = module(tmp_path / "allnan.csv", tmp_path, target_columns=["band_gap"], on_error="skip").table


def test_classification_labels_must_be_binary(tmp_path):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    with pytest.raises(DataFormatError, match=rf"{frame.loc[0, 'material_id']}: classification target must be 0/1"):
        _ = module(INPUTS / "mp_abx3_8.csv", tmp_path, target_columns=["band_gap"], task_type="classification").table


def test_non_numeric_target_names_the_column(tmp_path):
    with pytest.raises(DataFormatError, match=r"target column 'formula' is not numeric"):
        _ = module(INPUTS / "mp_abx3_8.csv", tmp_path, target_columns=["formula"]).table


def test_thousand_atom_cell_with_max_neighbors(tmp_path):
    cif = (INPUTS / "cifs/mp-1016872.cif").read_text()
    big = Structure.from_str(cif, fmt="cif") * (6, 6, 6)  # 1,080 atoms
    pd.DataFrame({"id": ["big", "small"], "cif": [big.to(fmt="cif"), cif], "y": [1.0, 2.0]}).to_csv(
        tmp_path / "big.csv", index=False
    )
    dm = module(
        tmp_path / "big.csv", tmp_path, target_columns=["y"], val_fraction=0.0, test_fraction=0.0, max_neighbors=12
    )
    dm.setup("fit")
    graph = next(dm.train_dataset[k] for k in range(2) if dm.train_dataset[k].sample_id == "big")
    assert graph.num_nodes == 1080
    counts = np.bincount(graph.edge_index[0].numpy(), minlength=1080)
    assert (counts == 12).all()  # every atom has > 12 neighbours within 5 Å: the cap binds everywhere


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        module(INPUTS / "mp_abx3_8.csv", tmp_path, target_columns=["band_gap"], on_error="ignore")
    with pytest.raises(ValueError, match="val_fraction"):
        module(INPUTS / "mp_abx3_8.csv", tmp_path, target_columns=["band_gap"], val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        module(tmp_path / "missing.csv", tmp_path, target_columns=["band_gap"])
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        MatbenchDataModule("jdft2d", fold=5, cache_dir=str(tmp_path))
