"""Does multitask help, and when? Single-task SA-GNNs against one 3-target SA-GNN, 5-fold CV, learning curves.

For each dataset (``mp_phonon_dielectric``: eps_electronic, eps_total, last_phdos_peak; ``mp_abx3``: formation
energy, band gap, energy above hull), fold (sklearn ``KFold(5, shuffle=True, random_state=18012019)``, matbench's
seed, over the whole table), training fraction (25, 50, 100 % of the fold's training rows, nested: the 25 % rows
are inside the 50 % rows) and model, one run of the dataset's recipe as a user types it (``python
recipes/<dataset>.py fit``, then ``python -m sagnn_lightning predict --ckpt best``):

* ``multitask``: the recipe as it is, all three targets, equal loss weights;
* ``single``: the same recipe with ``--data.target_columns=[<target>]`` (its unit and transform), once per target.

Equal training budget: every run trains ``--epochs`` epochs with the recipe's schedule scaled to them (hold 10 %,
then linear decay); the recipe's own 10 % validation carve (``split_seed`` = fold) picks the checkpoint. The fold's
test rows are never seen. Each finished run's test metrics go into ``<out>.csv`` (rewritten atomically after every
run), so a rerun continues where it stopped, and an interrupted fit resumes from its ``last.ckpt``.

Metrics per target, in its unit: MAE over the fold's test rows. For eps (learned as logs) the MAE in units leaves
out ``EVAL_EXCLUDED`` (mp-22261, InCuTe2, eps ~ 3e6: a metal in DFPT, whose error would be the whole MAE); the
``mae_ln`` column is the MAE of ln(eps) over every test row, that one included. ``seconds_per_epoch`` is the fit's
wall time (start-up included) over its epochs.

    OMP_NUM_THREADS=1 python benchmarks/multitask_study.py --work /tmp/multitask_study --jobs 2 --epochs 40 \\
        --out benchmarks/results/multitask_study [-- <fit overrides, e.g. --trainer.accelerator=gpu>]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from sagnn_lightning.files import atomic_write, write_csv_rows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FOLD_SEED, N_FOLDS = 18012019, 5
FRACTIONS = (1.0, 0.5, 0.25)
EVAL_EXCLUDED = {"mp-22261"}  # eps ~ 3e6 (a metal in DFPT): left out of the eps MAE in units, kept in mae_ln


@dataclass(frozen=True)
class Dataset:
    """One multi-property table and the recipe that learns it."""

    name: str
    recipe: str
    data: Path
    targets: tuple[str, ...]
    units: tuple[str, ...]
    transforms: tuple[str, ...]


DATASETS = {
    d.name: d
    for d in (
        Dataset(
            "mp_phonon_dielectric",
            "recipes/mp_phonon_dielectric.py",
            SHARED / "mp_phonon_dielectric" / "mp_phonon_dielectric.csv.gz",
            ("eps_electronic", "eps_total", "last_phdos_peak"),
            ("", "", "cm^-1"),
            ("log", "log", "none"),
        ),
        Dataset(
            "mp_abx3",
            "recipes/mp_abx3.py",
            SHARED / "mp_abx3" / "mp_abx3_perovskites.csv.gz",
            ("formation_energy_per_atom", "band_gap", "energy_above_hull"),
            ("eV/atom", "eV", "eV/atom"),
            ("none", "none", "none"),
        ),
    )
}


def write_folds(dataset: Dataset, work: Path) -> None:
    """``<work>/<dataset>/fold<k>/test.csv`` and ``train_f<fraction>.csv`` (nested subsets), once."""
    table = pd.read_csv(dataset.data)[["material_id", "cif", *dataset.targets]]
    folds = KFold(N_FOLDS, shuffle=True, random_state=FOLD_SEED).split(table)
    for fold, (train_index, test_index) in enumerate(folds):
        folder = work / dataset.name / f"fold{fold}"
        if (folder / "train_f0.25.csv").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        table.iloc[test_index].to_csv(folder / "test.csv", index=False)
        order = np.random.default_rng(fold).permutation(train_index)
        for fraction in FRACTIONS:
            rows = np.sort(order[: int(round(fraction * len(order)))])
            table.iloc[rows].to_csv(folder / f"train_f{fraction:g}.csv", index=False)


def run_one(
    dataset: Dataset,
    fold: int,
    fraction: float,
    target: str | None,
    work: Path,
    epochs: int,
    overrides: Sequence[str] = (),
    timeout: float | None = None,
) -> list[dict]:
    """Fit (or resume) one run, predict the fold's test rows; one result row per target it learned.
    ``overrides`` go to the fit command after the study's own options (e.g. ``--trainer.accelerator=gpu``);
    ``timeout`` (s) bounds each command."""
    folder = work / dataset.name / f"fold{fold}"
    model = "multitask" if target is None else "single"
    run_dir = folder / "runs" / f"f{fraction:g}" / (target or "multitask")
    preds, log = run_dir / "test_predictions.csv", run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    targets = dataset.targets if target is None else (target,)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "offline"}
    fit_seconds = float("nan")
    if not preds.is_file():
        fit = [sys.executable, dataset.recipe, "fit", f"--data.data_file={folder / f'train_f{fraction:g}.csv'}"]
        if target is not None:
            i = dataset.targets.index(target)
            fit += [f"--data.target_columns=[{target}]", f'--data.target_units=["{dataset.units[i]}"]']
            fit += [f"--data.target_transforms=[{dataset.transforms[i]}]", "--model.loss_weights=[1.0]"]
        fit += ["--data.test_fraction=0", f"--data.split_seed={fold}", f"--seed_everything={fold}"]
        fit += [f"--trainer.max_epochs={epochs}", f"--model.scheduler.init_args.hold_epochs={max(1, epochs // 10)}"]
        fit += ["--data.num_workers=0", f"--data.cache_dir={work / 'graph_cache'}", "--data.progress=false"]
        fit += [
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run_dir}",
        ]
        fit += list(overrides)
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            fit += ["--ckpt_path=last"]
        predict = [sys.executable, "-m", "sagnn_lightning", "predict", "--ckpt", "best", "--run-dir", str(run_dir)]
        predict += ["--input", str(folder / "test.csv"), "--output", str(preds)]
        with open(log, "a") as fh:
            for cmd in (fit, predict):
                fh.write("$ " + " ".join(cmd) + "\n")
                fh.flush()
                started = time.time()
                subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout)
                if cmd is fit and "--ckpt_path=last" not in fit:  # a resumed fit's time would be partial
                    fit_seconds = time.time() - started
    truth = pd.read_csv(folder / "test.csv").set_index("material_id")
    pred = pd.read_csv(preds).set_index("id")
    train_rows = len(pd.read_csv(folder / f"train_f{fraction:g}.csv"))
    rows = []
    for name in targets:
        column = name if name in pred.columns else "prediction"
        p, t = pred[column], truth.loc[pred.index, name]
        kept = ~p.index.isin(EVAL_EXCLUDED) if dataset.transforms[dataset.targets.index(name)] == "log" else p.index
        row = {
            "dataset": dataset.name,
            "fold": fold,
            "fraction": fraction,
            "train_rows": train_rows,
            "model": model,
            "target": name,
            "unit": dataset.units[dataset.targets.index(name)],
            "test_rows": int(np.size(p.loc[kept])),
            "mae": float((p.loc[kept] - t.loc[kept]).abs().mean()),
            "mae_ln": float((np.log(p.clip(lower=1e-12)) - np.log(t)).abs().mean())
            if dataset.transforms[dataset.targets.index(name)] == "log"
            else float("nan"),
            "epochs": epochs,
            "seconds_per_epoch": round(fit_seconds / epochs, 3),
        }
        rows.append(row)
    return rows


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, fraction and target: single and multitask MAE over folds (mean, std) and the paired
    difference multitask - single per fold (mean, std, folds where multitask won)."""
    out = []
    keys = ["dataset", "fraction", "train_rows_mean", "target", "unit"]
    frame = frame.assign(train_rows_mean=frame.groupby(["dataset", "fraction"])["train_rows"].transform("mean"))
    for key, part in frame.groupby(keys, sort=False):
        wide = part.pivot(index="fold", columns="model", values="mae")
        if not {"single", "multitask"} <= set(wide.columns):
            continue
        wide = wide.dropna()
        diff = wide["multitask"] - wide["single"]
        out.append(
            {
                **dict(zip(keys, key)),
                "folds": len(wide),
                "single_mae": wide["single"].mean(),
                "single_std": wide["single"].std(ddof=1),
                "multitask_mae": wide["multitask"].mean(),
                "multitask_std": wide["multitask"].std(ddof=1),
                "diff_mean": diff.mean(),
                "diff_std": diff.std(ddof=1),
                "diff_percent": 100 * diff.mean() / wide["single"].mean(),
                "multitask_wins": int((diff < 0).sum()),
            }
        )
    return pd.DataFrame(out)


