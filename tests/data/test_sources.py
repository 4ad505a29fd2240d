"""Readers: matbench layout, CSV/JSON tables, CIF folders, prediction inputs — checked against pymatgen/pandas."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from sagnn_lightning.data.fingerprint import fingerprint
from sagnn_lightning.data.matbench_format import matbench_default_ids, matbench_ids, read_matbench_json
from sagnn_lightning.data.readers import parse_structure, read_cif_folder, read_data, read_structures, read_table
from sagnn_lightning.data.table import DataFormatError

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "../shared/data"
INPUTS = ROOT / "tests/fixtures/inputs"


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path


def test_matbench_ids_follow_matbench_rule():
    # matbench.data_ops.load: f"{prefix}-{i + 1:0{floor(log10(n)) + 1}d}"
    assert matbench_ids("matbench_jdft2d", [0, 635], 636) == ["mb-jdft2d-001", "mb-jdft2d-636"]
    assert matbench_ids("matbench_mp_e_form", [0], 132752) == ["mb-mp-e-form-000001"]
    assert matbench_ids("matbench_perovskites", [9], 18928) == ["mb-perovskites-00010"]
    assert matbench_ids("matbench_phonons", [999], 1000) == ["mb-phonons-1000"]  # log10(1000) = 3 → 4 digits


def test_read_matbench_json_matches_csv_twin():
    table = read_matbench_json(shared("matbench/matbench_jdft2d.json.gz"), "matbench_jdft2d", 636, "exfoliation_en")
    csv = pd.read_csv(shared("matbench/matbench_jdft2d.csv.gz"))
    assert table.ids == list(csv["mbid"])
    assert table.targets.shape == (636, 1)
    np.testing.assert_allclose(table.targets[:, 0], csv["exfoliation_en"].to_numpy())
    # structures are Structure.as_dict() dicts of the same crystals as the CIF column
    for k in (0, 100, 635):
        s = Structure.from_dict(table.structures[k])
        assert s.composition.reduced_formula == Structure.from_str(csv["cif"][k], fmt="cif").composition.reduced_formula
        assert len(s) == csv["nsites"][k]


def test_read_matbench_json_partial_file_keeps_official_index():
    path = shared("matbench/matbench_perovskites_fold0_train.json.gz")
    with gzip.open(path, "rt") as fh:
        index = json.load(fh)["index"]
    table = read_matbench_json(path, "matbench_perovskites", 18928, "e_form")
    assert len(table) == 15142
    assert table.ids[:3] == [f"mb-perovskites-{i + 1:05d}" for i in index[:3]]


def test_read_table_csv_cif_column():
    table = read_table(INPUTS / "mp_abx3_8.csv", ["band_gap", "formation_energy_per_atom"])
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    assert table.ids == list(frame["material_id"])  # auto-detected id column
    assert table.extra == {"id_column": "material_id", "structure_column": "cif"}
    # read_table parses with pandas.read_csv too: the same parser on the same text, so exactly equal
    np.testing.assert_array_equal(table.targets, frame[["band_gap", "formation_energy_per_atom"]].to_numpy())
    assert table.structures[0] == frame["cif"][0]


def test_read_table_json_records_with_dicts():
    table = read_table(INPUTS / "jdft2d_8.json", ["exfoliation_en"], id_column="id")
    records = json.loads((INPUTS / "jdft2d_8.json").read_text())
    assert table.ids == [r["id"] for r in records]
    assert isinstance(table.structures[0], dict)
    assert Structure.from_dict(table.structures[3]) == Structure.from_dict(records[3]["structure"])


def test_read_table_structure_dicts_as_json_text_in_csv(tmp_path):
    records = json.loads((INPUTS / "jdft2d_8.json").read_text())
    frame = pd.DataFrame(
        {
            "id": [r["id"] for r in records],
            "structure": [json.dumps(r["structure"]) for r in records],
            "y": [r["exfoliation_en"] for r in records],
        }
    )
    frame.to_csv(tmp_path / "t.csv.gz", index=False)
    table = read_table(tmp_path / "t.csv.gz", ["y"])
    assert table.ids == list(frame["id"])
    assert Structure.from_dict(table.structures[2]) == Structure.from_dict(records[2]["structure"])


def test_read_table_without_id_column_numbers_rows(tmp_path):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv").drop(columns=["material_id"])
    frame.to_csv(tmp_path / "noid.csv", index=False)
    table = read_table(tmp_path / "noid.csv", ["band_gap"])
    assert table.ids == [f"row-{i}" for i in range(8)]


def test_read_cif_folder_cgcnn_layout():
    folder = INPUTS / "cifs"
    table = read_cif_folder(folder, ["band_gap", "formation_energy_per_atom"])
    id_prop = pd.read_csv(folder / "id_prop.csv", header=None)
    assert table.ids == list(id_prop[0])
    np.testing.assert_array_equal(table.targets, id_prop[[1, 2]].to_numpy())  # same pandas.read_csv parse
    assert table.structures[0] == (folder / f"{table.ids[0]}.cif").read_text()
    # default names, one per column
    assert read_cif_folder(folder).target_names == ["target_0", "target_1"]
    with pytest.raises(DataFormatError, match="2 target column"):
        read_cif_folder(folder, ["band_gap"])


def test_read_cif_folder_missing_cif_names_it(tmp_path):
    (tmp_path / "id_prop.csv").write_text("mp-1,1.0\n")
    with pytest.raises(DataFormatError, match=r"mp-1\.cif"):
        read_cif_folder(tmp_path)
    with pytest.raises(DataFormatError, match="id_prop.csv"):
        read_cif_folder(INPUTS / "bad")


def test_read_data_dispatch_and_missing_path(tmp_path):
    assert read_data(INPUTS / "cifs").ids == read_cif_folder(INPUTS / "cifs").ids
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_data(tmp_path / "nope.csv", ["y"])
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(DataFormatError, match="unsupported file type"):
        read_data(tmp_path / "x.parquet", ["y"])


def test_duplicate_ids_rejected(tmp_path):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    frame.loc[3, "material_id"] = frame.loc[0, "material_id"]
    frame.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataFormatError, match="duplicate sample ids"):
        read_table(tmp_path / "dup.csv", ["band_gap"])


def test_boolean_targets_become_0_1(tmp_path):
    records = json.loads((INPUTS / "jdft2d_8.json").read_text())
    for k, r in enumerate(records):
        r["is_metal"] = bool(k % 2)
    (tmp_path / "b.json").write_text(json.dumps(records))
    table = read_table(tmp_path / "b.json", ["is_metal"])
    assert table.targets[:, 0].tolist() == [float(k % 2) for k in range(8)]


def test_fingerprint_changes_with_bytes_and_columns(tmp_path):
    src = (INPUTS / "mp_abx3_8.csv").read_bytes()
    (tmp_path / "a.csv").write_bytes(src)
    f0 = fingerprint(tmp_path / "a.csv", targets=["band_gap"])
    assert f0 == fingerprint(tmp_path / "a.csv", targets=["band_gap"])
    assert f0 != fingerprint(tmp_path / "a.csv", targets=["formation_energy_per_atom"])
    (tmp_path / "a.csv").write_bytes(src.replace(b"1.1346", b"1.1347"))
    assert f0 != fingerprint(tmp_path / "a.csv", targets=["band_gap"])
    # a folder's fingerprint covers its CIFs
    assert fingerprint(INPUTS / "cifs") != fingerprint(INPUTS / "bad")


def test_parse_structure_accepts_every_input_kind():
    cif = (INPUTS / "cifs/mp-1016872.cif").read_text()
    ref = Structure.from_str(cif, fmt="cif")
    assert parse_structure(cif) == ref
    assert parse_structure(ref.as_dict()) == ref
    assert parse_structure(json.dumps(ref.as_dict())) == ref
    assert parse_structure(ref) is ref


def test_read_structures_single_folder_table():
    one = read_structures(INPUTS / "cifs/mp-1016872.cif")
    assert one.ids == ["mp-1016872"] and one.errors == []
    assert one.structures[0] == Structure.from_file(INPUTS / "cifs/mp-1016872.cif")
    folder = read_structures(INPUTS / "cifs")
    assert folder.ids == sorted(p.stem for p in (INPUTS / "cifs").glob("*.cif"))
    table = read_structures(INPUTS / "jdft2d_8.json")
    assert table.ids == [f"mb-jdft2d-{i:03d}" for i in range(1, 9)]


def test_readers_name_rows_by_the_callers_rule(tmp_path):
    """The generic readers know no matbench: a table without an id column has rows ``row-<i>``, unless the
    caller passes ``default_ids`` (predict and CrystalDataModule pass matbench's rule for matbench files)."""
    path = shared("matbench/matbench_jdft2d.json.gz")
    plain = read_structures(path)
    assert plain.ids[:2] == ["row-0", "row-1"] and len(plain.ids) == 636
    named = read_structures(path, default_ids=matbench_default_ids)
    assert named.ids == matbench_ids("matbench_jdft2d", range(636), 636)
    assert read_table(path, ["exfoliation_en"], default_ids=matbench_default_ids).ids == named.ids
    other = tmp_path / "my_data.json"
    other.write_text(
        json.dumps({"index": [4], "columns": ["structure", "y"], "data": [[plain.structures[0].as_dict(), 1.0]]})
    )
    assert read_table(other, ["y"], default_ids=matbench_default_ids).ids == ["row-4"]  # not named after a task


def test_read_structures_reports_bad_files_by_name_and_continues(tmp_path):
    for p in list((INPUTS / "cifs").glob("*.cif"))[:2] + list((INPUTS / "bad").glob("*.cif")):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    result = read_structures(tmp_path, on_error="skip")
    assert len(result.ids) == 2 and len(result.structures) == 2
    named = {Path(name).name: reason for name, reason in result.errors}
    assert set(named) == {"garbage.cif", "truncated.cif", "disordered.cif", "empty.cif"}
    assert "could not parse" in named["garbage.cif"]
    assert "disordered" in named["disordered.cif"]
    with pytest.raises(ValueError, match="disordered.cif"):
        read_structures(tmp_path, on_error="raise")


def test_read_structures_matbench_layout_gets_matbench_ids():
    """With matbench's id rule (what ``predict`` passes), a matbench file's rows get matbench's own ids."""
    path = shared("matbench/matbench_jdft2d.json.gz")
    result = read_structures(path, default_ids=matbench_default_ids)
    csv = pd.read_csv(shared("matbench/matbench_jdft2d.csv.gz"))
    assert result.ids == list(csv["mbid"]) and result.errors == []
    assert [len(s) for s in result.structures[:20]] == list(csv["nsites"][:20])


def test_read_structures_single_dict_json_and_poscar(tmp_path):
    ref = Structure.from_file(INPUTS / "cifs/mp-1016872.cif")
    (tmp_path / "one.json").write_text(json.dumps(ref.as_dict()))
    assert read_structures(tmp_path / "one.json").structures == [ref]
    ref.to(filename=str(tmp_path / "POSCAR"))
    result = read_structures(tmp_path / "POSCAR")
    assert result.ids == ["POSCAR"]
    np.testing.assert_allclose(result.structures[0].lattice.matrix, ref.lattice.matrix, atol=1e-6)
    (tmp_path / "x.xyz").write_text("garbage")
    errors = read_structures(tmp_path / "x.xyz", on_error="skip").errors
    assert [name for name, _ in errors] == [str(tmp_path / "x.xyz")]
