"""Attention kernel benchmark: Triton packed varlen vs padded SDPA (key mask) vs a per-crystal loop.

Batches of crystals are drawn from real atom-count distributions (column ``nsites`` of the shared
matbench ``.csv.gz`` files: perovskites, jdft2d, phonons) and from a synthetic long-tail "mp-like" mix
(log-normal, median 10 atoms, σ = 0.9, clipped to 1–300: most cells small, about one 100+-atom cell
per 256). For each batch it measures forward, backward and forward+backward wall time (median of
``--repeats``) and, on CUDA, the peak memory above the inputs; it prints ratios against the Triton
kernel (on CPU: against the padded path) and writes a CSV.

Methods (baselines imported from :mod:`sagnn_lightning.kernels.reference`):

- ``triton``: :func:`sagnn_lightning.kernels.triton_attention.varlen_attention_triton` (CUDA only);
- ``padded``: :func:`sagnn_lightning.kernels.reference.varlen_attention_padded` (the torch backend:
  pack to ``(B, H, max_atoms, D)``, ``scaled_dot_product_attention`` with a boolean key mask);
- ``loop``: one ``scaled_dot_product_attention`` call per crystal (no padding, ``B`` launches).

Usage (from the repository root; needs ../shared/data or ``--data-root``)::

    python benchmarks/attention.py                         # CUDA: all methods; CPU: padded + loop
    python benchmarks/attention.py --batch-sizes 256 --dtype bfloat16 --heads 8 --head-dim 16
    python benchmarks/attention.py --quick                 # small CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, even when an installed copy exists

from sagnn_lightning.kernels.dispatch import triton_available  # noqa: E402 (after the sys.path setup above)
from sagnn_lightning.kernels.reference import varlen_attention_padded  # noqa: E402 (after the sys.path setup above)

MATBENCH_FILES = {
    "matbench_perovskites": "matbench/matbench_perovskites_fold0_train.csv.gz",
    "matbench_jdft2d": "matbench/matbench_jdft2d.csv.gz",
    "matbench_phonons": "matbench/matbench_phonons.csv.gz",
}


# ------------------------------------------------------------------------------------ inputs
def atom_count_pools(
    data_root: Path, rng: np.random.Generator, names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """``name -> array of atom counts`` to sample batches from (``names``: only these; the synthetic
    ``mp_like_long_tail`` needs no data file)."""
    pools = {}
    for name, rel in MATBENCH_FILES.items():
        if names is not None and name not in names:
            continue
        path = data_root / rel
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: pass --data-root pointing at the shared data folder (with matbench/)"
            )
        pools[name] = pd.read_csv(path, usecols=["nsites"])["nsites"].to_numpy()
    pools["mp_like_long_tail"] = np.clip(np.rint(np.exp(rng.normal(math.log(10.0), 0.9, 200_000))), 1, 300).astype(int)
    return pools


def per_crystal_loop(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scale: float
) -> torch.Tensor:
    """One SDPA call per crystal on its slice; ``bounds`` is ``cu_seqlens`` on the host."""
    outs = []
    for start, end in itertools.pairwise(bounds):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
    return torch.cat(outs)


@dataclass
class Row:
    distribution: str
    batch_size: int
    total_atoms: int
    max_atoms: int
    mean_atoms: float
    padding_fraction: float  # padded slots / (B · max_atoms)
    heads: int
    head_dim: int
    dtype: str
    device: str
    method: str
    fwd_ms: float
    bwd_ms: float
    fwd_bwd_ms: float
    peak_mem_mb: float  # CUDA peak allocated above the inputs during fwd+bwd; NaN on CPU


# ------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms (synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    method: Callable, q, k, v, do, device: torch.device, repeats: int, warmup: int
) -> tuple[float, float, float, float]:
    """Forward, backward (from a kept graph), forward+backward times in ms and CUDA peak MB."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def fwd() -> torch.Tensor:
        with torch.no_grad():
            return method(*leaves)

    def fwd_bwd() -> None:
        out = method(*leaves)
        torch.autograd.grad(out, leaves, do)

    def bwd_only() -> float:
        times = []
        for i in range(repeats + warmup):
            out = method(*leaves)
            _sync(device)
            start = time.perf_counter()
            torch.autograd.grad(out, leaves, do)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    t_fwd = time_ms(fwd, device, repeats, warmup)
    t_bwd = bwd_only()
    t_both = time_ms(fwd_bwd, device, repeats, warmup)
    peak = float("nan")
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fwd_bwd()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return t_fwd, t_bwd, t_both, peak


