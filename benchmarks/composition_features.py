"""Element features for the composition model, compared on validation data only.

Trains ``recipes/matbench_<task>.py`` on official fold ``--fold`` (validation carved from the fold's training rows,
the test rows never used) once per element-feature source (``matscholar``, ``megnet``, ``learned``) and records
the best validation score of each run::

    python benchmarks/composition_features.py --tasks matbench_expt_gap matbench_steels --max-epochs 100 \
        --data-home ../shared/data/matbench --jobs 2 --out benchmarks/results/composition_features.csv

Each run is the recipe exactly as a user types it, plus ``--model.model.init_args.element_features=<source>``;
``--jobs`` runs go at once, one thread each. Finished rows are kept in the CSV (written atomically), so a rerun
only trains what is missing.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("matscholar", "megnet", "learned")
COLUMNS = ("task", "fold", "element_features", "max_epochs", "best_val_metric", "metric", "seconds")
_BEST = re.compile(r"best (val/\w+)=([-+0-9.eE]+|nan)")


def run_one(task: str, fold: int, source: str, max_epochs: int, data_home: str, work: Path) -> dict:
    """Train one recipe run; returns its CSV row (the best validation metric parsed from the run summary line)."""
    short = task.removeprefix("matbench_")
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / f"matbench_{short}.py"),
        "fit",
        f"--data.data_home={data_home}",
        f"--data.fold={fold}",
        "--data.progress=false",
        f"--model.model.init_args.element_features={source}",
        f"--trainer.max_epochs={max_epochs}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={work / f'{short}_fold{fold}_{source}'}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = _BEST.findall(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"{task} fold {fold} {source}: exit {proc.returncode}\n{tail}")
    metric, value = found[-1]
    return {
        "task": task,
        "fold": fold,
        "element_features": source,
        "max_epochs": max_epochs,
        "best_val_metric": float(value),
        "metric": metric,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["matbench_expt_gap", "matbench_steels"])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--data-home", default=str(ROOT.parent / "shared" / "data" / "matbench"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work-dir", default="runs/composition_features")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "composition_features.csv"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows: list[dict] = []
    if out.is_file():
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
    done = {(r["task"], int(r["fold"]), r["element_features"], int(r["max_epochs"])) for r in rows}
    todo = [
        (t, args.fold, s, args.max_epochs)
        for t in args.tasks
        for s in args.sources
        if (t, args.fold, s, args.max_epochs) not in done
    ]

    def save() -> None:
        from sagnn_lightning.files import atomic_write

        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, t, f, s, e, args.data_home, Path(args.work_dir)) for t, f, s, e in todo]
        for fut in futures:
            row = fut.result()
            rows.append(row)
            save()
            print(
                f"{row['task']} fold {row['fold']} {row['element_features']}: best {row['metric']}="
                f"{row['best_val_metric']:.4f} ({row['seconds']} s)",
                flush=True,
            )
    for task in args.tasks:
        mine = sorted(
            (r for r in rows if r["task"] == task and int(r["max_epochs"]) == args.max_epochs),
            key=lambda r: float(r["best_val_metric"]),
        )
        print(task, ", ".join(f"{r['element_features']} {float(r['best_val_metric']):.4f}" for r in mine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
