"""``benchmarks/calibration.py`` on CSVs with known calibration: the metrics, the recalibration and the plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.scripts import load_script


def _csv(path, seed, scale, n=3000, with_target=True):
    rng = np.random.default_rng(seed)
    std_raw = rng.uniform(0.2, 2.0, n)
    target = rng.normal(0.0, scale * std_raw)
    frame = pd.DataFrame({"id": [f"x{seed}-{k}" for k in range(n)], "prediction": 0.0, "std_raw": std_raw})
    frame["std"] = scale * std_raw
    frame["member_0"], frame["member_1"] = 0.1, -0.3  # members' mean MAE > the mean's (0.0) MAE
    if with_target:
        frame["target"] = target
    frame.to_csv(path, index=False)
    return target


def test_metrics_recalibration_and_plots(tmp_path, capsys):
    script = load_script("benchmarks/calibration.py")
    for k in range(2):
        _csv(tmp_path / f"fold_{k}.csv", k, scale=2.5)
    _csv(tmp_path / "held_out.csv", 9, scale=2.5)
    prefix = tmp_path / "out" / "cal"
    argv = [
        str(tmp_path / "fold_0.csv"),
        str(tmp_path / "fold_1.csv"),
        "--calibrate-on",
        str(tmp_path / "held_out.csv"),
    ]
    assert script.main([*argv, "--out", str(prefix)]) == 0
    assert "σ x2.5" in capsys.readouterr().out
    rows = pd.read_csv(prefix.parent / "cal_metrics.csv")
    pooled = rows[rows["file"] == "pooled"].set_index("sigma")
    assert pooled.loc["std_raw", "mean_z2"] == pytest.approx(2.5**2, rel=0.06)  # raw σ 2.5x too small
    assert pooled.loc["std", "mean_z2"] == pytest.approx(1.0, rel=0.06)
    assert pooled.loc["recalibrated", "mean_z2"] == pytest.approx(1.0, rel=0.08)
    assert pooled.loc["std", "coverage_95"] == pytest.approx(0.95, abs=0.015)
    assert pooled.loc["std_raw", "miscalibration_area"] > 0.2 > 0.02 > pooled.loc["std", "miscalibration_area"]
    members_mae = np.mean(
        [np.mean(np.abs(pd.read_csv(tmp_path / f"fold_{k}.csv")["target"] - v)) for k in range(2) for v in (0.1, -0.3)]
    )
    assert pooled.loc["std", "members_mean_mae"] == pytest.approx(members_mae, rel=1e-4)
    assert 0 < pooled.loc["std", "ensemble_gain"] < 0.2
    assert (prefix.parent / "cal_calibration.png").stat().st_size > 10_000
    assert (prefix.parent / "cal_coverage.png").stat().st_size > 10_000


def test_targets_joined_from_another_file(tmp_path, capsys):
    script = load_script("benchmarks/calibration.py")
    target = _csv(tmp_path / "preds.csv", 3, scale=1.0, n=500, with_target=False)
    pd.DataFrame({"material_id": [f"x3-{k}" for k in range(500)], "band_gap": target}).to_csv(tmp_path / "t.csv")
    argv = [str(tmp_path / "preds.csv"), "--targets", str(tmp_path / "t.csv"), "--id-column", "material_id"]
    assert script.main([*argv, "--target-column", "band_gap"]) == 0
    assert "mean_z2" in capsys.readouterr().out