def markdown(summary: pd.DataFrame) -> str:
    """The summary as the docs' table: MAE mean ± std over folds, the paired difference and the fold count."""
    lines = [
        "| dataset | target (unit) | training rows | single-task | multitask | multitask − single (paired) "
        "| change | multitask better in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        unit = f" ({r.unit})" if r.unit else ""
        lines.append(
            f"| {r.dataset} | {r.target}{unit} | {r.train_rows_mean:,.0f} | {r.single_mae:.4g} ± {r.single_std:.2g} "
            f"| {r.multitask_mae:.4g} ± {r.multitask_std:.2g} | {r.diff_mean:+.3g} ± {r.diff_std:.2g} "
            f"| {r.diff_percent:+.1f} % | {r.multitask_wins} of {r.folds} folds |"
        )
    return "\n".join(lines)


def plot(frame: pd.DataFrame, dataset: Dataset, path: Path) -> None:
    """Learning curves: test MAE against training rows per target, single vs multitask, mean and fold range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(dataset.targets), figsize=(4.5 * len(dataset.targets), 3.8))
    for ax, target, unit in zip(axes, dataset.targets, dataset.units):
        for model, color in (("single", "tab:blue"), ("multitask", "tab:orange")):
            part = frame[(frame.dataset == dataset.name) & (frame.target == target) & (frame.model == model)]
            if part.empty:
                continue
            stats = part.groupby("fraction").agg(
                rows=("train_rows", "mean"), mean=("mae", "mean"), lo=("mae", "min"), hi=("mae", "max")
            )
            ax.plot(stats["rows"], stats["mean"], "o-", color=color, label=f"{model} (mean of folds)")
            ax.fill_between(stats["rows"], stats["lo"], stats["hi"], color=color, alpha=0.2)
        ax.set_xlabel("training rows (10 % of them validate)")
        ax.set_ylabel(f"test MAE ({unit})" if unit else "test MAE")
        ax.set_title(target)
        ax.legend(fontsize=8)
    fig.suptitle(f"{dataset.name}: single-task vs one 3-target SA-GNN (5 folds, fold range shaded)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for fold CSVs, graph cache and run dirs (resumable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "multitask_study"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--epochs", type=int, default=40, help="epochs of every run (equal budget)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    work, out = Path(args.work), Path(args.out)
    datasets = [DATASETS[name] for name in args.datasets]
    for dataset in datasets:
        write_folds(dataset, work)
    csv_path = out.with_suffix(".csv")
    rows: list[dict] = []
    if csv_path.is_file():  # a unit-less target's empty unit must stay "", not NaN
        rows = pd.read_csv(csv_path).fillna({"unit": ""}).to_dict("records")
    done = {
        (r["dataset"], r["fold"], r["fraction"], r["model"] if r["model"] == "multitask" else r["target"]) for r in rows
    }
    # largest fractions first (the 5-fold comparison at 100 % is the headline), datasets interleaved
    todo = [
        (d, fold, fraction, target)
        for fraction in sorted(args.fractions, reverse=True)
        for fold in args.folds
        for d in datasets
        for target in (None, *d.targets)
        if (d.name, fold, fraction, target or "multitask") not in done
    ]
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, *key, work, args.epochs, overrides): key for key in todo}
        for future in as_completed(futures):
            d, fold, fraction, target = futures[future]
            try:
                new = future.result()
            except subprocess.CalledProcessError as err:  # the run's log has the details; the others go on
                failed.append(futures[future])
                print(f"failed: {d.name} fold {fold} f{fraction:g} {target or 'multitask'}: {err}", file=sys.stderr)
                continue
            rows.extend(new)
            rows.sort(key=lambda r: (r["dataset"], r["fraction"], r["target"], r["model"], r["fold"]))
            write_csv_rows(csv_path, rows)
            for r in new:
                print(
                    f"{d.name} fold {fold} {r['train_rows']} rows {r['model']} {r['target']}: "
                    f"MAE {r['mae']:.4g} {r['unit']} ({r['seconds_per_epoch']} s/epoch)",
                    flush=True,
                )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        summary = summarize(frame)
        write_csv_rows(out.with_name(out.name + "_summary.csv"), summary.round(4).to_dict("records"))
        print(markdown(summary), flush=True)
        for dataset in datasets:
            plot(frame, dataset, out.with_name(f"{out.name}_{dataset.name}.png"))
    print(f"{len(rows)} result rows in {csv_path}; {len(failed)} runs failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