# ------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    rng = np.random.default_rng(args.seed)
    pools = atom_count_pools(Path(args.data_root), rng, list(args.distributions))
    methods: dict[str, Callable] = {}
    if device.type == "cuda" and triton_available():
        from sagnn_lightning.kernels.triton_attention import varlen_attention_triton

        methods["triton"] = lambda q, k, v, cu, L, bounds, scale: varlen_attention_triton(
            q, k, v, cu, L, scale=scale, validate=False
        )
    elif device.type == "cuda":
        print("Triton is not installed: timing the PyTorch paths only")
    methods["padded"] = lambda q, k, v, cu, L, bounds, scale: varlen_attention_padded(q, k, v, cu, L, scale=scale)
    methods["loop"] = lambda q, k, v, cu, L, bounds, scale: per_crystal_loop(q, k, v, bounds, scale)

    rows: list[Row] = []
    for dist in args.distributions:
        for batch_size in args.batch_sizes:
            counts = rng.choice(pools[dist], size=batch_size).tolist()
            bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
            total, longest = bounds[-1], max(counts)
            cu = torch.tensor(bounds, dtype=torch.int32, device=device)
            gen = torch.Generator(device="cpu").manual_seed(args.seed)
            q, k, v, do = (
                torch.randn(total, args.heads, args.head_dim, generator=gen).to(device, dtype) for _ in range(4)
            )
            scale = 1.0 / math.sqrt(args.head_dim)
            for name, fn in methods.items():

                def method(q_, k_, v_, fn=fn, cu=cu, longest=longest, bounds=bounds, scale=scale):
                    return fn(q_, k_, v_, cu, longest, bounds, scale)

                t_fwd, t_bwd, t_both, peak = measure(method, q, k, v, do, device, args.repeats, args.warmup)
                rows.append(
                    Row(
                        dist,
                        batch_size,
                        total,
                        longest,
                        total / batch_size,
                        1.0 - total / (batch_size * longest),
                        args.heads,
                        args.head_dim,
                        args.dtype,
                        device.type,
                        name,
                        t_fwd,
                        t_bwd,
                        t_both,
                        peak,
                    )
                )
                print(
                    f"{dist:22s} B={batch_size:4d} N={total:6d} max={longest:3d} {name:7s} "
                    f"fwd {t_fwd:8.2f} ms  bwd {t_bwd:8.2f} ms  fwd+bwd {t_both:8.2f} ms  peak {peak:8.1f} MB",
                    flush=True,
                )
    return rows


def print_ratios(rows: list[Row]) -> None:
    """Each method's time and memory divided by the fastest candidate's (Triton, else padded)."""
    keyed = {(r.distribution, r.batch_size, r.method): r for r in rows}
    print("\nratios (method / baseline; >1 means the baseline is faster or smaller)")
    for (dist, batch_size, method), row in keyed.items():
        base_name = "triton" if (dist, batch_size, "triton") in keyed else "padded"
        if method == base_name:
            continue
        base = keyed[(dist, batch_size, base_name)]
        mem = (
            row.peak_mem_mb / base.peak_mem_mb
            if base.peak_mem_mb == base.peak_mem_mb and base.peak_mem_mb > 0
            else float("nan")
        )
        print(
            f"{dist:22s} B={batch_size:4d} {method:7s}/{base_name:7s} fwd {row.fwd_ms / base.fwd_ms:6.2f}x  "
            f"bwd {row.bwd_ms / base.bwd_ms:6.2f}x  fwd+bwd {row.fwd_bwd_ms / base.fwd_bwd_ms:6.2f}x  mem {mem:6.2f}x"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-root", default=str(ROOT.parent / "shared" / "data"), help="folder holding matbench/*.csv.gz"
    )
    parser.add_argument("--distributions", nargs="+", default=[*MATBENCH_FILES, "mp_like_long_tail"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument(
        "--dtype", default=None, help="float32 | float16 | bfloat16 (default: bfloat16 on CUDA, float32 on CPU)"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is steadier on a shared machine)",
    )
    parser.add_argument("--quick", action="store_true", help="batch 64, long-tail + phonons only, 3 repeats")
    parser.add_argument("--csv", default=None, help="output CSV (default: benchmarks/results/attention_<cpu|cuda>.csv)")
    args = parser.parse_args(argv)
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.repeats = args.repeats or (3 if args.quick else 20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if not cuda else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch_sizes, args.distributions = [64], ["matbench_phonons", "mp_like_long_tail"]

    print(
        f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
        f"{torch.cuda.get_device_name() if cuda else f'CPU, {torch.get_num_threads()} threads'} | dtype {args.dtype}"
    )
    rows = run(args)
    print_ratios(rows)
    out = Path(args.csv or ROOT / "benchmarks" / "results" / f"attention_{'cuda' if cuda else 'cpu'}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
