"""Two processes that need the same data at once (DDP ranks instantiating the CLI, parallel runs sharing a
cache folder): the data is downloaded, parsed and graphed once; the other process waits and reads the result.

Each test starts two processes behind a barrier; the work being counted sleeps a moment while it holds its
lock, so the second process surely arrives while the first is still working.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

import sagnn_lightning.data.matbench as mb
from sagnn_lightning.data.cache import load_or_build_graphs
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.data.graph import GraphSettings
from sagnn_lightning.files import atomic_write
from tests.data.matbench_files import write_matbench_file

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ROOT / "tests/fixtures/inputs"
FIXTURE = ROOT / "tests/fixtures/graph/structures.json.gz"
HOLD_S = 0.5  # how long the counted work lasts (the window in which the other process arrives)


def _context() -> mp.context.BaseContext:
    # fork: the children start at once with this module's imports (pymatgen, torch, ...); spawn elsewhere
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _mark(marker: str) -> None:
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(HOLD_S)


def _marks(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def _run_two(target, *args) -> list:
    """Run ``target(barrier, queue, *args)`` in two processes at once; their results (in no order)."""
    ctx = _context()
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=target, args=(barrier, queue, *args)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    errors = [r for r in results if isinstance(r, str)]
    assert not errors, errors
    return results


# --------------------------------------------------------------------------------------------- statistics
def _statistics_worker(barrier, queue, cache_dir: str, marker: str) -> None:
    try:
        real = CrystalDataModule._read_table

        def counted(self):
            _mark(marker)
            return real(self)

        CrystalDataModule._read_table = counted
        barrier.wait()
        dm = CrystalDataModule(
            str(INPUTS / "mp_abx3_8.csv"),
            target_columns=["band_gap", "formation_energy_per_atom"],
            cache_dir=cache_dir,
            val_fraction=0.25,
            test_fraction=0.25,
            progress=False,
        )
        # what LightningCLI links into the model at instantiation, before any prepare_data
        queue.put((dm.target_mean, dm.target_std, dm.num_targets, dm.split_ids))
    except BaseException as err:  # reported to the test instead of a silent exit code
        queue.put(f"{type(err).__name__}: {err}")


def test_two_processes_read_the_rows_once_and_agree_on_statistics(tmp_path) -> None:
    marker = tmp_path / "parses.txt"
    first, second = _run_two(_statistics_worker, str(tmp_path / "cache"), str(marker))
    assert len(_marks(marker)) == 1, "exactly one process parses the data file; the other reads the row index"
    assert first == second
    mean, std, num_targets, split = first
    assert num_targets == 2 and len(mean) == len(std) == 2 and sum(map(len, split.values())) == 8
    assert len(list((tmp_path / "cache" / "rows").glob("*.npz"))) == 1


# --------------------------------------------------------------------------------------------- graph cache
def _graphs_worker(barrier, queue, cache_dir: str, marker: str) -> None:
    try:
        with gzip.open(FIXTURE, "rt") as f:
            d = json.load(f)
        ids, dicts = d["ids"][:6], d["structures"][:6]

        def structures():  # called only by a process that builds
            _mark(marker)
            return dicts

        barrier.wait()
        ds = load_or_build_graphs(
            cache_dir, "fp-two", ids, structures, np.zeros((6, 1)), GraphSettings(cutoff=4.0), progress=False
        )
        queue.put((str(ds.path), ds.header["_sha256"], ds.sample_ids))
    except BaseException as err:
        queue.put(f"{type(err).__name__}: {err}")


def test_two_processes_build_the_graph_cache_once(tmp_path) -> None:
    marker = tmp_path / "builds.txt"
    first, second = _run_two(_graphs_worker, str(tmp_path / "cache"), str(marker))
    assert len(_marks(marker)) == 1, "exactly one process builds; the other waits and opens the same file"
    assert first == second  # same path, same file (header hash), same ids


# --------------------------------------------------------------------------------------------- download
def _download_worker(barrier, queue, cache_dir: str, source: str, downloads: str, parses: str) -> None:
    try:
        import shutil

        def fake_download(url, path, sha256, *, progress):  # the network part only, in this test process
            _mark(downloads)
            with atomic_write(path, "wb") as fh, open(source, "rb") as src:
                shutil.copyfileobj(src, fh)

        real_read = mb.read_matbench_json

        def counted_read(*args, **kwargs):
            _mark(parses)
            return real_read(*args, **kwargs)

        mb._download = fake_download
        mb.read_matbench_json = counted_read
        barrier.wait()
        dm = mb.MatbenchDataModule("jdft2d", cache_dir=cache_dir, progress=False)
        assert dm.data_file is None  # not on disk yet: downloaded when first needed
        table = dm.table
        queue.put((table.ids, table.targets[:, 0].tolist(), str(table.source)))
    except BaseException as err:
        queue.put(f"{type(err).__name__}: {err}")


def test_two_processes_download_and_parse_once(tmp_path, monkeypatch) -> None:
    home = tmp_path / "matminer_home"
    home.mkdir()
    monkeypatch.setenv("MATMINER_DATA", str(home))  # inherited by the children
    source = tmp_path / "source.json.gz"
    write_matbench_file(source)
    downloads, parses = tmp_path / "downloads.txt", tmp_path / "parses.txt"
    first, second = _run_two(_download_worker, str(tmp_path / "cache"), str(source), str(downloads), str(parses))
    assert len(_marks(downloads)) == 1, "one download; the other process waits for it"
    assert len(_marks(parses)) == 1, "one parse; the other process reads the row index"
    assert first == second
    assert first[0] == [f"mb-jdft2d-{i:03d}" for i in range(1, 9)]
    assert first[2] == str(home / "matbench_jdft2d.json.gz")
    assert (home / "matbench_jdft2d.json.gz").read_bytes() == source.read_bytes()
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]
