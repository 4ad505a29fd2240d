"""Compare training configurations by inner cross-validation, from leaderboard-runner outputs.

Each configuration was trained K times on one official matbench fold by
``benchmarks/matbench_v0.1_sagnn/run.py --folds F ... -- --data.val_folds=K --data.val_fold=k --out
<study>/<config>/inner_<k>`` (or once with ``run.py --val-folds K``, whose members are the ``inner_<k>`` run dirs).
This script reads what those runs wrote — ``history.csv`` (validation MAE per epoch) and ``results.json.gz``
(test predictions, scored by matbench) — and writes:

* ``<prefix>_curves.csv``: ``config, inner_fold, epoch, val_mae`` (every validated epoch);
* ``<prefix>_summary.csv``: per config and inner fold the best epoch, best validation MAE and the test MAE of
  that member, plus one ``ensemble`` row per config (the mean of its K members' test predictions) and one
  ``mean`` row (members averaged);
* ``<prefix>.png``: validation MAE against epoch (mean over inner folds, band = min..max), and test MAE of
  each member against the ensemble.

The choice between configurations is made on the inner-CV validation MAE (every training row validates once);
the test MAE is reported beside it, never used to choose.

    python benchmarks/inner_cv_study.py --study /work/runs11/jdft2d_study --configs defaults kgcnn \\
        --task matbench_jdft2d --fold 0 --data-home ../shared/data/matbench \\
        --out benchmarks/results/inner_cv_jdft2d_fold0
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sagnn_lightning.files import atomic_write, write_csv_rows


def member_dirs(study: Path, config: str) -> list[Path]:
    """The ``inner_<k>`` submission folders of ``config``, in ``k`` order."""
    found = sorted((study / config).glob("inner_*"), key=lambda p: int(p.name.split("_")[1]))
    return [p for p in found if (p / "results.json.gz").is_file()]


def read_history(path: Path) -> list[tuple[int, float]]:
    with open(path, newline="") as fh:
        return [(int(r["epoch"]), float(r["val_mae"])) for r in csv.DictReader(fh)]


def read_member(folder: Path, task: str, fold: int) -> dict:
    """Test predictions, targets-free: ``{"ids", "predictions", "mae", "best_epoch", "best_val", "epochs"}``."""
    doc = json.loads((folder / "results.json.gz").read_text())  # matbench writes plain JSON whatever the name
    result = doc["tasks"][task]["results"][f"fold_{fold}"]
    params = result["parameters"]
    ids = list(result["data"])
    return {
        "ids": ids,
        "predictions": np.array([result["data"][i] for i in ids], dtype=float),
        "mae": float(result["scores"]["mae"]),
        "best_epoch": int(params["best_epoch"]),
        "best_val": float(params["best_val_mae"]),
        "epochs": int(params["epochs_run"]),
    }


def test_targets(task: str, fold: int, ids: Sequence[str], data_home: Path | None) -> np.ndarray:
    """The targets of ``ids`` (scoring only), read by ``MatbenchDataModule`` from the task's data file (no
    download: ``data_home`` or ``$MATMINER_DATA`` must hold it)."""
    from sagnn_lightning.data.matbench import MatbenchDataModule

    table = MatbenchDataModule(
        task, fold=fold, data_home=str(data_home) if data_home else None, download=False, progress=False
    ).table
    row = {sid: r for r, sid in enumerate(table.ids)}
    return np.asarray(table.targets[[row[i] for i in ids]], dtype=float).reshape(-1)


def _runner_ensemble(folder: Path, task: str, fold: int) -> tuple[list[dict], list[dict]] | None:
    """``(curves, member rows + ensemble row)`` of a ``run.py --val-folds K`` submission, else ``None``."""
    path = folder / "results.json.gz"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())["tasks"][task]["results"][f"fold_{fold}"]
    params = result["parameters"]
    if "val_folds" not in params:
        return None
    curves: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for k, (member, mae) in enumerate(zip(params["members"], params["member_test_mae"])):
        history = folder / "work" / task / f"fold_{fold}" / f"inner_{k}" / "history.csv"
        curves += [{"inner_fold": k, "epoch": e, "val_mae": v} for e, v in read_history(history)]
        rows.append(
            {
                "inner_fold": k,
                "best_epoch": int(member["best_epoch"]),
                "epochs": int(member["epochs_run"]),
                "best_val_mae": float(member["best_val_mae"]),
                "test_mae": float(mae),
            }
        )
    rows.append(
        {
            "inner_fold": f"ensemble of {len(rows)}",
            "best_epoch": "",
            "epochs": rows[0]["epochs"],
            "best_val_mae": "",
            "test_mae": float(result["scores"]["mae"]),
        }
    )
    return curves, rows


def _separate_members(folder: Path, task: str, fold: int, data_home: Path | None) -> tuple[list[dict], list[dict]]:
    """The same from K separate submissions ``<folder>/inner_<k>/`` (``-- --data.val_folds=K --data.val_fold=k``);
    the ensemble's MAE is scored here against the task's targets."""
    curves, rows, members = [], [], []
    for sub in member_dirs(folder.parent, folder.name):
        k = int(sub.name.split("_")[1])
        curves += [
            {"inner_fold": k, "epoch": e, "val_mae": v}
            for e, v in read_history(sub / "work" / task / f"fold_{fold}" / "history.csv")
        ]
        member = read_member(sub, task, fold)
        members.append(member)
        rows.append(
            {
                "inner_fold": k,
                "best_epoch": member["best_epoch"],
                "epochs": member["epochs"],
                "best_val_mae": member["best_val"],
                "test_mae": member["mae"],
            }
        )
    if members:
        ids = members[0]["ids"]
        if any(m["ids"] != ids for m in members):
            raise ValueError(f"{folder}: members predicted different test ids")
        ensemble = np.mean([m["predictions"] for m in members], axis=0)
        truth = test_targets(task, fold, ids, data_home)
        rows.append(
            {
                "inner_fold": f"ensemble of {len(members)}",
                "best_epoch": "",
                "epochs": members[0]["epochs"],
                "best_val_mae": "",
                "test_mae": float(np.mean(np.abs(ensemble - truth))),
            }
        )
    return curves, rows


def study(
    study_dir: Path, configs: Sequence[str], task: str, fold: int, data_home: Path | None = None
) -> tuple[list[dict], list[dict]]:
    """Curves and summary rows of every configuration (a ``run.py --val-folds`` submission in
    ``<study>/<config>/``, or K separate ones in ``<study>/<config>/inner_<k>/``)."""
    curves, summary = [], []
    for config in configs:
        folder = study_dir / config
        found = _runner_ensemble(folder, task, fold) or _separate_members(folder, task, fold, data_home)
        config_curves, rows = found
        members = [r for r in rows if isinstance(r["inner_fold"], int)]
        if not members:
            continue
        curves += [{"config": config, **c} for c in config_curves]
        summary += [{"config": config, **r} for r in members]
        summary.append(
            {
                "config": config,
                "inner_fold": "mean",
                "best_epoch": float(np.mean([r["best_epoch"] for r in members])),
                "epochs": members[0]["epochs"],
                "best_val_mae": float(np.mean([r["best_val_mae"] for r in members])),
                "test_mae": float(np.mean([r["test_mae"] for r in members])),
            }
        )
        summary += [{"config": config, **r} for r in rows if not isinstance(r["inner_fold"], int)]
    return curves, summary


def plot(curves: list[dict], summary: list[dict], path: Path, title: str, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    configs = list(dict.fromkeys(r["config"] for r in curves))
    for config in configs:
        rows = [r for r in curves if r["config"] == config]
        folds = sorted({r["inner_fold"] for r in rows})
        epochs = sorted(
            {
                r["epoch"]
                for r in rows
                if all(any(q["epoch"] == r["epoch"] and q["inner_fold"] == k for q in rows) for k in folds)
            }
        )
        table = {(r["inner_fold"], r["epoch"]): r["val_mae"] for r in rows}
        values = np.array([[table[(k, e)] for e in epochs] for k in folds])
        (line,) = ax1.plot(epochs, values.mean(axis=0), label=f"{config} (mean of {len(folds)} inner folds)")
        ax1.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"validation MAE ({unit})")
    ax1.set_title("inner-fold validation")
    ax1.legend(fontsize=8)
    for i, config in enumerate(configs):
        members = [r for r in summary if r["config"] == config and isinstance(r["inner_fold"], int)]
        ens = [r for r in summary if r["config"] == config and str(r["inner_fold"]).startswith("ensemble")]
        ax2.scatter(
            [i] * len(members), [r["test_mae"] for r in members], color="gray", label="member" if i == 0 else None
        )
        if ens:
            ax2.scatter([i], [ens[0]["test_mae"]], color="red", marker="*", s=150, label="ensemble" if i == 0 else None)
    ax2.set_xticks(range(len(configs)), configs)
    ax2.set_ylabel(f"test MAE ({unit})")
    ax2.set_title("outer test (reported, not used to choose)")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="folder with <config>/inner_<k>/ submissions")
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--task", default="matbench_jdft2d")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--unit", default="meV/atom")
    parser.add_argument("--data-home", type=Path, default=None, help="folder with <task>.json.gz (test targets)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix (…_curves.csv, …_summary.csv, .png)")
    args = parser.parse_args(argv)
    curves, summary = study(args.study, args.configs, args.task, args.fold, args.data_home)
    if not curves:
        parser.error(f"no finished inner-fold runs of {args.configs} under {args.study}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_rows(args.out.with_name(args.out.name + "_curves.csv"), curves)
    write_csv_rows(args.out.with_name(args.out.name + "_summary.csv"), summary)
    plot(
        curves,
        summary,
        args.out.with_name(args.out.name + ".png"),
        f"{args.task} fold {args.fold}: inner cross-validation",
        args.unit,
    )
    for row in summary:
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
