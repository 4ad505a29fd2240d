"""The eager-mode fusions against the same modules run one by one, interleaved in one process, on the CPU.

The fusions (``sagnn_lightning/nn/dense.py``: a dense stack with shifted softplus as one autograd node;
``nn/paired_set2set.py``: both Set2Sets in one pass, as one autograd node; ``nn/gathered_linear.py``: the edge
update's first layer as one autograd node; ``nn/megnet_block.py``: the blocks' mean divisors computed once per
batch, each mean one node; ``nn/concat.py``: feature concatenations with a one-split backward;
``nn/fused_attention.py``: the attention layer's projections and padded attention as one node) exist to cut the operations that a GPU waits on (``benchmarks/step_ops.py``). This script checks the other
half of the bargain: the CPU, which is compute-bound, must not get slower. For each model it reports the aten ops
per forward + backward and the crystals/s of whole training steps (forward, L1 loss, backward, fused Adam) with
the fusions (``fused``) and without them (``unfused``, what the code did before), taking turns over ``--rounds``
rounds on the same weights and real batches; the median per-round throughput and the ratio are printed.

    OMP_NUM_THREADS=1 python benchmarks/eager_fusions.py --out benchmarks/results/eager_fusions_cpu.csv
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch_geometric.utils as pyg_utils
from torch import Tensor

from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.nn import attention, dense, megnet_block, readout
from sagnn_lightning.nn.gathered_linear import gathered_linear_reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_ops  # noqa: E402  (a sibling script)


class _NoSegments:
    @staticmethod
    def of(*args: object, **kwargs: object) -> None:
        return None


def _pyg_mean(src: Tensor, index: Tensor, dim_size: int, counts: Tensor | None = None) -> Tensor:
    return pyg_utils.scatter(src, index, dim=0, dim_size=dim_size, reduce="mean")


def _two_set2sets(first, second, x1: Tensor, i1: Tensor, x2: Tensor, i2: Tensor, dim_size: int) -> Tensor:
    return torch.cat([first(x1, i1, dim_size), second(x2, i2, dim_size)], dim=-1)


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Inside: the modules run one by one, as before the fusions (``nn.Sequential`` forwards, two Set2Set calls,
    PyG's scatter mean per block, autograd's graph for the edge update's first layer, ``torch.cat``, the attention
    layer's ``nn.Linear`` + padded SDPA path). Used by this benchmark and by the test that compares the two."""
    patches = [
        (dense.MLP, "_fused_plan", lambda self, x, modules: None),
        (readout, "paired_set2set", _two_set2sets),
        (megnet_block, "BlockSegments", _NoSegments),
        (megnet_block, "scatter_mean", _pyg_mean),
        (megnet_block, "gathered_linear", _concatenated_first_layer),
        (megnet_block, "concat_features", _torch_cat),
        (readout, "concat_features", _torch_cat),
        (attention.AtomSelfAttention, "_fusable", lambda self, *args: False),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _torch_cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors, dim=-1)


def _concatenated_first_layer(*args: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`gathered_linear_reference`, taking (and ignoring) the block's cache of weight views."""
    return gathered_linear_reference(*args[:8])


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, fused: bool) -> float:
    context = contextlib.nullcontext() if fused else unfused()
    with context:
        t0 = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            (model(batch).float() - batch.y).abs().mean().backward()
            optimizer.step()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="batches per round (real phonons crystals)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=["sagnn_recipe", "sagnn_recipe_no_mhsa", "composition_recipe"])
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(torch.get_num_threads()))
    data = [step_ops.real_batches(args.batch_size, skip=k * args.batch_size) for k in range(args.batches)]
    rows = []
    for name in args.models:
        factory, kind = step_ops.models()[name]
        torch.manual_seed(0)
        model = factory().train()
        batches = [d[kind] for d in data]
        ops = {}
        for fused in (True, False):
            with contextlib.nullcontext() if fused else unfused():
                ops[fused] = step_ops.count_step(model, batches[0])["fwd_bwd_ops"]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        _steps(model, optimizer, batches[:2], True)  # warm-up of both paths
        _steps(model, optimizer, batches[:2], False)
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for fused in (True, False):
                crystals = sum(int(b.num_graphs) for b in batches)
                rates[fused].append(crystals / _steps(model, optimizer, batches, fused))
        fused_rate, plain_rate = statistics.median(rates[True]), statistics.median(rates[False])
        row = {
            "model": name,
            "fwd_bwd_ops_fused": ops[True],
            "fwd_bwd_ops_unfused": ops[False],
            "crystals_per_s_fused": round(fused_rate, 1),
            "crystals_per_s_unfused": round(plain_rate, 1),
            "speed_ratio": round(fused_rate / plain_rate, 3),
            "threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "rounds": args.rounds,
        }
        rows.append(row)
        print(
            f"{name:>22}: ops {ops[False]} -> {ops[True]}; crystals/s unfused {plain_rate:.1f}, fused {fused_rate:.1f} "
            f"(x{fused_rate / plain_rate:.3f})",
            flush=True,
        )
    if args.out is not None:
        write_csv_rows(args.out, rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
