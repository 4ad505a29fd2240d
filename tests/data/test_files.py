"""Files the package writes: atomic replacement with the umask's permissions, a replaced file keeps its mode.

Checked on the helper (:func:`sagnn_lightning.files.atomic_write`) and through every writer that uses it:
graph cache, row index, predictions CSV, parity plot and the leaderboard runner's results.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from sagnn_lightning.data.cache import load_or_build_graphs
from sagnn_lightning.data.graph import GraphSettings
from sagnn_lightning.files import atomic_copy, atomic_write

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/graph/structures.json.gz"
INPUTS = ROOT / "tests/fixtures/inputs"
RUNNER = ROOT / "benchmarks/matbench_v0.1_sagnn/run.py"

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    """Temporary files left in ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


# --------------------------------------------------------------------------------------------- the helper
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_gets_the_umask_mode(tmp_path, umask, mask, expected) -> None:
    umask(mask)
    target = tmp_path / "new.txt"
    with atomic_write(target) as fh:
        fh.write("data\n")
    assert target.read_text() == "data\n"
    assert mode(target) == expected  # what open(path, "w") gives; mkstemp would give 0o600
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [0o640, 0o600, 0o664])
def test_replaced_file_keeps_its_mode(tmp_path, umask, existing) -> None:
    umask(0o022)
    target = tmp_path / "old.bin"
    target.write_bytes(b"old")
    target.chmod(existing)
    with atomic_write(target, "wb") as fh:
        # the temporary file already has the final mode before anything is written into it
        assert mode(Path(fh.name)) == existing
        fh.write(b"new")
    assert target.read_bytes() == b"new" and mode(target) == existing


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_copy_makes_the_folder_and_leaves_no_temp_file(tmp_path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(70_000))
    target = atomic_copy(source, tmp_path / "new" / "deeper" / "b.bin")
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def test_writer_by_name_and_bad_mode(tmp_path) -> None:
    target = tmp_path / "named.json"
    with atomic_write(target, "wb") as fh:
        Path(fh.name).write_text('{"a": 1}')  # libraries that only take a file name
        assert not target.exists()  # nothing visible before the rename
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "a"):
            pass


# --------------------------------------------------------------------------------------------- the writers
def _inputs(n: int = 4):
    with gzip.open(FIXTURE, "rt") as f:
        d = json.load(f)
    return d["ids"][:n], d["structures"][:n], np.array(d["targets"][:n], dtype=np.float64)[:, None]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_graph_cache_file_mode(tmp_path, umask, mask, expected) -> None:
    umask(mask)
    ids, dicts, targets = _inputs()
    ds = load_or_build_graphs(tmp_path, "fp-mode", ids, dicts, targets, GraphSettings(cutoff=4.0), progress=False)
    assert mode(ds.path) == expected
    assert leftovers(tmp_path) == []


def test_rebuilt_graph_cache_keeps_its_mode(tmp_path, umask) -> None:
    umask(0o022)
    ids, dicts, targets = _inputs()
    settings = GraphSettings(cutoff=4.0)
    path = load_or_build_graphs(tmp_path, "fp-mode", ids, dicts, targets, settings, progress=False).path
    path.chmod(0o640)
    path.write_bytes(path.read_bytes()[:100])  # truncated: rebuilt on the next load
    ds = load_or_build_graphs(tmp_path, "fp-mode", ids, dicts, targets, settings, progress=False)
    assert ds.path == path and len(ds) == len(ids)
    assert mode(path) == 0o640


def test_row_index_mode(tmp_path, umask) -> None:
    from sagnn_lightning.data.crystal import CrystalDataModule

    umask(0o027)
    dm = CrystalDataModule(
        str(INPUTS / "mp_abx3_8.csv"),
        target_columns=["band_gap"],
        cache_dir=str(tmp_path),
        val_fraction=0.25,
        test_fraction=0.25,
    )
    _ = dm.target_mean  # reads the rows, writes the index
    (index,) = (tmp_path / "rows").glob("*.npz")
    assert mode(index) == 0o640 and leftovers(index.parent) == []


@pytest.mark.parametrize("existing", [None, 0o640])
def test_predictions_csv_mode(tmp_path, umask, existing) -> None:
    from sagnn_lightning.lit.predictions_csv import Predictions, write_predictions_csv

    umask(0o022)
    out = tmp_path / "preds.csv"
    if existing is not None:
        out.write_text("previous\n")
        out.chmod(existing)
    result = Predictions(["a", "b"], torch.tensor([[1.5], [2.0]]), None, ["band_gap"], [])
    write_predictions_csv(out, result)
    assert out.read_text().splitlines()[0] == "id,prediction"
    assert mode(out) == (0o644 if existing is None else existing)
    assert leftovers(tmp_path) == []


def test_parity_png_mode(tmp_path, umask) -> None:
    from sagnn_lightning.lit.callbacks import write_parity_png

    umask(0o002)
    out = tmp_path / "parity.png"
    rows = [("a", [1.0], [1.1]), ("b", [2.0], [1.8]), ("c", [0.5], [0.7])]
    write_parity_png(out, rows, ["band_gap"], classification=False, stage="val")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mode(out) == 0o664
    out.chmod(0o600)
    write_parity_png(out, rows, ["band_gap"], classification=False, stage="val")
    assert mode(out) == 0o600 and leftovers(tmp_path) == []


def test_leaderboard_results_mode(tmp_path, umask) -> None:
    spec = importlib.util.spec_from_file_location("matbench_submission_for_modes", RUNNER.parent / "submission.py")
    submission = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submission)
    umask(0o022)
    out = tmp_path / "results" / "info.json"
    submission.atomic_write_by_name(out, lambda name: Path(name).write_text("{}\n"))  # writers that take a name
    assert out.read_text() == "{}\n" and mode(out) == 0o644
    out.chmod(0o640)
    submission.atomic_write_by_name(out, lambda name: Path(name).write_text('{"a": 1}\n'))
    assert json.loads(out.read_text()) == {"a": 1} and mode(out) == 0o640
    assert leftovers(out.parent) == []
