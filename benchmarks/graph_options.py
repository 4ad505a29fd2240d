"""What a graph option costs: edges per atom, graph-building rate and training rate, per task and option.

Options are ``CUTOFF`` (every neighbour within ``CUTOFF`` Å, the recipes' default at 5) or ``CUTOFF:K`` (the ``K``
nearest within ``CUTOFF`` Å, e.g. ``8:24`` as DenseGNN and coGN, ``8:12`` as ALIGNN). For each task (a CSV/JSON
table of crystals, e.g. the matbench CSV twins in ``../shared/data/matbench``), the first ``--crystals`` crystals:

* **edges per atom** and **graphs per second** of :func:`~sagnn_lightning.data.structure_to_graph` (this process,
  no cache);
* **crystals per second of training**: the recipes' SA-GNN (``recipes/configs/sagnn.yaml``, its basis spanning the
  option's cutoff), forward + backward + fused Adam over batches of ``--batch-size``; the options run in turn,
  ``--rounds`` times (interleaved), and the median round counts, so the ratio to the first option comes from the
  same machine state.

    OMP_NUM_THREADS=1 python benchmarks/graph_options.py --options 5 8:24 8:12 \\
        --data ../shared/data/matbench/matbench_phonons.csv.gz ../shared/data/matbench/matbench_perovskites.csv.gz \\
        --out benchmarks/results/graph_options_cpu.csv
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from sagnn_lightning.data import structure_to_graph
from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.readers import read_structures
from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.models import SAGNN

REPO = Path(__file__).resolve().parents[1]


def parse_option(text: str) -> tuple[float, int | None]:
    """``"5"`` → ``(5.0, None)``; ``"8:24"`` → ``(8.0, 24)``."""
    cutoff, _, k = text.partition(":")
    return float(cutoff), (int(k) if k else None)


def option_name(cutoff: float, k: int | None) -> str:
    return f"radius {cutoff:g} Å" if k is None else f"{k} nearest within {cutoff:g} Å"


def recipe_model(cutoff: float) -> SAGNN:
    """The recipes' SA-GNN with its Gaussian basis spanning ``cutoff`` (as the CLI links them)."""
    config = yaml.safe_load((REPO / "recipes" / "configs" / "sagnn.yaml").read_text())
    args = dict(config["model"]["model"]["init_args"])
    args.update(cutoff=cutoff, attention_backend="torch")
    return SAGNN(**args)


def build_graphs(structures: list, cutoff: float, k: int | None) -> tuple[list, float]:
    """The graphs (a zero target each) and the seconds they took."""
    start = time.perf_counter()
    graphs = [structure_to_graph(s, cutoff=cutoff, max_neighbors=k) for s in structures]
    seconds = time.perf_counter() - start
    for graph in graphs:
        graph.y = torch.zeros(1, 1)
    return graphs, seconds


def train_step(model: torch.nn.Module) -> Any:
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, fused=True)

    def step(batch: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = (model(batch) - batch.y).abs().mean()
        loss.backward()
        optimizer.step()

    return step


def measure_task(path: str, options: list[tuple[float, int | None]], args: argparse.Namespace) -> list[dict]:
    inputs = read_structures(path, on_error="skip")
    structures = list(inputs.structures)[: args.crystals]
    task = Path(path).name.split(".")[0]
    rows, steps, batches = [], {}, {}
    torch.manual_seed(0)
    base = {option: recipe_model(option[0]) for option in options}
    for option in options:
        graphs, seconds = build_graphs(structures, *option)
        atoms = sum(int(g.num_nodes) for g in graphs)
        edges = sum(int(g.edge_index.shape[1]) for g in graphs)
        batches[option] = [
            collate_graphs(graphs[j : j + args.batch_size]) for j in range(0, len(graphs), args.batch_size)
        ]
        steps[option] = train_step(copy.deepcopy(base[option]))
        for batch in batches[option][:2]:  # warm-up: allocator, first-call paths
            steps[option](batch)
        rows.append(
            {
                "task": task,
                "option": option_name(*option),
                "crystals": len(graphs),
                "edges_per_atom": round(edges / atoms, 2),
                "graphs_per_s": round(len(graphs) / seconds, 1),
            }
        )
    rates: dict[tuple, list[float]] = {option: [] for option in options}
    for _ in range(args.rounds):
        for option in options:
            start = time.perf_counter()
            for batch in batches[option]:
                steps[option](batch)
            rates[option].append(len(structures) / (time.perf_counter() - start))
    first = statistics.median(rates[options[0]])
    for row, option in zip(rows, options):
        median = statistics.median(rates[option])
        row |= {
            "train_crystals_per_s": round(median, 1),
            "train_ratio_to_first": round(median / first, 3),
            "train_min": round(min(rates[option]), 1),
            "train_max": round(max(rates[option]), 1),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, help="tables of crystals (CSV/JSON with CIF or dicts)")
    parser.add_argument("--options", nargs="+", default=["5", "8:24", "8:12"], help="CUTOFF or CUTOFF:K each")
    parser.add_argument("--crystals", type=int, default=256, help="crystals per task (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="CSV file for the table")
    args = parser.parse_args(argv)
    options = [parse_option(o) for o in args.options]
    machine = (
        f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )
    rows = [row | {"machine": machine} for path in args.data for row in measure_task(path, options, args)]
    print(machine)
    print("| task | graph | edges per atom | graphs/s (build) | training crystals/s | × first |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['task']} | {row['option']} | {row['edges_per_atom']} | {row['graphs_per_s']:,.0f} | "
            f"{row['train_crystals_per_s']:,.0f} | {row['train_ratio_to_first']:.2f} |"
        )
    if args.out:
        write_csv_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
