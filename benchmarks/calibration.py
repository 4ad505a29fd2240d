"""Calibration of predictions with error bars, as the literature reports it, on any predictions CSV with targets.

For each CSV (e.g. the runner's ``<out>/uncertainty/<task>_fold_<k>.csv``, or ``predict --ckpt <ensemble>``'s
output joined to targets with ``--targets``) it prints, and with ``--out PREFIX`` writes to ``PREFIX_metrics.csv``:
MAE (and, with ``member_<j>`` columns, the members' mean MAE and the ensemble's gain over it), RMSE, Gaussian NLL,
the mean squared z-score (≈ 1 when calibrated; Pernot 2024), the miscalibration area,
Spearman's ρ(|error|, σ), and the coverage of the 68 % and 95 % intervals (Gaussian ``±σ``/``±1.96σ``, or the
CSV's ``lower_95``/``upper_95`` for the 95 % one when present), for each σ column given (``--std-columns``,
default ``std_raw`` and ``std`` when present), per file and pooled over all files. ``--calibrate-on`` fits the
recalibration (variance scaling and conformal) on other rows (held out of training) and reports it too.

Two plots (``PREFIX_calibration.png``, ``PREFIX_coverage.png``): the error-based calibration plot (RMSE against
the root mean variance in equal-count bins of σ; Rasmussen et al. 2023) and the observed coverage of the central
Gaussian intervals against their nominal level.

    python benchmarks/calibration.py runs/ens/uncertainty/matbench_jdft2d_fold_*.csv --out benchmarks/results/calibration_jdft2d
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.uncertainty import binned_error_calibration, coverage_curve, fit_calibration, uncertainty_metrics


def read_predictions(
    path: Path, targets: Path | None, id_column: str, target_column: str, prediction_column: str
) -> pd.DataFrame:
    """The CSV with ``target`` and ``prediction`` columns (targets joined by id from ``targets`` when given);
    rows without a finite target or prediction are dropped (and counted)."""
    frame = pd.read_csv(path)
    if targets is not None:
        truth = pd.read_csv(targets)[[id_column, target_column]].rename(columns={id_column: "id"})
        frame = frame.merge(truth, on="id", how="left")
    frame = frame.rename(columns={target_column: "target", prediction_column: "prediction"})
    missing = [c for c in ("target", "prediction") if c not in frame]
    if missing:
        raise SystemExit(
            f"error: {path} has no {missing} column (give --target-column / --targets / --prediction-column)"
        )
    keep = np.isfinite(frame["target"]) & np.isfinite(frame["prediction"])
    if not keep.all():
        print(f"{path}: {int((~keep).sum())} rows without a finite target or prediction left out", file=sys.stderr)
    return frame[keep].reset_index(drop=True)


def member_scores(frame: pd.DataFrame) -> dict[str, float]:
    """With ``member_<j>`` columns: the members' mean MAE and the ensemble's gain over it (``1 − MAE / that``)."""
    members = [c for c in frame if c.startswith("member_")]
    if not members:
        return {}
    mean_mae = float(np.mean([np.mean(np.abs(frame[c] - frame["target"])) for c in members]))
    mae = float(np.mean(np.abs(frame["prediction"] - frame["target"])))
    return {"members": float(len(members)), "members_mean_mae": mean_mae, "ensemble_gain": 1.0 - mae / mean_mae}


def metrics_rows(name: str, frame: pd.DataFrame, std_columns: list[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for column in std_columns:
        if column not in frame:
            continue
        half = None
        if column == "std" and {"lower_95", "upper_95"} <= set(frame) and np.isfinite(frame["upper_95"]).all():
            half = {"95": ((frame["upper_95"] - frame["lower_95"]) / 2).to_numpy()}
        elif f"{column}_half95" in frame:  # a refit's conformal interval
            half = {"95": frame[f"{column}_half95"].to_numpy()}
        values = uncertainty_metrics(frame["target"], frame["prediction"], frame[column], half_widths=half)
        values |= member_scores(frame)
        rows.append({"file": name, "sigma": column, **{k: round(v, 6) for k, v in values.items()}})
    return rows


def plot(frames: dict[str, pd.DataFrame], column: str, prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = pd.concat(frames.values(), ignore_index=True)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, frame in {**frames, "pooled": pooled}.items():
        curve = binned_error_calibration(frame["target"], frame["prediction"], frame[column], bins=8)
        style = {"color": "black", "lw": 2} if name == "pooled" else {"alpha": 0.45, "lw": 1}
        ax.plot(curve["rmv"], curve["rmse"], "o-", ms=3, label=name if name == "pooled" else None, **style)
    top = float(max(ax.get_xlim()[1], ax.get_ylim()[1]))
    ax.plot([0, top], [0, top], "--", color="grey", lw=1, label="calibrated")
    ax.set_xlabel(f"root mean variance ({column}), per bin")
    ax.set_ylabel("RMSE, per bin")
    ax.set_title("error-based calibration (8 equal-count bins of σ)")
    calibration_png = _save(fig, ax, prefix, "calibration")

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, sigma_column in (("raw spread", "std_raw"), ("recalibrated", "std")):
        if sigma_column in pooled:
            expected, observed = coverage_curve(pooled["target"], pooled["prediction"], pooled[sigma_column], 40)
            ax.plot(expected, observed, "-", label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="calibrated")
    ax.set_xlabel("nominal coverage of the central Gaussian interval")
    ax.set_ylabel("observed coverage")
    coverage_png = _save(fig, ax, prefix, "coverage")
    return [calibration_png, coverage_png]


def _save(fig: Any, ax: Any, prefix: Path, kind: str) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}_{kind}.png")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("csv", nargs="+", type=Path, help="predictions CSVs with a target column (or --targets)")
    parser.add_argument("--targets", type=Path, default=None, help="CSV with the targets, joined on --id-column")
    parser.add_argument("--id-column", default="id", help="id column of --targets (default id)")
    parser.add_argument("--target-column", default="target")
    parser.add_argument("--prediction-column", default="prediction")
    parser.add_argument("--std-columns", nargs="+", default=["std_raw", "std"])
    parser.add_argument(
        "--calibrate-on",
        type=Path,
        default=None,
        help="held-out predictions (same columns) to fit the recalibration on; adds a 'recalibrated' σ column",
    )
    parser.add_argument(
        "--refit",
        choices=["scale", "floor"],
        default=None,
        help="refit each CSV's calibration on its sibling <name>_calibration.csv (the runner's held-out rows): "
        "'scale' (σ' = s·σ) or 'floor' (σ'² = s²σ² + f²); adds the column 'refit_<kind>' and prints the fit",
    )
    parser.add_argument("--out", type=Path, default=None, help="prefix of the metrics CSV and the two plots")
    args = parser.parse_args(argv)
    frames = {
        path.name: read_predictions(path, args.targets, args.id_column, args.target_column, args.prediction_column)
        for path in args.csv
    }
    columns = list(args.std_columns)
    if args.calibrate_on is not None:
        held = read_predictions(
            args.calibrate_on, args.targets, args.id_column, args.target_column, args.prediction_column
        )
        base = next(c for c in columns if c in held)
        fitted = fit_calibration(held["target"] - held["prediction"], held[base])
        print(f"recalibration on {fitted.n} rows of {args.calibrate_on.name}: σ x{fitted.scale:.4g} ({base})")
        for frame in frames.values():
            frame["recalibrated"] = fitted.std(frame[base])
        columns.append("recalibrated")
    if args.refit is not None:
        column = f"refit_{args.refit}"
        for path in args.csv:
            sibling = path.with_name(path.stem + "_calibration.csv")
            held = read_predictions(sibling, args.targets, args.id_column, args.target_column, args.prediction_column)
            fitted = fit_calibration(held["target"] - held["prediction"], held["std_raw"], floor=args.refit == "floor")
            frames[path.name][column] = fitted.std(frames[path.name]["std_raw"])
            frames[path.name][f"{column}_half95"] = fitted.half_widths(frames[path.name]["std_raw"])["95"]
            print(
                f"{path.name}: refit on {fitted.n} rows of {sibling.name}: σ x{fitted.scale:.4g}, floor {fitted.floor:.4g}"
            )
        columns.append(column)
    rows = [row for name, frame in frames.items() for row in metrics_rows(name, frame, columns)]
    if len(frames) > 1:
        rows += metrics_rows("pooled", pd.concat(frames.values(), ignore_index=True), columns)
    if not rows:
        raise SystemExit(f"error: none of the σ columns {columns} is in the CSVs")
    print(pd.DataFrame(rows).to_string(index=False))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        metrics = write_csv_rows(args.out.with_name(args.out.name + "_metrics.csv"), rows)
        sigma = (
            f"refit_{args.refit}"
            if args.refit is not None
            else "std"
            if all("std" in f for f in frames.values())
            else next(c for c in columns if c in next(iter(frames.values())))
        )
        pngs = plot(frames, sigma, args.out)
        print("wrote " + ", ".join(str(p) for p in [metrics, *pngs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
