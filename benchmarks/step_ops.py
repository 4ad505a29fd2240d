"""Dispatched operations and host synchronisations per training step, on the CPU (deterministic).

A GPU that trains SA-GNN waits for the host to dispatch many small kernels (docs/benchmarks/speed.md): the number
of aten operations per step is the host's work, whatever the device. This script counts them with a
``TorchDispatchMode`` for one training step (forward, L1 loss, backward, optimizer) of each model on one real
batch, and counts the host synchronisations among them (``_local_scalar_dense`` = ``.item()``, ``nonzero``,
``masked_select``, ``is_nonzero``, boolean-mask indexing), which stall a GPU's queue.

Models: SA-GNN at the recipes' configuration (``recipes/configs/sagnn.yaml``), the same without MHSA, the
composition model (``recipes/configs/composition.yaml``, on element graphs of the same crystals), matgl's MEGNet
(when matgl is installed) and a PyG CGCNN (``benchmarks/peers.py``).

    python benchmarks/step_ops.py --out benchmarks/results/step_ops.csv
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sagnn_lightning.data import collate_graphs
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.graph import GraphSettings
from sagnn_lightning.data.inputs import item_to_graph
from sagnn_lightning.data.readers import iter_inputs
from sagnn_lightning.data.samples import sample_path
from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.models import SAGNN, CompositionSAGNN

REPO = Path(__file__).resolve().parents[1]
PHONONS = REPO.parent / "shared" / "data" / "matbench" / "matbench_phonons.csv.gz"

#: aten ops that copy a device value to the host
SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero")


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the ``with`` block, and the host synchronisations among them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] += 1
        if name in SYNCING:
            self.syncs[name] += 1
        elif name in ("aten.index", "aten.index_put", "aten.index_put_"):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.syncs[f"{name} (boolean mask)"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def recipe_args(config: Path) -> dict[str, Any]:
    """``model.model.init_args`` of a recipe YAML."""
    return dict(yaml.safe_load(config.read_text())["model"]["model"]["init_args"])


def real_batches(batch_size: int, skip: int = 0) -> dict[str, Any]:
    """One batch of real crystals (phonons when ``../shared`` is there, else the bundled perovskites; after the
    first ``skip`` readable ones) as crystal graphs (5 Å) and as element graphs, with zero targets."""
    source = PHONONS if PHONONS.is_file() else sample_path("mp_abx3_perovskites")
    items = []
    for entry in iter_inputs(source):
        if entry.error is None:
            if skip:
                skip -= 1
                continue
            items.append(entry)
        if len(items) == batch_size:
            break
    crystals = [item_to_graph(e.item, GraphSettings(cutoff=5.0), e.label) for e in items]
    formulas = [_formula(e.item) for e in items]
    elements = [item_to_graph(f, CompositionSettings(), f) for f in formulas]
    for graph in [*crystals, *elements]:
        graph.y = torch.zeros(1, 1)
    return {"crystal": collate_graphs(crystals), "composition": collate_graphs(elements), "source": source.name}


def _formula(item: Any) -> str:
    from pymatgen.core import Structure

    structure = item if isinstance(item, Structure) else Structure.from_str(item, fmt="cif")
    return structure.composition.formula


def _peer(name: str) -> Callable[[], nn.Module]:
    spec = importlib.util.spec_from_file_location("peers", REPO / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    return peers.make_models()[name]


def models() -> dict[str, tuple[Callable[[], nn.Module], str]]:
    """``name -> (factory, batch kind)``."""
    sagnn = recipe_args(REPO / "recipes" / "configs" / "sagnn.yaml")
    composition = recipe_args(REPO / "recipes" / "configs" / "composition.yaml")
    return {
        "sagnn_recipe": (lambda: SAGNN(**sagnn), "crystal"),
        "sagnn_recipe_no_mhsa": (lambda: SAGNN(**{**sagnn, "attention": "none"}), "crystal"),
        "composition_recipe": (lambda: CompositionSAGNN(**composition), "composition"),
        "matgl_megnet": (_peer("matgl_megnet"), "crystal"),
        "pyg_cgcnn": (_peer("pyg_cgcnn"), "crystal"),
    }


#: Adam's implementations: torch's default on the CPU (a for-loop over the parameters), foreach (torch's default
#: on CUDA), fused (the recipes' choice since 2026-12-06)
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adam_for_loop": {"foreach": False},
    "adam_foreach": {"foreach": True},
    "adam_fused": {"fused": True},
}


def count_step(model: nn.Module, batch: Any, optimizer_kind: str = "adam_fused") -> dict[str, Any]:
    """Ops and syncs of one training step, split into forward + loss, backward, optimizer (after a warm-up step
    that creates Adam's state)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **OPTIMIZERS[optimizer_kind])

    def step(counters: list[OpCounter] | None) -> None:
        optimizer.zero_grad(set_to_none=True)
        phases: list[Any] = list(counters) if counters else [_null(), _null(), _null()]
        with phases[0]:
            loss = (model(batch).float() - batch.y).abs().mean()
        with phases[1]:
            loss.backward()
        with phases[2]:
            optimizer.step()

    step(None)
    counters = [OpCounter(), OpCounter(), OpCounter()]
    step(counters)
    forward, backward, opt = counters
    syncs = forward.syncs + backward.syncs + opt.syncs
    return {
        "forward_loss_ops": forward.total,
        "backward_ops": backward.total,
        "optimizer_ops": opt.total,
        "fwd_bwd_ops": forward.total + backward.total,
        "step_ops": forward.total + backward.total + opt.total,
        "host_syncs": sum(syncs.values()),
        "sync_ops": " ".join(f"{k}x{v}" for k, v in sorted(syncs.items())),
        "parameter_tensors": sum(1 for _ in model.parameters()),
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=None, help="default: all that build")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: print only)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    batches = real_batches(args.batch_size)
    rows = []
    for name, (factory, kind) in models().items():
        if args.models and name not in args.models:
            continue
        try:
            model = factory()
        except ImportError as err:
            print(f"{name}: not installed ({err})")
            continue
        for optimizer_kind in OPTIMIZERS:
            row = {"model": name, "optimizer": optimizer_kind, "batch": kind}
            row |= count_step(model.train(), batches[kind], optimizer_kind)
            rows.append(row)
            print(
                f"{name:>22} {row['optimizer']:>14}: fwd+loss {row['forward_loss_ops']:>5}, bwd {row['backward_ops']:>5}, "
                f"opt {row['optimizer_ops']:>5}, step {row['step_ops']:>5}, host syncs {row['host_syncs']} {row['sync_ops']}",
                flush=True,
            )
    if args.out is not None:
        for row in rows:
            row["data"] = f"{batches['source']}, first {args.batch_size} crystals"
        write_csv_rows(args.out, rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
