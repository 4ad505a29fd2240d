"""Time per training step of SA-GNN under the options issue 11 asks about, in one process, interleaved.

Variants (same model weights, same real batches, taking turns over ``--rounds`` rounds; the median of the
per-round crystals/s is reported with the ratio to the eager float32 baseline):

- ``eager``: the baseline (what ``fit`` does today);
- ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around forward + loss (useful only on CPUs with
  native bf16: ``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``; the script reports whether they are there);
- ``compile``: ``torch.compile(model, dynamic=True)`` (its warm-up, the first steps until the time per step
  settles, is reported separately and not counted).

A step is forward + L1 loss + backward + Adam step on a batch of ``--batch-size`` crystals. The threads
question (one run with 2 threads vs two runs with 1 thread each) needs separate processes: run this script
with ``OMP_NUM_THREADS=2`` and twice at once with ``OMP_NUM_THREADS=1`` and compare the crystals/s.

Run:  OMP_NUM_THREADS=1 python benchmarks/epoch_time.py --data ../shared/data/matbench/matbench_phonons.json.gz
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from sagnn_lightning.data import collate_graphs, structure_to_graph
from sagnn_lightning.data.readers import read_structures
from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.models import SAGNN

VARIANTS = ("eager", "bf16", "compile")


def cpu_flags() -> set[str]:
    """The CPU's bf16-related feature flags (Linux), e.g. ``{"avx512_bf16", "amx_bf16"}``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for flag in ("avx512_bf16", "amx_bf16", "avx512f") if f" {flag}" in text}


def make_batches(path: str, batch_size: int, count: int) -> list:
    inputs = read_structures(path, on_error="skip")
    graphs = []
    for sid, structure in zip(inputs.ids, inputs.structures):
        graph = structure_to_graph(structure, cutoff=5.0, name=str(sid))
        graph.y = torch.zeros(1, 1)
        graphs.append(graph)
        if len(graphs) == batch_size * count:
            break
    return [collate_graphs(graphs[k : k + batch_size]) for k in range(0, len(graphs), batch_size)]


def model_args(config: str | None) -> dict:
    """``SAGNN`` arguments from a recipe YAML's ``model.model.init_args`` (``{}`` without one)."""
    if not config:
        return {}
    import yaml

    return dict(yaml.safe_load(Path(config).read_text())["model"]["model"]["init_args"])


def step_fn(model: torch.nn.Module, variant: str):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = torch.compile(model, dynamic=True) if variant == "compile" else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant == "bf16" else nullcontext

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = (run(batch).float() - batch.y).abs().mean()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/matbench/matbench_phonons.json.gz")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=40, help="steps run before timing (compile settles)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", default="benchmarks/results/epoch_time.csv")
    parser.add_argument(
        "--model-config", default=None, help="YAML whose model.model.init_args build the model (default: SAGNN())"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    batches = make_batches(args.data, args.batch_size, args.batches)
    base = SAGNN(**model_args(args.model_config))
    steps, warmup = {}, {}
    for variant in args.variants:
        step = step_fn(copy.deepcopy(base), variant)
        start = time.perf_counter()
        for k in range(args.warmup_steps):
            step(batches[k % len(batches)])
        warmup[variant] = time.perf_counter() - start
        steps[variant] = step
    rates: dict[str, list[float]] = {v: [] for v in args.variants}
    crystals = sum(int(b.num_graphs) for b in batches)
    for _ in range(args.rounds):
        for variant in args.variants:
            start = time.perf_counter()
            for batch in batches:
                steps[variant](batch)
            rates[variant].append(crystals / (time.perf_counter() - start))
    baseline = statistics.median(rates["eager"]) if "eager" in rates else None
    machine = (
        f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), bf16 flags: {sorted(cpu_flags() - {'avx512f'}) or 'none'}"
    )
    print(machine)
    rows = []
    for variant in args.variants:
        median = statistics.median(rates[variant])
        ratio = median / baseline if baseline else float("nan")
        rows.append(
            {
                "variant": variant,
                "crystals_per_s": round(median, 1),
                "ratio_to_eager": round(ratio, 3),
                "min": round(min(rates[variant]), 1),
                "max": round(max(rates[variant]), 1),
                "warmup_s": round(warmup[variant], 1),
                "machine": machine,
            }
        )
        print(
            f"{variant:8s} {median:8.1f} crystals/s  ×{ratio:.2f}  (rounds {min(rates[variant]):.0f}–"
            f"{max(rates[variant]):.0f}; warm-up {warmup[variant]:.0f} s)"
        )
    write_csv_rows(args.out, rows)


if __name__ == "__main__":
    main()
