"""The SA-GNN ablation table on real matbench data: heads, attention placement, w/o MHSA.

Every variant trains with the same budget on ``matbench_perovskites`` fold 0's training rows (15,142
real crystals, target ``e_form`` in eV per 5-atom cell): the same fixed internal validation split
(``val_fraction`` of the fold's training rows, drawn with ``split_seed``; matbench's fold-0 test rows
are not used), the same seed, batch size, number of epochs and optimizer (Adam, lr 1e-3, L1 loss on
standardised targets). Recorded per run:

- validation MAE in eV/cell, best over the epochs and after the last epoch (per-epoch curve too);
- training throughput in crystals/s: crystals seen / time spent in the training batches (loading +
  collating the cached graphs, forward, backward, optimizer step), summed over the training epochs;
  graph building (done once, cached) and validation are excluded;
- parameter count and wall time of the whole ``fit`` (training + validation epochs).

Variants (``SAGNN`` constructor arguments):

=============  =================================  ==========================================
name           arguments                          meaning
=============  =================================  ==========================================
``h8_last``    ``heads=8, attention="last"``      SA-GNN as we ship it (default)
``h4_last``    ``heads=4, attention="last"``      4 heads
``h16_last``   ``heads=16, attention="last"``     16 heads
``none``       ``attention="none"``               w/o MHSA = plain MEGNet
``h8_each``    ``heads=8, attention="each"``      MHSA after every MEGNet block
=============  =================================  ==========================================

``--speed-rounds N`` measures throughput alone, the variants taking turns on the same batches (a shared
CPU drifts over minutes, so this is the fairer speed comparison; see :func:`measure_speed`), into
``<out stem>_speed.csv``.

Results are appended (one row per variant × seed, replacing an older row with the same key) to a CSV
written atomically after every run, so a long background run leaves usable rows if it is stopped;
the per-epoch validation curves go to ``<out stem>_curves.csv``. The table is printed at the end.

Usage (from the repository root)::

    python benchmarks/ablation.py --quick                       # smoke check: 1 epoch, 256 crystals
    python benchmarks/ablation.py --epochs 8 --threads 1        # the table (all 5 variants, seed 0)
    python benchmarks/ablation.py --epochs 8 --variants h8_last none --seeds 1   # run-to-run spread
    python benchmarks/ablation.py --speed-rounds 3 --speed-batches 20   # interleaved throughput only

Data: Castelli et al., Energy Environ. Sci. 5, 9034 (2012), through matbench (Dunn et al., npj Comput.
Mater. 6, 138, 2020).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import Subset

from sagnn_lightning.cli import cli_main, quiet_upstream_warnings
from sagnn_lightning.data.matbench import MatbenchDataModule
from sagnn_lightning.files import atomic_write
from sagnn_lightning.models import SAGNN

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "../shared/data/matbench/matbench_perovskites_fold0_train.json.gz"
DEFAULT_OUT = REPO / "benchmarks/results/ablation.csv"

#: variant name -> (description, SAGNN keyword arguments)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "h8_last": ("SA-GNN, 8 heads, MHSA after last block", {"heads": 8, "attention": "last"}),
    "h4_last": ("SA-GNN, 4 heads, MHSA after last block", {"heads": 4, "attention": "last"}),
    "h16_last": ("SA-GNN, 16 heads, MHSA after last block", {"heads": 16, "attention": "last"}),
    "none": ("w/o MHSA (= plain MEGNet)", {"attention": "none"}),
    "h8_each": ("SA-GNN, 8 heads, MHSA after each block", {"heads": 8, "attention": "each"}),
}

FIELDS = [
    "variant",
    "description",
    "heads",
    "attention",
    "seed",
    "params",
    "epochs",
    "batch_size",
    "lr",
    "train_crystals",
    "val_crystals",
    "val_mae_best",
    "best_epoch",
    "val_mae_final",
    "train_mae_final",
    "train_crystals_per_s",
    "train_crystals_per_cpu_s",
    "train_time_s",
    "val_time_s",
    "wall_time_s",
    "threads",
    "machine",
]
SPEED_FIELDS = [
    "variant",
    "heads",
    "attention",
    "params",
    "batch_size",
    "batches",
    "rounds",
    "crystals_per_s_median",
    "crystals_per_s_min",
    "crystals_per_s_max",
    "crystals_per_cpu_s_median",
    "threads",
    "machine",
]
CURVE_FIELDS = ["variant", "seed", "epoch", "val_mae", "train_mae", "epoch_train_time_s"]


class AblationMonitor(pl.Callback):
    """Per-epoch validation and training MAE, training-batch time / crystals, and the wall time of ``fit``.

    Training time of an epoch runs from ``on_train_epoch_start`` to the end of its last training batch
    (data loading + collate + forward + backward + step); validation, which Lightning runs before
    ``on_train_epoch_end``, is timed separately. The training MAE of an epoch is read after the module logged it
    (the module's epoch-end hook runs after the callbacks'): at the next epoch's start, and at the end of ``fit``.
    The wall time runs from ``on_fit_start`` to ``on_train_end`` (training + validation epochs).
    """

    def __init__(self) -> None:
        self.val_mae: list[float] = []
        self.train_mae: list[float] = []
        self.epoch_train_time: list[float] = []
        self.epoch_train_cpu: list[float] = []
        self.val_time = 0.0
        self.crystals = 0
        self.wall_time = 0.0
        self._fit_start = 0.0
        self._epoch_start = 0.0
        self._last_batch_end = 0.0
        self._val_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wall_time = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0 and "train/mae" in trainer.callback_metrics:
            self.train_mae.append(float(trainer.callback_metrics["train/mae"]))
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._epoch_cpu_start = self._last_batch_cpu = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_batch_end = time.perf_counter()
        self._last_batch_cpu = time.process_time()
        self.crystals += int(batch.num_graphs)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.val_time += time.perf_counter() - self._val_start
        self.val_mae.append(float(trainer.callback_metrics["val/mae"]))
        print(f"   epoch {trainer.current_epoch + 1}: val MAE {self.val_mae[-1]:.4f}", flush=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_train_time.append(self._last_batch_end - self._epoch_start)
        self.epoch_train_cpu.append(self._last_batch_cpu - self._epoch_cpu_start)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train/mae" in trainer.callback_metrics:
            self.train_mae.append(float(trainer.callback_metrics["train/mae"]))


class FirstRowsDataModule(MatbenchDataModule):
    """``MatbenchDataModule`` whose training and validation splits keep only their first ``limit_train`` /
    ``limit_val`` crystals (``--limit-train`` / ``--limit-val``; ``None``: all). The target statistics are those
    of the whole training split, as without limits."""

    def __init__(self, *args: Any, limit_train: int | None = None, limit_val: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limit_train, self.limit_val = limit_train, limit_val
        self.full_sizes: dict[str, int] = {}  # split sizes before the limits

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for split, limit in (("train", self.limit_train), ("val", self.limit_val)):
            dataset = getattr(self, f"{split}_dataset")
            if dataset is not None:
                self.full_sizes[split] = len(dataset)
            if limit and dataset is not None:
                setattr(self, f"{split}_dataset", Subset(dataset, range(min(limit, len(dataset)))))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="matbench_perovskites fold-0 training file")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results CSV (rows merged, written atomically)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="model/training seeds (pl.seed_everything)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation carve and the shuffle")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training crystals")
    p.add_argument("--limit-val", type=int, default=None, help="use only the first N validation crystals")
    p.add_argument("--cache-dir", type=str, default=None, help="graph cache (default $SAGNN_CACHE_DIR / user cache)")
    p.add_argument(
        "--speed-rounds",
        type=int,
        default=0,
        help="instead of training: interleaved throughput, N rounds of every variant (see measure_speed)",
    )
    p.add_argument("--speed-batches", type=int, default=20, help="timed training batches per variant and round")
    p.add_argument(
        "--report",
        action="store_true",
        help="only print a Markdown summary of --out (and its _speed.csv): per variant over seeds",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 1 epoch, 256 training / 64 validation crystals, CSV beside --out as *_quick.csv",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 1
        args.limit_train = args.limit_train or 256
        args.limit_val = args.limit_val or 64
        args.speed_batches = min(args.speed_batches, 1)
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT.with_name("ablation_quick.csv")
    return args


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, {threads} thread(s)"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def cli_args(args: argparse.Namespace) -> list[str]:
    """The recipes' CLI options of every run: ``FirstRowsDataModule`` on the fold-0 training file (validation
    carved with ``--split-seed``), L1 loss on standardised targets, Adam at ``--lr`` without a scheduler, the
    SAGNN defaults, CPU, deterministic, nothing logged or saved (no recipe YAML: these options are the whole
    configuration)."""
    data = {
        "task": "matbench_perovskites",
        "fold": 0,
        "data_file": str(args.data),
        "batch_size": args.batch_size,
        "val_fraction": args.val_fraction,
        "split_seed": args.split_seed,
        "cache_dir": args.cache_dir,
        "download": False,
        "progress": False,
        "limit_train": args.limit_train,
        "limit_val": args.limit_val,
    }
    return [
        f"--data={json.dumps({'class_path': _class_path(FirstRowsDataModule), 'init_args': data})}",
        "--model.loss=l1",
        "--model.optimizer=torch.optim.Adam",
        f"--model.optimizer.lr={args.lr}",
        "--model.scheduler=null",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.deterministic=true",
        "--checkpoint.save_top_k=0",
        "--checkpoint.save_last=false",
        f"--trainer.callbacks+={_class_path(AblationMonitor)}",
    ]


def build_data(args: argparse.Namespace, tmp: Path) -> FirstRowsDataModule:
    """Graphs (cached) + the fixed train/val split of fold 0's training rows, built once before the runs (each run's
    DataModule then reads the graph cache); ``--speed-rounds`` measures on its batches."""
    if not args.data.is_file():
        sys.exit(f"ablation: data file {args.data} not found; pass --data <matbench_perovskites_fold0_train.json.gz>")
    t0 = time.perf_counter()
    with quiet_upstream_warnings():
        dm = cli_main([*cli_args(args), f"--trainer.default_root_dir={tmp}"], name="ablation", run=False).datamodule
    dm.prepare_data()
    dm.setup("fit")
    print(
        f"graphs ready in {time.perf_counter() - t0:.1f} s: {dm.full_sizes['train']} train / "
        f"{dm.full_sizes['val']} val crystals",
        flush=True,
    )
    return dm


def run_variant(
    name: str, seed: int, args: argparse.Namespace, tmp: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run through the recipes' CLI (:func:`cli_args` + the variant's SAGNN arguments + ``seed``)."""
    description, kwargs = VARIANTS[name]
    variant = [
        f"--model.model.init_args.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in kwargs.items()
    ]
    argv = [*cli_args(args), *variant, f"--seed_everything={seed}", f"--trainer.default_root_dir={tmp / name}"]
    with quiet_upstream_warnings():
        cli = cli_main(argv, name="ablation", run=False)
        trainer, module, dm = cli.trainer, cli.model, cli.datamodule
        monitor = next(c for c in trainer.callbacks if isinstance(c, AblationMonitor))  # type: ignore[attr-defined]
        trainer.fit(module, datamodule=dm)
    train_time = sum(monitor.epoch_train_time)
    best = min(range(len(monitor.val_mae)), key=monitor.val_mae.__getitem__)
    row = {
        "variant": name,
        "description": description,
        "heads": kwargs.get("heads", "-"),
        "attention": kwargs["attention"],
        "seed": seed,
        "params": sum(p.numel() for p in module.model.parameters()),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_crystals": len(dm.train_dataset),
        "val_crystals": len(dm.val_dataset),
        "val_mae_best": f"{monitor.val_mae[best]:.5f}",
        "best_epoch": best + 1,
        "val_mae_final": f"{monitor.val_mae[-1]:.5f}",
        "train_mae_final": f"{monitor.train_mae[-1]:.5f}" if monitor.train_mae else "",
        "train_crystals_per_s": f"{monitor.crystals / train_time:.1f}",
        "train_crystals_per_cpu_s": f"{monitor.crystals / max(sum(monitor.epoch_train_cpu), 1e-9):.1f}",
        "train_time_s": f"{train_time:.1f}",
        "val_time_s": f"{monitor.val_time:.1f}",
        "wall_time_s": f"{monitor.wall_time:.1f}",
        "threads": args.threads,
        "machine": machine(args.threads),
    }
    curves = [
        {
            "variant": name,
            "seed": seed,
            "epoch": e + 1,
            "val_mae": f"{v:.5f}",
            "train_mae": f"{monitor.train_mae[e]:.5f}" if e < len(monitor.train_mae) else "",
            "epoch_train_time_s": f"{monitor.epoch_train_time[e]:.1f}" if e < len(monitor.epoch_train_time) else "",
        }
        for e, v in enumerate(monitor.val_mae)
    ]
    return row, curves


