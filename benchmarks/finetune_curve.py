"""Learning curve: fine-tuning a pretrained SA-GNN against training from scratch, on the MP ABX3 perovskites.

For each target (``formation_energy_per_atom``, ``band_gap``), training size (10, 25, 50, 100 % of the rows
left after a fixed 20 % test split) and seed, two runs of the same recipe, ``recipes/finetune.yaml``, as a user
types it (``python -m sagnn_lightning fit``, then ``predict --ckpt best``):

* ``finetune``: ``--model.init_from=matbench_perovskites`` (the recipe's default: Castelli formation energy per
  cell, a different dataset, functional and target), output MLP re-initialised;
* ``scratch``: ``--model.init_from=null --model.reset_head=false``, everything else equal.

The test split (seed 0) never changes; the seed picks the training subset, its 10 % validation carve (which
selects the checkpoint) and the initialisation. Each finished run's test MAE goes into ``<out>.csv`` (rewritten
atomically after every run), so a rerun continues where it stopped; ``<out>.png`` plots test MAE against
training rows (mean and min..max over seeds).

    OMP_NUM_THREADS=1 python benchmarks/finetune_curve.py --data ../shared/data/mp_abx3/mp_abx3_perovskites.csv.gz \\
        --work /tmp/finetune_curve --jobs 2 --out benchmarks/results/finetune_mp_abx3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from sagnn_lightning.files import atomic_write, write_csv_rows

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("formation_energy_per_atom", "band_gap")
UNITS = {"formation_energy_per_atom": "eV/atom", "band_gap": "eV"}
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
MODES = ("finetune", "scratch")
TEST_FRACTION, TEST_SEED = 0.2, 0


def write_splits(data: Path, work: Path, seeds: list[int]) -> dict[tuple[float, int], Path]:
    """The fixed test CSV and one training CSV per (fraction, seed); returns ``{(fraction, seed): path}``."""
    table = pd.read_csv(data)
    columns = ["material_id", "cif", *TARGETS]
    order = np.random.default_rng(TEST_SEED).permutation(len(table))
    n_test = int(round(TEST_FRACTION * len(table)))
    test, pool = table.iloc[np.sort(order[:n_test])], table.iloc[np.sort(order[n_test:])]
    work.mkdir(parents=True, exist_ok=True)
    test[columns].to_csv(work / "test.csv", index=False)
    paths = {}
    for seed in seeds:
        pick = np.random.default_rng(1000 + seed).permutation(len(pool))
        for fraction in FRACTIONS:
            rows = pool.iloc[np.sort(pick[: int(round(fraction * len(pool)))])]
            path = work / f"train_f{fraction:g}_s{seed}.csv"
            if not path.is_file():
                rows[columns].to_csv(path, index=False)
            paths[(fraction, seed)] = path
    return paths


def run_one(
    target: str, mode: str, fraction: float, seed: int, train_csv: Path, work: Path, epochs: int | None
) -> dict:
    """Fit (or resume) one run and predict the test CSV; returns its result row."""
    run_dir = work / "runs" / target / mode / f"f{fraction:g}_s{seed}"
    preds = run_dir / "test_predictions.csv"
    log = run_dir.parent / f"f{fraction:g}_s{seed}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "offline"}
    started = time.time()
    if not preds.is_file():
        fit = [sys.executable, "-m", "sagnn_lightning", "fit", "--config", str(ROOT / "recipes" / "finetune.yaml")]
        fit += [f"--data.data_file={train_csv}", f"--data.target_columns=[{target}]", "--data.test_fraction=0"]
        fit += [f"--data.split_seed={seed}", f"--seed_everything={seed}"]
        fit += [f"--trainer.max_epochs={epochs}"] if epochs else []
        fit += ["--trainer.logger=false", f"--trainer.default_root_dir={run_dir}"]
        if mode == "scratch":
            fit += ["--model.init_from=null", "--model.reset_head=false"]
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            fit += ["--ckpt_path=last"]
        predict = [sys.executable, "-m", "sagnn_lightning", "predict", "--ckpt", "best", "--run-dir", str(run_dir)]
        predict += ["--input", str(work / "test.csv"), "--output", str(preds)]
        with open(log, "a") as fh:
            for cmd in (fit, predict):
                fh.write("$ " + " ".join(cmd) + "\n")
                fh.flush()
                subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    truth = pd.read_csv(work / "test.csv").set_index("material_id")[target]
    pred = pd.read_csv(preds).set_index("id")["prediction"]
    train_rows = len(pd.read_csv(train_csv))
    return {
        "target": target,
        "unit": UNITS[target],
        "mode": mode,
        "fraction": fraction,
        "train_rows": train_rows,
        "seed": seed,
        "test_rows": len(pred),
        "test_mae": float((pred - truth.loc[pred.index]).abs().mean()),
        "seconds": round(time.time() - started, 1),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 4))
    for ax, target in zip(np.atleast_1d(axes), TARGETS):
        for mode, color in zip(MODES, ("tab:blue", "tab:orange")):
            part = frame[(frame.target == target) & (frame["mode"] == mode)]
            if part.empty:
                continue
            stats = part.groupby("train_rows")["test_mae"].agg(["mean", "min", "max", "count"]).reset_index()
            ax.plot(stats.train_rows, stats["mean"], "o-", color=color, label=f"{mode} (mean of seeds)")
            ax.fill_between(stats.train_rows, stats["min"], stats["max"], color=color, alpha=0.2)
        ax.set_xscale("log")
        sizes = sorted(frame.train_rows.unique())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training rows (10 % of them validate)")
        ax.set_ylabel(f"test MAE ({UNITS[target]})")
        ax.set_title(f"MP ABX3 {target}")
        ax.legend()
    fig.suptitle("fine-tuned from matbench_perovskites vs from scratch (recipes/finetune.yaml)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "mp_abx3" / "mp_abx3_perovskites.csv.gz")
    )
    parser.add_argument("--work", required=True, help="folder for subsets and run dirs (resumable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune_mp_abx3"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's trainer.max_epochs")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    splits = write_splits(Path(args.data), work, args.seeds)
    # largest runs first, so that the pool's tail is short ones
    todo = [
        (t, m, f, s) for f in sorted(FRACTIONS, reverse=True) for s in args.seeds for t in args.targets for m in MODES
    ]
    csv_path = out.with_suffix(".csv")
    rows: list[dict] = pd.read_csv(csv_path).to_dict("records") if csv_path.is_file() else []
    done = {(r["target"], r["mode"], r["fraction"], r["seed"]) for r in rows}

    def job(key: tuple[str, str, float, int]) -> dict:
        target, mode, fraction, seed = key
        return run_one(target, mode, fraction, seed, splits[(fraction, seed)], work, args.epochs)

    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(job, k): k for k in todo if k not in done}
        for future in as_completed(futures):
            try:
                row = future.result()
            except subprocess.CalledProcessError as err:  # the run's log has the details; the others go on
                failed.append(futures[future])
                print(f"failed: {futures[future]}: {err}", file=sys.stderr, flush=True)
                continue
            rows.append(row)
            rows.sort(key=lambda r: (r["target"], r["mode"], r["fraction"], r["seed"]))
            write_csv_rows(csv_path, rows)
            print(
                f"{row['target']} {row['mode']} {row['train_rows']} rows seed {row['seed']}: "
                f"test MAE {row['test_mae']:.4f} {row['unit']} ({row['seconds']:.0f} s)",
                flush=True,
            )
    plot(rows, out.with_suffix(".png"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
