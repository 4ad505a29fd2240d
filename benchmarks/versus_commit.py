"""Training-step speed of this checkout against another commit, the two taking turns in fresh processes (CPU).

A change that cuts dispatched ops (``benchmarks/step_ops.py``) must not make the CPU, which is compute-bound,
slower. ``benchmarks/eager_fusions.py`` compares the fused code with the module-by-module code in one process;
this script compares whole commits: ``git worktree`` checks out ``--base`` into a temporary folder, and each round
runs one process per side (same Python, same data, ``--threads`` threads), each timing whole training steps
(forward, L1 loss, backward, fused Adam) of one recipe model on real batches after one warm-up pass. The median
crystals/s per side and the ratio (this checkout / base) are printed and written as CSV. This checkout is measured
as it is on disk (uncommitted changes included); the base's worktree sits beside it (so that both read
``../shared/data``) and is removed at the end.

    OMP_NUM_THREADS=1 python benchmarks/versus_commit.py --base 8c45495 --rounds 6 \\
        --out benchmarks/results/versus_commit_cpu.csv
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sagnn_lightning.files import write_csv_rows

REPO = Path(__file__).resolve().parents[1]

#: run inside each side's checkout: prints crystals/s of whole training steps
ARM = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import torch
sys.path.insert(0, "benchmarks")
import step_ops
torch.set_num_threads({threads})
torch.manual_seed(0)
factory, kind = step_ops.models()["{model}"]
loaded = [step_ops.real_batches({batch_size}, skip=k * {batch_size}) for k in range({batches})]
data = [batches[kind] for batches in loaded]
model = factory().train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
def epoch():
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        (model(batch).float() - batch.y).abs().mean().backward()
        optimizer.step()
epoch()
start = time.perf_counter()
for _ in range({passes}):
    epoch()
print(loaded[0]["source"], {passes} * {batch_size} * len(data) / (time.perf_counter() - start))
"""


def arm(checkout: Path, model: str, args: argparse.Namespace) -> tuple[str, float]:
    """One process in ``checkout``: the data file and the crystals/s of ``args.passes`` passes over the batches."""
    code = ARM.format(
        threads=args.threads, model=model, batch_size=args.batch_size, batches=args.batches, passes=args.passes
    )
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True, timeout=args.timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"error: the run in {checkout} failed:\n{done.stderr[-2000:]}")
    source, speed = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    return source, float(speed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--base", required=True, help="the commit to compare with (any git revision)")
    parser.add_argument("--models", nargs="+", default=["sagnn_recipe", "composition_recipe"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=6, help="real phonons batches per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the batches per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per process")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: print only)")
    args = parser.parse_args(argv)
    sha = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"error: --base {args.base!r} is not a commit of {REPO} ({sha.stderr.strip()})")
    rows = []
    # beside this checkout, so that the base finds ../shared/data as this one does
    base = REPO.parent / f".versus_commit_{sha.stdout.strip()}_{os.getpid()}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(base), args.base], cwd=REPO, check=True, capture_output=True
    )
    try:
        for model in args.models:
            speeds: dict[str, list[float]] = {"base": [], "here": []}
            sources = set()
            for _ in range(args.rounds):
                for side, checkout in (("base", base), ("here", REPO)):
                    source, speed = arm(checkout, model, args)
                    sources.add(source)
                    speeds[side].append(speed)
            if len(sources) != 1:
                raise SystemExit(f"error: the two sides read different data ({sorted(sources)})")
            here, then = statistics.median(speeds["here"]), statistics.median(speeds["base"])
            print(
                f"{model:>20}: {sha.stdout.strip()} {then:.1f}, this checkout {here:.1f} crystals/s "
                f"(x{here / then:.3f}; medians of {args.rounds} turns)",
                flush=True,
            )
            rows.append(
                {
                    "model": model,
                    "base": sha.stdout.strip(),
                    "base_crystals_per_s": round(then, 1),
                    "crystals_per_s": round(here, 1),
                    "ratio": round(here / then, 3),
                    "rounds": args.rounds,
                    "threads": args.threads,
                    "batch_size": args.batch_size,
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    if args.out is not None:
        print(f"wrote {write_csv_rows(args.out, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
