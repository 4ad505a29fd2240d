"""Our segment ops and Set2Set against PyG's, forward + backward, in one process (issue 12, part 3).

PyG is a hard dependency, so ``sagnn_lightning.nn`` uses PyG's ``scatter``/``softmax`` wherever they are as fast
as ours, and keeps its own only where this script measures it faster. Each case checks that both give the same
values, then times ``op(...).sum().backward()`` (median of ``--rounds`` rounds, taking turns).

    OMP_NUM_THREADS=1 python benchmarks/scatter_ops.py --out benchmarks/results/scatter_ops_cpu.csv
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch_geometric.nn.aggr import Set2Set as PygSet2Set
from torch_geometric.utils import scatter as pyg_scatter
from torch_geometric.utils import softmax as pyg_softmax

from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.nn.readout import Set2Set
from sagnn_lightning.nn.scatter import scatter_max, scatter_mean, scatter_softmax, scatter_sum


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn().sum().backward()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/scatter_ops_cpu.csv")
    args = parser.parse_args()
    torch.manual_seed(0)
    # a batch of 32 phonons-sized crystals: ~600 atoms, ~6,000 edges, width 32; attention logits [atoms, 8 heads]
    edges, atoms, graphs = 6000, 600, 32
    src = torch.randn(edges, 32, requires_grad=True)
    index = torch.randint(0, atoms, (edges,)).sort().values
    logits = torch.randn(atoms, 8, requires_grad=True)
    batch = torch.randint(0, graphs, (atoms,)).sort().values
    x = torch.randn(atoms, 32, requires_grad=True)
    ours_s2s = Set2Set(32, 3)
    pyg_s2s = PygSet2Set(32, 3)
    pyg_s2s.load_state_dict(ours_s2s.state_dict())  # same parameter names: checkpoints load into either
    cases = {
        "scatter sum [6000,32]->600": (
            lambda: scatter_sum(src, index, atoms),
            lambda: pyg_scatter(src, index, 0, atoms, "sum"),
        ),
        "scatter mean [6000,32]->600": (
            lambda: scatter_mean(src, index, atoms),
            lambda: pyg_scatter(src, index, 0, atoms, "mean"),
        ),
        "scatter max [6000,32]->600": (
            lambda: scatter_max(src, index, atoms),
            lambda: pyg_scatter(src, index, 0, atoms, "max"),
        ),
        "softmax [600,8] in 32": (
            lambda: scatter_softmax(logits, batch, graphs),
            lambda: pyg_softmax(logits, batch, num_nodes=graphs),
        ),
        "Set2Set(32, 3) [600,32] in 32": (
            lambda: ours_s2s(x, batch, graphs),
            lambda: pyg_s2s(x, batch, dim_size=graphs),
        ),
    }
    rows = []
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); forward + backward, median of {args.rounds}"
    )
    for name, (ours, pyg) in cases.items():
        torch.testing.assert_close(ours(), pyg(), rtol=1e-6, atol=1e-6)
        times: dict[str, list[float]] = {"ours": [], "pyg": []}
        for _ in range(args.rounds):
            times["ours"].append(_time(ours, args.repeats))
            times["pyg"].append(_time(pyg, args.repeats))
        o, p = statistics.median(times["ours"]), statistics.median(times["pyg"])
        print(f"{name:32s} ours {o:8.1f} us   PyG {p:8.1f} us   PyG / ours {p / o:.2f}")
        rows.append({"case": name, "ours_us": round(o, 1), "pyg_us": round(p, 1), "pyg_over_ours": round(p / o, 3)})
    write_csv_rows(args.out, rows)


if __name__ == "__main__":
    main()
