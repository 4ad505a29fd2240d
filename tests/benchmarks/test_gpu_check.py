"""``benchmarks/gpu_check.sh`` on a machine without CUDA: valid bash, says so and exits 0 without writing
anything; and when ``nvidia-smi`` lists GPUs that torch cannot use, it writes a summary and exits 1.

(Its GPU steps run only on a CUDA machine; there this test is skipped and the script itself is the check.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
    reason="a CUDA machine: run `bash benchmarks/gpu_check.sh` itself",
)


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "results"), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_bash_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA device on this machine" in result.stdout and "nothing to check" in result.stdout
    assert not (tmp_path / "results").exists()  # nothing written


def test_gpus_that_torch_cannot_use_fail_with_a_summary(tmp_path: Path) -> None:
    """``nvidia-smi`` lists 2 GPUs but torch is a CPU build: a clear message, summary.txt, exit 1, no step run."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\necho 'GPU 1: Fake GPU (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    result = _run(tmp_path, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "torch in" in result.stdout and "sees none" in result.stdout
    summary = (tmp_path / "results" / "summary.txt").read_text()
    assert "GPU 1: Fake GPU" in summary and f"torch: {torch.__version__}" in summary
    assert "overall: FAIL" in summary
    assert not list((tmp_path / "results").glob("*.log"))  # no step ran


def test_train_step_runs_its_benchmark_on_the_cpu(tmp_path: Path) -> None:
    """The ``train`` step's script, as gpu_check calls it but on the CPU and for a few steps: one row per variant
    that builds, with crystals/s and the warm-up."""
    import csv

    root = SCRIPT.parents[1]
    out = tmp_path / "train_speed.csv"
    argv = [
        sys.executable,
        "benchmarks/train_speed.py",
        "--data",
        "sagnn_lightning/data/samples/mp_abx3_perovskites.csv.gz",
    ]
    argv += ["--target", "band_gap", "--device", "cpu", "--variants", "sagnn_eager", "cgcnn_pyg"]
    argv += ["--warmup", "2", "--steps", "3", "--batch-size", "16", "--cache-dir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["sagnn_eager", "cgcnn_pyg"]
    assert all(float(r["crystals_per_s"]) > 0 and int(r["steps"]) == 3 for r in rows)
    assert "benchmarks/train_speed.py" in SCRIPT.read_text()
