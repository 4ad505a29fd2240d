"""Every bad input gets a clear error naming the row/file and the fix, or (on_error="skip") a count and list."""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, DummySpecies, Structure

from sagnn_lightning.data import graph as graph_mod
from sagnn_lightning.data.composition import CompositionError, CompositionSettings
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.data.graph import (
    MAX_SEARCH_CELLS_PER_ATOM,
    MIN_VOLUME_PER_ATOM,
    GraphSettings,
    StructureError,
    graph_arrays,
    neighbor_list_arrays,
    search_cells,
)
from sagnn_lightning.data.inputs import item_to_graph
from sagnn_lightning.data.matbench import MATBENCH_TASKS, MatbenchDataModule
from sagnn_lightning.data.parsers import parse_simple_cif
from sagnn_lightning.data.readers import parse_structure
from sagnn_lightning.data.table import DataFormatError
from tests.data.corrupt_cifs import absurd_lattice, unknown_element

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
    with pytest.raises(StructureError, match=rf"\b{bad}\b.*could not parse.*on_error=skip\.$"):
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
    with pytest.raises(DataFormatError, match=rf"{bad_id}: target band_gap is .*leave them out with on_error=skip\.$"):
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
    with pytest.raises(
        DataFormatError, match=r"no target columns given; available columns: .*with target_columns=\[<name>"
    ):
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


# ------------------------------------------------- one bad item never takes down a run (issue 23 §7)
CAIRO3 = INPUTS / "cifs/mp-1016872.cif"  # CaIrO3, 5 atoms, a = b = c = 3.953 Å


def _item(cif: str, form: str):
    """``cif`` as each raw input the readers hand over: CIF text (fast parser), a Structure, a dict."""
    if form == "cif":
        return cif
    structure = Structure.from_str(cif, fmt="cif")
    return structure if form == "structure" else structure.as_dict()


@pytest.mark.parametrize("form", ["cif", "structure", "dict"])
def test_absurd_lattice_is_refused_before_the_search(monkeypatch, form):
    item = _item(absurd_lattice(CAIRO3.read_text()), form)
    calls = []
    search = graph_mod.find_points_in_spheres
    monkeypatch.setattr(graph_mod, "find_points_in_spheres", lambda *a, **k: calls.append(1) or search(*a, **k))
    start = time.perf_counter()
    with pytest.raises(StructureError) as info:
        item_to_graph(item, GraphSettings(), name="huge.cif")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert message.startswith(
        "huge.cif: the neighbour search would need 900,000,018 grid cells of cutoff=5 Å for 5 atoms "
        "(180,000,003.6 per atom, bound MAX_SEARCH_CELLS_PER_ATOM=4096)"
    )
    assert "MAX_SEARCH_CELLS_PER_ATOM=4096" in message and "lattice lengths 1e+09, 3.953, 3.953 Å" in message
    assert message.endswith("or remove this entry.") and "\n" not in message
    assert calls == [] and elapsed < 1.0  # refused before pymatgen is called (it once ran 5 s, then MemoryError)


def test_guard_counts_the_grid_pymatgen_allocates():
    # the MemoryError of the issue: "Memory allocation of 194400003888 bytes failed!", pymatgen's neighbour map
    # of 27 cell indices (8 bytes each) per cell of its grid; the guard counts that grid exactly
    z, cart, lattice = parse_simple_cif(absurd_lattice(CAIRO3.read_text()))
    assert search_cells(cart, 5.0) * 27 * 8 == 194400003888


