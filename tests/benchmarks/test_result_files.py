"""The benchmarks' result writers respect the umask and keep the mode of a file they replace (issue 10, item 6)."""

from __future__ import annotations

import csv
import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_ablation_merge_write_new_file_and_replaced_file(tmp_path, umask_022):
    ablation = _load("ablation")
    path = tmp_path / "ablation.csv"
    ablation.merge_write(path, [{"variant": "a", "mae": 1.0}], ["variant", "mae"], ("variant",))
    assert _mode(path) == 0o644
    path.chmod(0o640)
    merged = ablation.merge_write(path, [{"variant": "b", "mae": 2.0}], ["variant", "mae"], ("variant",))
    assert _mode(path) == 0o640 and len(merged) == 2
    with path.open(newline="") as fh:
        assert [r["variant"] for r in csv.DictReader(fh)] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.csv"]  # no temporary file left


def test_peers_csv_and_plot_keep_modes(tmp_path, umask_022):
    peers = _load("peers")
    rows = [
        {"model": "x", "atoms_per_cell": 5, "ms_per_crystal": 1.0},
        {"model": "x", "atoms_per_cell": 10, "ms_per_crystal": 2.0},
    ]
    csv_path, png_path = tmp_path / "peers.csv", tmp_path / "peers.png"
    peers._write_csv(csv_path, rows)
    peers._plot(rows, png_path)
    assert _mode(csv_path) == _mode(png_path) == 0o644
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_path.chmod(0o600)
    png_path.chmod(0o640)
    peers._write_csv(csv_path, rows)
    peers._plot(rows, png_path)
    assert (_mode(csv_path), _mode(png_path)) == (0o600, 0o640)
