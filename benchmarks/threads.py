"""One training run with 2 threads against two runs with 1 thread each, on the same 2 cores (issue 11, part 4).

Both arms run ``benchmarks/epoch_time.py --variants eager`` (forward + L1 + backward + Adam steps on real
phonons batches, the recipes' model from ``--model-config``), taking turns ``--repeats`` times in this run:

- ``one_run_2_threads``: one process with ``OMP_NUM_THREADS=2``;
- ``two_runs_1_thread``: two processes with ``OMP_NUM_THREADS=1`` at the same time (their crystals/s added up).

It prints the median total crystals/s of each arm and their ratio, and writes a CSV. Run it on an idle machine:

    python benchmarks/threads.py --out benchmarks/results/threads_cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sagnn_lightning.files import write_csv_rows

HERE = Path(__file__).resolve().parent


def launch(threads: int, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        str(HERE / "epoch_time.py"),
        "--variants",
        "eager",
        "--data",
        args.data,
        "--batches",
        str(args.batches),
        "--rounds",
        str(args.rounds),
        "--warmup-steps",
        str(args.warmup_steps),
        "--model-config",
        args.model_config,
        "--out",
        str(out),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def crystals_per_s(path: Path) -> float:
    with path.open(newline="") as fh:
        return float(next(csv.DictReader(fh))["crystals_per_s"])


def run_arm(processes: int, threads: int, args: argparse.Namespace, tmp: Path, tag: str) -> float:
    outs = [tmp / f"{tag}_{k}.csv" for k in range(processes)]
    procs = [launch(threads, args, out) for out in outs]
    for proc in procs:
        if proc.wait(timeout=args.timeout) != 0:
            raise SystemExit(f"error: epoch_time.py exited with status {proc.returncode} ({tag})")
    return sum(crystals_per_s(out) for out in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/matbench/matbench_phonons.json.gz")
    parser.add_argument("--model-config", default=str(HERE.parent / "recipes" / "configs" / "sagnn.yaml"))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="turns of each arm, interleaved")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default="benchmarks/results/threads_cpu.csv")
    args = parser.parse_args()

    totals: dict[str, list[float]] = {"one_run_2_threads": [], "two_runs_1_thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            totals["one_run_2_threads"].append(run_arm(1, 2, args, Path(tmp), f"a{repeat}"))
            totals["two_runs_1_thread"].append(run_arm(2, 1, args, Path(tmp), f"b{repeat}"))
            print({k: round(v[-1], 1) for k, v in totals.items()}, flush=True)
    one, two = (statistics.median(totals[k]) for k in totals)
    print(
        f"one run, 2 threads: {one:.1f} crystals/s; two runs, 1 thread each: {two:.1f} crystals/s in total; "
        f"ratio {two / one:.2f}"
    )
    rows = [
        {
            "arm": arm,
            "total_crystals_per_s": round(statistics.median(v), 1),
            "repeats": ";".join(f"{x:.1f}" for x in v),
            "cpus": os.cpu_count(),
        }
        for arm, v in totals.items()
    ]
    write_csv_rows(args.out, rows)


if __name__ == "__main__":
    main()
