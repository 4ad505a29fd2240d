"""Peak memory and wall time of ``python -m sagnn_lightning predict`` against the number of input rows.

Inputs are generated from the perovskites bundled with the package (1,784 Materials Project ABX3 crystals, 5 atoms
each), repeated with unique ids up to each size, as one CSV (``material_id,cif``). Each size is predicted by the
shipped ``matbench_perovskites`` model in a fresh process, 1 torch thread; the peak RSS is that process's own
(``os.wait4``'s ``ru_maxrss``). ``--baseline-tree DIR`` runs the same command with another checkout of the package
first on ``PYTHONPATH`` (e.g. the commit before streaming), in the same run, for the ratio.

    python benchmarks/predict_memory.py --rows 10000 100000 1000000 --out benchmarks/results/predict_memory.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from sagnn_lightning.data.samples import sample_path
from sagnn_lightning.files import write_csv_rows

REPO = Path(__file__).resolve().parents[1]


def write_inputs(path: Path, rows: int) -> Path:
    """``rows`` crystals: the bundled sample repeated, ids ``<material_id>-<copy>``; written as it goes."""
    sample = pd.read_csv(sample_path("mp_abx3_perovskites"))[["material_id", "cif"]]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["material_id", "cif"])
        done, copy = 0, 0
        while done < rows:
            part = sample.iloc[: rows - done]
            writer.writerows((f"{m}-{copy}", c) for m, c in zip(part["material_id"], part["cif"]))
            done += len(part)
            copy += 1
    return path


def measure(
    inputs: Path, output: Path, tree: Path | None, model: str = "matbench_perovskites"
) -> tuple[float, float, int]:
    """``(peak RSS MB, wall s, predicted rows)`` of one ``predict --model <model>`` process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [sys.executable, "-m", "sagnn_lightning", "predict", "--model", model]
    argv += ["--input", str(inputs), "--output", str(output), "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tree or REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"predict failed on {inputs} ({status}):\n{stderr[-3000:]}")
    with open(output, encoding="utf-8") as fh:
        rows = sum(1 for _ in fh) - 1
    return usage.ru_maxrss / 1024, wall, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--model", default="matbench_perovskites", help="shipped model name (e.g. NAME/member_0)")
    parser.add_argument("--baseline-tree", type=Path, default=None, help="another checkout to compare against")
    parser.add_argument("--baseline-max-rows", type=int, default=100_000, help="largest size given to the baseline")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict_memory.csv")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="sagnn-predict-memory-") as tmp:
        for rows in args.rows:
            inputs = write_inputs(Path(tmp) / f"inputs_{rows}.csv", rows)
            trees = [("streaming", None)]
            if args.baseline_tree is not None and rows <= args.baseline_max_rows:
                trees.insert(0, ("baseline", args.baseline_tree))
            for name, tree in trees:
                rss, wall, done = measure(inputs, Path(tmp) / f"out_{name}_{rows}.csv", tree, args.model)
                results.append(
                    {
                        "version": name,
                        "rows": rows,
                        "predicted": done,
                        "peak_rss_mb": round(rss, 1),
                        "wall_s": round(wall, 1),
                        "rows_per_s": round(done / wall, 1),
                    }
                )
                print(
                    f"{name:>9} {rows:>9,} rows: peak RSS {rss:7.1f} MB, {wall:7.1f} s ({done / wall:,.0f} rows/s)",
                    flush=True,
                )
            inputs.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_rows(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