def measure_speed(dm: MatbenchDataModule, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training-step throughput with the variants taking turns (a shared CPU drifts over minutes).

    The same ``--speed-batches`` pre-collated training batches (after 1 untimed warm-up batch) run through
    every variant: forward, L1 loss on standardised targets, backward, Adam step. ``--speed-rounds`` rounds,
    the variant order rotated each round; reported: median / min / max crystals per wall-clock second and
    the median crystals per CPU-second of this process (``time.process_time``), which other jobs on the
    machine disturb much less than wall-clock time.
    """
    batches = list(itertools.islice(dm.train_dataloader(), args.speed_batches + 1))
    if len(batches) < args.speed_batches + 1:
        sys.exit(
            f"ablation: --speed-batches {args.speed_batches} needs {args.speed_batches + 1} training batches "
            f"(1 warm-up), the split has {len(batches)}; lower --speed-batches or raise --limit-train"
        )
    crystals = sum(int(b.num_graphs) for b in batches[1:])
    mean, std = torch.tensor(dm.target_mean), torch.tensor(dm.target_std)
    wall: dict[str, list[float]] = {v: [] for v in args.variants}
    cpu: dict[str, list[float]] = {v: [] for v in args.variants}
    params: dict[str, int] = {}
    for r in range(args.speed_rounds):
        order = args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
        for name in order:
            pl.seed_everything(args.seeds[0], verbose=False)
            model = SAGNN(num_targets=1, **VARIANTS[name][1])
            params[name] = sum(p.numel() for p in model.parameters())
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
            for k, batch in enumerate(batches):
                if k == 1:
                    t0, c0 = time.perf_counter(), time.process_time()
                optimizer.zero_grad()
                target = (batch.y.reshape(-1, 1) - mean) / std
                loss = (model(batch) - target).abs().mean()
                loss.backward()
                optimizer.step()
            wall[name].append(crystals / (time.perf_counter() - t0))
            cpu[name].append(crystals / (time.process_time() - c0))
        print(f"   round {r + 1}: " + ", ".join(f"{v} {wall[v][-1]:.0f}/s" for v in args.variants), flush=True)
    return [
        {
            "variant": v,
            "heads": VARIANTS[v][1].get("heads", "-"),
            "attention": VARIANTS[v][1]["attention"],
            "params": params[v],
            "batch_size": args.batch_size,
            "batches": args.speed_batches,
            "rounds": args.speed_rounds,
            "crystals_per_s_median": f"{statistics.median(wall[v]):.1f}",
            "crystals_per_s_min": f"{min(wall[v]):.1f}",
            "crystals_per_s_max": f"{max(wall[v]):.1f}",
            "crystals_per_cpu_s_median": f"{statistics.median(cpu[v]):.1f}",
            "threads": args.threads,
            "machine": machine(args.threads),
        }
        for v in args.variants
    ]


def merge_write(path: Path, rows: list[dict[str, Any]], fields: list[str], key: tuple[str, ...]) -> list[dict]:
    """Merge ``rows`` into the CSV at ``path`` (same ``key`` replaced) and write it atomically."""
    existing: list[dict] = []
    if path.is_file():
        with path.open(newline="") as fh:
            existing = list(csv.DictReader(fh))
    new_keys = {tuple(str(r[k]) for k in key) for r in rows}
    merged = [r for r in existing if tuple(str(r.get(k)) for k in key) not in new_keys] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="") as fh:  # umask respected; a replaced file keeps its mode
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(merged)
    return merged


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'variant':<9} {'seed':>4} {'params':>8} {'val MAE best':>13} {'(ep)':>4} {'val MAE final':>14} "
        f"{'crystals/s':>11} {'wall s':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['variant']:<9} {r['seed']:>4} {int(r['params']):>8,} {float(r['val_mae_best']):>13.4f} "
            f"{r['best_epoch']:>4} {float(r['val_mae_final']):>14.4f} {float(r['train_crystals_per_s']):>11.1f} "
            f"{float(r['wall_time_s']):>8.0f}"
        )
    print(
        "val MAE in eV per 5-atom cell (matbench_perovskites e_form); epochs "
        f"{rows[0]['epochs'] if rows else '-'}, batch {rows[0]['batch_size'] if rows else '-'}"
    )


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def markdown_report(out: Path) -> str:
    """Markdown table of ``out`` aggregated per variant over seeds (mean ± sample std, per-seed values)."""
    rows = _read_csv(out)
    speed = {r["variant"]: r for r in _read_csv(out.with_name(out.stem + "_speed.csv"))}
    lines = [
        (
            "| variant | params | seeds | val MAE best (eV/cell) | val MAE final (eV/cell) | per seed (final) | "
            "crystals/s in run | crystals/s interleaved | crystals/CPU-s | wall time / run |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [v for v in VARIANTS if any(r["variant"] == v for r in rows)]:
        runs = sorted((r for r in rows if r["variant"] == name), key=lambda r: int(r["seed"]))
        best = [float(r["val_mae_best"]) for r in runs]
        final = [float(r["val_mae_final"]) for r in runs]

        def stat(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

        per_seed = ", ".join(f"{float(r['val_mae_final']):.4f}" for r in runs)
        rate = statistics.median(float(r["train_crystals_per_s"]) for r in runs)
        wall = statistics.median(float(r["wall_time_s"]) for r in runs)
        sp = speed.get(name)
        inter = f"{sp['crystals_per_s_median']} ({sp['crystals_per_s_min']}–{sp['crystals_per_s_max']})" if sp else "–"
        cpu = sp["crystals_per_cpu_s_median"] if sp else "–"
        lines.append(
            f"| {name}: {VARIANTS[name][0]} | {int(runs[0]['params']):,} | {len(runs)} | {stat(best)} | "
            f"{stat(final)} | {per_seed} | {rate:.0f} | {inter} | {cpu} | {wall / 60:.1f} min |"
        )
    return "\n".join(lines)


def speed_table(dm: FirstRowsDataModule, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--speed-rounds``: :func:`measure_speed`, merged into ``<out stem>_speed.csv`` and printed."""
    speed = measure_speed(dm, args)
    speed_path = args.out.with_name(args.out.stem + "_speed.csv")
    merge_write(speed_path, speed, SPEED_FIELDS, ("variant",))
    print(f"{'variant':<9} {'params':>8} {'crystals/s median (min-max)':>28} {'crystals/CPU-s':>15}")
    for r in speed:
        print(
            f"{r['variant']:<9} {r['params']:>8,} {r['crystals_per_s_median']:>12} "
            f"({r['crystals_per_s_min']}-{r['crystals_per_s_max']}) {r['crystals_per_cpu_s_median']:>15}"
        )
    print(f"\nwrote {speed_path}")
    return speed


def main(argv: list[str] | None = None) -> list[dict] | str:
    args = parse_args(argv)
    if args.report:
        report = markdown_report(args.out)
        print(report)
        return report
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sagnn_ablation_") as tmp:
        dm = build_data(args, Path(tmp))
        if args.speed_rounds > 0:
            return speed_table(dm, args)
        curves_path = args.out.with_name(args.out.stem + "_curves.csv")
        rows: list[dict] = []
        for seed in args.seeds:
            for name in args.variants:
                print(f"== {name} seed {seed}: {args.epochs} epochs", flush=True)
                row, curves = run_variant(name, seed, args, Path(tmp))
                rows.append(row)
                merge_write(args.out, [row], FIELDS, ("variant", "seed"))
                merge_write(curves_path, curves, CURVE_FIELDS, ("variant", "seed"))
                print(
                    f"   val MAE best {row['val_mae_best']} (epoch {row['best_epoch']}), final "
                    f"{row['val_mae_final']}, {row['train_crystals_per_s']} crystals/s, {row['wall_time_s']} s",
                    flush=True,
                )
    print()
    print_table(rows)
    print(f"\nwrote {args.out} and {curves_path}")
    return rows


if __name__ == "__main__":
    main()
