"""Smoke test of ``benchmarks/attention.py``: its per-crystal baseline is correct and a tiny run writes a CSV."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from sagnn_lightning.kernels import varlen_attention_reference

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT / "../shared/data"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "benchmarks" / "attention.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_per_crystal_loop_matches_reference(bench) -> None:
    lengths = [1, 4, 7]
    bounds = [0, 1, 5, 12]
    q, k, v = (torch.randn(12, 2, 8, dtype=torch.float64) for _ in range(3))
    got = bench.per_crystal_loop(q, k, v, bounds, 1 / math.sqrt(8))
    torch.testing.assert_close(got, varlen_attention_reference(q, k, v, torch.tensor(bounds, dtype=torch.int32)))
    assert got.shape == (sum(lengths), 2, 8)


def test_tiny_run_writes_csv(bench, tmp_path: Path) -> None:
    if not (SHARED_DATA / "matbench").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA.resolve()} (needs ../shared/data beside the repo)")
    out = tmp_path / "attention.csv"
    bench.main(
        [
            "--data-root",
            str(SHARED_DATA),
            "--device",
            "cpu",
            "--batch-sizes",
            "8",
            "--distributions",
            "matbench_phonons",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--csv",
            str(out),
        ]
    )
    rows = list(csv.DictReader(out.open()))
    assert {r["method"] for r in rows} == {"padded", "loop"}
    assert all(float(r["fwd_bwd_ms"]) > 0 and int(r["batch_size"]) == 8 for r in rows)
