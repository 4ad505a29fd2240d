"""Smoke test of ``benchmarks/peers.py``: a peer whose package is missing is recorded in the CSV, not fatal."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sagnn_lightning" / "data" / "samples" / "mp_abx3_perovskites.csv.gz"


@pytest.fixture()
def peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_missing_peer_is_recorded_not_fatal(peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def matgl_missing():
        raise ModuleNotFoundError("No module named 'matgl'")

    monkeypatch.setattr(
        peers,
        "make_models",
        lambda: {
            "sagnn_no_mhsa": lambda: peers.SAGNN(
                attention="none", hidden_dim=8, dense_hidden=8, conv_hidden=[8], num_blocks=1, readout_hidden=[8]
            ),
            "matgl_megnet": matgl_missing,
        },
    )
    threads = torch.get_num_threads()
    try:
        peers.main(
            [
                "--data",
                str(SAMPLE),
                "--batch-size",
                "4",
                "--num-batches",
                "1",
                "--rounds",
                "1",
                "--threads",
                "1",
                "--skip-memory",
                "--skip-scaling",
                "--out",
                str(tmp_path),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "peers_speed.csv").open())}
    assert rows["sagnn_no_mhsa"]["status"] == "ok" and float(rows["sagnn_no_mhsa"]["crystals_per_s"]) > 0
    assert rows["matgl_megnet"]["status"] == "unavailable: ModuleNotFoundError: No module named 'matgl'"
    assert rows["matgl_megnet"]["crystals_per_s"] == ""
    printed = capsys.readouterr().out
    assert "matgl_megnet: unavailable" in printed and "vs sagnn_no_mhsa" in printed


def test_cuda_device_without_cuda_is_a_usage_error(peers, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exc:
        peers.main(["--device", "cuda", "--data", str(SAMPLE), "--out", str(tmp_path)])
    assert exc.value.code == 2
