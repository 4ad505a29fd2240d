"""Curves and time-to-accuracy of leaderboard-runner submissions (one or more variants).

Reads what ``run.py`` wrote for each variant — ``results.json.gz`` (matbench's scores and each fold's
parameters) and the fold run dirs' ``history.csv`` (validation MAE and training seconds per epoch) — and writes:

* ``<prefix>_history.csv``: ``variant, task, fold, epoch, val_mae, lr, train_seconds, sitting`` (every epoch);
* ``<prefix>_summary.csv``: per variant, task and fold the test score (matbench's: MAE, or for classification
  its ``rocauc`` on rounded predictions, with the ROC-AUC of the probabilities beside it), the best epoch and its
  validation score, seconds per epoch, training seconds, and the first epoch (and training seconds) at which
  validation MAE reached ``--reference`` (e.g. MEGNet's leaderboard MAE);
* ``<prefix>.png``: validation MAE (ROC-AUC for classification) against epoch, one panel per task, one line per
  fold and variant;

and prints the summary as a Markdown table.

    python benchmarks/matbench_v0.1_sagnn/report.py --variant sagnn=results/sagnn --variant no_mhsa=results/no_mhsa \\
        --work-dir sagnn=/path/to/sagnn/work --work-dir no_mhsa=/path/to/no_mhsa/work \\
        --reference matbench_phonons=28.76 --reference matbench_jdft2d=54.17 --out benchmarks/results/five_fold
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sagnn_lightning.files import atomic_write, write_csv_rows


def read_history(path: Path) -> list[dict[str, float | None]]:
    """Rows of one fold's ``history.csv`` (numbers as floats, empty cells as ``None``)."""
    with path.open(newline="") as fh:
        return [
            {
                k: (float(v) if v not in ("", None) else None)
                for k, v in row.items()
                if k in ("epoch", "val_mae", "val_auroc", "lr", "train_seconds", "sitting")
            }
            for row in csv.DictReader(fh)
        ]


def first_reaching(history: Sequence[dict[str, float | None]], level: float | None) -> tuple[int | None, float | None]:
    """``(epoch, training seconds)`` at which validation MAE first went to ``level`` or below (``None``: never)."""
    if level is None:
        return None, None
    for row in history:
        mae, epoch = row.get("val_mae"), row.get("epoch")
        if mae is not None and epoch is not None and mae <= level:
            return int(epoch), row.get("train_seconds")
    return None, None


def collect(
    variants: dict[str, Path], work_dirs: dict[str, Path], references: dict[str, float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(history rows, summary rows)`` over every recorded fold of every variant."""
    history_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for variant, out in variants.items():
        data = json.loads((out / "results.json.gz").read_text())  # matbench's to_file writes plain JSON
        work = work_dirs.get(variant, out / "work")
        for task, task_data in sorted(data["tasks"].items()):
            for fold_key, record in sorted(task_data["results"].items()):
                if "parameters" not in record:  # a fold not recorded yet
                    continue
                fold = int(fold_key.split("_")[1])
                params = record["parameters"]
                history = read_history(work / task / fold_key / "history.csv")
                history_rows += [{"variant": variant, "task": task, "fold": fold, **row} for row in history]
                epoch, seconds = first_reaching(history, references.get(task))
                regression = "mae" in record["scores"]
                metric = "mae" if regression else "rocauc"
                best_val = params.get("best_val_mae" if regression else "best_val_auroc")
                summary.append(
                    {
                        "variant": variant,
                        "task": task,
                        "fold": fold,
                        "metric": metric,
                        "test_score": round(record["scores"][metric], 4),
                        "rocauc_from_probabilities": params.get("rocauc_from_probabilities"),
                        "test_mae": round(record["scores"]["mae"], 3) if regression else None,
                        "epochs_run": params["epochs_run"],
                        "best_epoch": params["best_epoch"],
                        "best_val": round(best_val, 4) if best_val is not None else None,
                        "best_val_mae": round(params["best_val_mae"], 3) if regression else None,
                        "seconds_per_epoch": params["seconds_per_epoch"],
                        "train_seconds": params["train_seconds"],
                        "reference_mae": references.get(task),
                        "first_epoch_at_reference": epoch,
                        "seconds_to_reference": seconds,
                    }
                )
    return history_rows, summary


def plot(history_rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in summary})
    variants = sorted({r["variant"] for r in summary})
    palette = plt.get_cmap("tab10")  # any number of variants (a study compares many)
    colors = {v: palette(i % palette.N) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        regression = next(r["metric"] for r in summary if r["task"] == task) == "mae"
        key = "val_mae" if regression else "val_auroc"
        for variant in variants:
            for fold in sorted({r["fold"] for r in summary if r["task"] == task and r["variant"] == variant}):
                rows = [r for r in history_rows if (r["task"], r["variant"], r["fold"]) == (task, variant, fold)]
                ax.plot(
                    [r["epoch"] for r in rows],
                    [r.get(key) for r in rows],
                    color=colors[variant],
                    lw=0.8,
                    alpha=0.7,
                    label=variant if fold == 0 else None,
                )
        ref = next((r["reference_mae"] for r in summary if r["task"] == task), None)
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=0.8, label=f"reference {ref}")
        values = [r[key] for r in history_rows if r["task"] == task and r.get(key) is not None]
        low = min(values)
        if regression:
            ax.set_ylim(low * 0.9, min(max(values), low * 3))
        else:
            ax.set_ylim(max(0.5, low - 0.02), 1.0)
        label = "validation MAE" if regression else "validation ROC-AUC"
        ax.set(title=task, xlabel="epoch", ylabel=f"{label} (one line per fold)")
        ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def markdown(summary: Sequence[dict[str, Any]]) -> str:
    head = (
        "| variant | task | fold | test score (matbench) | ROC-AUC of probabilities | best epoch | best val | s/epoch "
        "| train s | first epoch ≤ ref (s) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in summary:
        reached = (
            f"{r['first_epoch_at_reference']} ({r['seconds_to_reference']:.0f})"
            if r["first_epoch_at_reference"] is not None
            else ("never" if r["reference_mae"] is not None else "")
        )
        auc = r["rocauc_from_probabilities"]
        lines.append(
            f"| {r['variant']} | {r['task']} | {r['fold']} | {r['metric']} {r['test_score']} | "
            f"{'' if auc is None else round(auc, 4)} | {r['best_epoch']} | {r['best_val']} | "
            f"{r['seconds_per_epoch']} | {r['train_seconds']:.0f} | {reached} |"
        )
    return "\n".join(lines)


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"error: {flag} takes NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=submission folder (run.py --out)")
    parser.add_argument("--work-dir", action="append", default=[], help="NAME=fold run dirs (default <out>/work)")
    parser.add_argument("--reference", action="append", default=[], help="TASK=MAE level for time-to-accuracy")
    parser.add_argument("--out", type=Path, required=True, help="prefix of the CSV and PNG files")
    args = parser.parse_args(argv)
    variants = {k: Path(v) for k, v in _pairs(args.variant, "--variant").items()}
    work_dirs = {k: Path(v) for k, v in _pairs(args.work_dir, "--work-dir").items()}
    references = {k: float(v) for k, v in _pairs(args.reference, "--reference").items()}
    history_rows, summary = collect(variants, work_dirs, references)
    if not summary:
        raise SystemExit("error: no recorded folds in the --variant folders")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_rows(f"{args.out}_history.csv", history_rows)
    write_csv_rows(f"{args.out}_summary.csv", summary)
    plot(history_rows, summary, Path(f"{args.out}.png"))
    print(markdown(summary))


if __name__ == "__main__":
    main()