def _line_of_atoms(x_max: float, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """``n`` atoms on a line along a from 0 to ``x_max`` Å; b = c = 3 Å, so each has neighbours (its images)."""
    cart = np.zeros((n, 3))
    cart[:, 0] = np.linspace(0.0, x_max, n)
    return cart, np.diag([x_max + 100.0, 3.0, 3.0])


def test_search_bound_is_exact():
    bound = MAX_SEARCH_CELLS_PER_ATOM * 9
    # grid: 3 x 3 cells across b and c (span 0 + 2 x cutoff), ceil((x_max + 2 x 5) / 5) along a
    cart, lattice = _line_of_atoms(5 * MAX_SEARCH_CELLS_PER_ATOM - 11)
    assert search_cells(cart, 5.0) == bound  # at the bound: accepted
    i, j, _, d = neighbor_list_arrays(cart, lattice, 5.0, name="line")
    assert set(i.tolist()) == set(range(9)) and (d <= 5.0).all()
    cart, lattice = _line_of_atoms(5 * MAX_SEARCH_CELLS_PER_ATOM - 9)
    assert search_cells(cart, 5.0) == bound + 9  # one more slice of cells: refused
    over = rf"^line: .* {bound + 9:,} grid cells .*\({MAX_SEARCH_CELLS_PER_ATOM + 1:,}\.0 per atom, bound MAX_SEARCH_CELLS_PER_ATOM="
    with pytest.raises(StructureError, match=over):
        neighbor_list_arrays(cart, lattice, 5.0, name="line")


@pytest.mark.parametrize("factor, refused", [(1 + 1e-9, False), (1 - 1e-9, True)])
def test_density_bound_is_exact(factor, refused):
    lattice = np.eye(3) * (MIN_VOLUME_PER_ATOM * factor) ** (1 / 3)  # one atom per cell
    cart = np.zeros((1, 3))
    if refused:
        with pytest.raises(StructureError, match=r"^tiny: 1 atoms in a cell of 0\.5 Å³ .*MIN_VOLUME_PER_ATOM=0\.5"):
            neighbor_list_arrays(cart, lattice, 5.0, name="tiny")
    else:
        i, _, _, _ = neighbor_list_arrays(cart, lattice, 5.0, name="tiny")
        assert 1000 < i.size < 1100  # 4/3 pi 5³ / 0.5 Å³ = 1047 images within the cutoff
    # a slab (no images along c) has no density to pile up: never refused for it
    i, _, _, _ = neighbor_list_arrays(cart, lattice, 5.0, pbc=(True, True, False), name="tiny")
    assert i.size > 0


def _dummy_structure() -> Structure:
    structure = Structure.from_file(CAIRO3)
    structure.replace(0, DummySpecies("X"))  # pymatgen's own dummy species, "X0+"
    return structure


@pytest.mark.parametrize(
    "item, symbol",
    [
        (unknown_element(CAIRO3.read_text(), "Xx"), "Xx"),
        (unknown_element(CAIRO3.read_text(), "X0+"), "X"),
        (_dummy_structure(), "X"),
        (_dummy_structure().as_dict(), "X"),
    ],
    ids=["cif-Xx", "cif-X0+", "structure", "dict"],
)
def test_unknown_species_names_the_item_and_the_symbol(item, symbol):
    pattern = rf"^bad\.cif: unknown element '{re.escape(symbol)}': .*atomic number 1\.\.118.*remove this entry\.$"
    with pytest.raises(StructureError, match=pattern):
        item_to_graph(item, GraphSettings(), name="bad.cif")
    if not isinstance(item, Structure):  # the readers' own check (predict's read path) says the same
        with pytest.raises(StructureError, match=pattern):
            parse_structure(item, name="bad.cif")


def test_atomic_number_out_of_range_in_arrays():
    z, cart, lattice = parse_simple_cif(CAIRO3.read_text())
    for bad in (0, 119, -3):
        z_bad = z.copy()
        z_bad[2] = bad
        with pytest.raises(StructureError, match=rf"^row-3: atomic number {bad} \(site 2\) is no element"):
            graph_arrays(z_bad, cart, lattice, GraphSettings(), name="row-3")


def test_dummy_species_in_a_composition():
    formula = Composition({DummySpecies("X"): 1, "O": 2})
    with pytest.raises(CompositionError, match=r"^row-5: formula .* contains 'X', not a chemical element"):
        item_to_graph(formula, CompositionSettings(), name="row-5")


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError("Memory allocation of 194400003888 bytes failed!"),
        IndexError("index 7 is out of bounds for axis 0 with size 5"),
        ValueError("first line\nsecond line"),
    ],
)
def test_unexpected_failure_is_reported_against_the_item(monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(graph_mod, "find_points_in_spheres", fail)
    first = str(exc).splitlines()[0]
    with pytest.raises(StructureError) as info:
        item_to_graph(CAIRO3.read_text(), GraphSettings(), name="mp-1016872.cif")
    assert str(info.value) == (
        f"mp-1016872.cif: could not build the graph: {type(exc).__name__}: {first}; fix or remove this entry."
    )
    assert info.value.__cause__ is exc  # SAGNN_DEBUG=1 shows pymatgen's traceback


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), NameError("name 'x' is not defined")])
def test_interrupts_and_programming_errors_pass_through(monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(graph_mod, "find_points_in_spheres", fail)
    with pytest.raises(type(exc)):
        item_to_graph(CAIRO3.read_text(), GraphSettings(), name="mp-1016872.cif")
