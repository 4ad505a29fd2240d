"""Trainer-level training speed: ``trainer.fit`` for a fixed number of steps on a real task, per variant.

Variants (all through :class:`~sagnn_lightning.lit.SAGNNModule` and a graph DataModule, so the loop is a user's):

* ``sagnn_eager``: the recipes' SA-GNN (``recipes/configs/sagnn.yaml``), eager;
* ``sagnn_compiled``: the same, ``compile="default"`` (inductor);
* ``sagnn_cudagraphs``: the same, ``compile="reduce-overhead"`` on batches padded to ``--static-shapes`` shapes;
* ``megnet_matgl``: matgl's MEGNet (``benchmarks/peers.py``; skipped, and recorded, when matgl is missing);
* ``cgcnn_pyg``: a PyG CGCNN (``benchmarks/peers.py``).

Per variant: the warm-up (the first ``--warmup`` steps, compilation included), then crystals per second over the
next ``--steps`` steps (device synchronised at each step's end), and the peak device memory (CUDA). Fused Adam
(the recipes') for every variant. The variants run one after another in one process, ``--rounds`` times in turn
(interleaved), so their ratios come from the same machine state.

    python benchmarks/train_speed.py --data ../shared/data/matbench/matbench_phonons.csv.gz --device cuda \\
        --out benchmarks/results/train_speed_cuda.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from sagnn_lightning.cli import quiet_upstream_warnings
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.models import SAGNN

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("sagnn_eager", "sagnn_compiled", "sagnn_cudagraphs", "megnet_matgl", "cgcnn_pyg")


class StepClock(Callback):
    """Times every training step (synchronising the device), counting the real crystals of each batch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.crystals: list[int] = []
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self._start)
        self.crystals.append(int(getattr(batch, "num_real_graphs", batch.num_graphs)))


def _peer(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("peers", REPO / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    return peers.make_models()[name]()


def build(variant: str) -> tuple[Any, dict[str, Any]]:
    """``(network, SAGNNModule options)`` of a variant."""
    import yaml

    sagnn = dict(yaml.safe_load((REPO / "recipes/configs/sagnn.yaml").read_text())["model"]["model"]["init_args"])
    if variant == "sagnn_eager":
        return SAGNN(**sagnn), {}
    if variant == "sagnn_compiled":
        return SAGNN(**sagnn), {"compile": "default"}
    if variant == "sagnn_cudagraphs":
        return SAGNN(**sagnn), {"compile": "reduce-overhead"}
    if variant == "megnet_matgl":
        return _peer("matgl_megnet"), {}
    if variant == "cgcnn_pyg":
        return _peer("pyg_cgcnn"), {}
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def measure(variant: str, args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    network, options = build(variant)
    static = args.static_shapes if variant == "sagnn_cudagraphs" else None
    data = CrystalDataModule(
        args.data,
        target_columns=[args.target] if args.target else None,
        batch_size=args.batch_size,
        val_fraction=0.0,
        test_fraction=0.0,
        cache_dir=cache_dir,
        progress=False,
        static_shapes=static,
    )
    # any network with forward(batch) -> [B, T] trains in SAGNNModule (the peers too)
    module = SAGNNModule(
        network,  # type: ignore[arg-type]
        optimizer=lambda params: torch.optim.Adam(params, lr=5e-4, fused=True),
        **options,
    )
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=cache_dir,
    )
    if torch.cuda.is_available() and args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with quiet_upstream_warnings():
        trainer.fit(module, datamodule=data)
    warm = clock.times[args.warmup - 1]
    steady = clock.times[-1] - warm
    crystals = sum(clock.crystals[args.warmup :])
    row = {
        "variant": variant,
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(0),
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "warmup_s": round(warm, 2),
        "steps": len(clock.times) - args.warmup,
        "crystals_per_s": round(crystals / steady, 1) if steady > 0 else float("nan"),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else "",
    }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", required=True, help="a CSV/JSON table of crystals with a target column")
    parser.add_argument("--target", default=None, help="target column (default: the table's first non-input one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--static-shapes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="sagnn-train-speed-") as tmp:
        for round_index in range(args.rounds):
            for variant in args.variants:
                try:
                    row = measure(variant, args, args.cache_dir or tmp)
                except ImportError as err:  # an optional peer
                    print(f"{variant}: unavailable ({err})", flush=True)
                    continue
                row["round"] = round_index
                rows.append(row)
                print(
                    f"{variant:>17}: {row['crystals_per_s']:>9} crystals/s, warm-up {row['warmup_s']} s "
                    f"({row['warmup_steps']} steps), peak {row['peak_memory_mb'] or '-'} MB",
                    flush=True,
                )
    if args.out is not None and rows:
        write_csv_rows(args.out, rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
