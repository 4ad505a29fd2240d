"""Training speed and memory of SA-GNN against the peers users actually run.

Same machine, same real crystals, same batches, one process, models taking turns over several rounds
(single runs on a 2-core CPU vary by ±20 %): crystals/s for forward + backward, the median over rounds.

Peers:
- matgl 4.1.2 ``MEGNet`` (PyG backend), fed our periodic edges as ``pbc_offshift``;
- PyTorch Geometric ``SchNet`` with its ``interaction_graph`` replaced by our periodic edges (its own
  ``radius_graph`` needs pyg-lib and ignores periodicity);
- a CGCNN built from PyG's ``CGConv`` (Xie & Grossman 2018: 64 features, 3 convolutions, 41 Gaussians, mean pool).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` per model in-process; on CPU, peak RSS growth of
a fresh subprocess per model (a process-wide peak cannot be split between models on the CPU).

Also: cost vs crystal size (perovskite supercells, 5 → 200 atoms per cell).

A peer whose package is missing (e.g. matgl, the ``bench`` extra) is not timed: its CSV row says
``status=unavailable: <reason>`` and the ratios are taken against the next available reference.
``--device cuda`` runs everything on the GPU (SA-GNN with its default ``attention_backend="auto"``) and names
the files ``*_cuda.csv``; the CPU files keep their names.

Run:  python benchmarks/peers.py --data ../shared/data/matbench/matbench_phonons.json.gz --out benchmarks/results
      python benchmarks/peers.py --device cuda --data <structures file> --out <folder>
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from sagnn_lightning.data import collate_graphs, structure_to_graph
from sagnn_lightning.data.readers import read_structures
from sagnn_lightning.files import atomic_write
from sagnn_lightning.models import SAGNN
from sagnn_lightning.nn.geometry import bond_lengths, bond_vectors

CUTOFF = 5.0


# ----------------------------------------------------------------------------------- peers
class CGCNN(nn.Module):
    """CGCNN (Xie & Grossman, PRL 2018) from PyG's ``CGConv``: embedding → 3 × CGConv → mean pool → MLP."""

    def __init__(self, channels: int = 64, num_gaussians: int = 41, num_convs: int = 3, hidden: int = 128) -> None:
        super().__init__()
        from torch_geometric.nn import CGConv

        from sagnn_lightning.nn.basis import GaussianExpansion

        self.embedding = nn.Embedding(101, channels)
        self.expansion = GaussianExpansion(0.0, CUTOFF, num_gaussians, CUTOFF / (num_gaussians - 1))
        self.convs = nn.ModuleList(CGConv(channels, dim=num_gaussians, batch_norm=True) for _ in range(num_convs))
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.Softplus(), nn.Linear(hidden, 1))

    def forward(self, batch) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        d = bond_lengths(batch.pos.float(), batch.lattice, batch.edge_index, batch.image_offsets, batch.batch)
        edge_attr = self.expansion(d)
        x = self.embedding(batch.atomic_numbers)
        flow = batch.edge_index.flip(0)  # PyG messages flow edge_index[0] → edge_index[1]
        for conv in self.convs:
            x = nn.functional.softplus(conv(x, flow, edge_attr))
        return self.head(global_mean_pool(x, batch.batch, size=batch.num_graphs))


class SchNetPeriodic(nn.Module):
    """PyG ``SchNet`` (its defaults) with our periodic edges as its interaction graph."""

    def __init__(self) -> None:
        super().__init__()
        from torch_geometric.nn.models import SchNet

        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None
        self.schnet = SchNet(cutoff=CUTOFF, interaction_graph=self._interaction_graph)

    def _interaction_graph(self, pos, batch):
        return self._edges

    def forward(self, batch) -> torch.Tensor:
        pos = batch.pos.float()
        d = bond_lengths(pos, batch.lattice, batch.edge_index, batch.image_offsets, batch.batch)
        self._edges = (batch.edge_index.flip(0), d)
        return self.schnet(batch.atomic_numbers, pos, batch.batch)


class MatglMEGNet(nn.Module):
    """matgl's PyG ``MEGNet`` with MEGNet's published sizes, fed our periodic edges."""

    def __init__(self) -> None:
        super().__init__()
        from matgl.models import MEGNet

        self.megnet = MEGNet(
            dim_node_embedding=16,
            dim_edge_embedding=100,
            dim_state_embedding=2,
            nblocks=3,
            hidden_layer_sizes_input=(64, 32),
            hidden_layer_sizes_conv=(64, 64, 32),
            hidden_layer_sizes_output=(32, 16),
            cutoff=CUTOFF,
            gauss_width=0.5,
        )
        self.num_types = len(self.megnet.element_types)

    def forward(self, batch) -> torch.Tensor:
        from types import SimpleNamespace

        pos = batch.pos.float()
        shift = bond_vectors(pos, batch.lattice, batch.edge_index, batch.image_offsets, batch.batch) - (
            pos[batch.edge_index[1]] - pos[batch.edge_index[0]]
        )
        # element index into matgl's element list (our atomic numbers are all within it for these data)
        node_type = (batch.atomic_numbers - 1).clamp(max=self.num_types - 1)
        g = SimpleNamespace(
            node_type=node_type,
            pos=pos,
            edge_index=batch.edge_index,
            pbc_offshift=shift,
            batch=batch.batch,
            num_graphs=batch.num_graphs,
        )
        state = torch.zeros(batch.num_graphs, 2, device=pos.device)
        return self.megnet(g, state_attr=state)


def make_models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "sagnn_mhsa8": lambda: SAGNN(heads=8, attention="last"),
        "sagnn_no_mhsa": lambda: SAGNN(attention="none"),
        "matgl_megnet": MatglMEGNet,
        "pyg_schnet": SchNetPeriodic,
        "pyg_cgcnn": CGCNN,
    }


#: preferred reference for the "vs" column, in order (the first available one is used)
REFERENCES = ("matgl_megnet", "sagnn_no_mhsa")


def available_models(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """``(names that build, {name: why not})``: a peer whose package is missing is recorded, not fatal."""
    factories = make_models()
    ok, missing = [], {}
    for name in names:
        try:
            factories[name]()
        except ImportError as err:  # an optional peer (matgl, PyG extras) that is not installed
            missing[name] = f"{type(err).__name__}: {err}"
        else:
            ok.append(name)
    return ok, missing


# ----------------------------------------------------------------------------------- timing
def load_batches(path: Path, batch_size: int, num_batches: int, device: str | torch.device = "cpu") -> list:
    table = read_structures(path)
    n = min(len(table.ids), batch_size * num_batches)
    graphs = [structure_to_graph(table.structures[i], cutoff=CUTOFF, name=table.ids[i]) for i in range(n)]
    return [collate_graphs(graphs[i : i + batch_size]).to(device) for i in range(0, n, batch_size)]


def _sync(batches: list) -> None:
    if batches and batches[0].pos.is_cuda:
        torch.cuda.synchronize(batches[0].pos.device)


def fwd_bwd(model: nn.Module, batches: list) -> float:
    """Seconds for forward + backward over all batches (on the batches' device)."""
    _sync(batches)
    start = time.perf_counter()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(batch).float().pow(2).mean().backward()
    _sync(batches)
    return time.perf_counter() - start


def peak_memory_cuda(model: nn.Module, batches: list) -> float:
    """Peak CUDA memory (MiB) above what was allocated before one forward + backward over the batches."""
    device = batches[0].pos.device
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fwd_bwd(model, batches)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def speed(batches: list, rounds: int, names: list[str]) -> dict[str, dict]:
    torch.manual_seed(0)
    factories = make_models()
    device = batches[0].pos.device
    models = {name: factories[name]().to(device) for name in names}
    crystals = sum(b.num_graphs for b in batches)
    for m in models.values():
        fwd_bwd(m, batches[:1])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(fwd_bwd(models[name], batches))
    return {
        name: {
            "params": sum(p.numel() for p in models[name].parameters()),
            "crystals_per_s": crystals / statistics.median(times[name]),
            "spread": (max(times[name]) - min(times[name])) / statistics.median(times[name]),
        }
        for name in names
    }


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def peak_memory_subprocess(name: str, data: Path, batch_size: int, num_batches: int) -> float:
    """Peak RSS growth (MiB) of one model's forward+backward over the batches, in a fresh process.

    Linux only: the process's high-water mark is reset (``clear_refs`` 5) after the data are loaded and
    the model built, so loading costs are not counted.
    """
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import peers; from pathlib import Path;"
        f"b = peers.load_batches(Path({str(data)!r}), {int(batch_size)}, {int(num_batches)});"
        f"m = peers.make_models()[{name!r}]();"
        "base = peers._rss_kib('VmRSS'); open('/proc/self/clear_refs', 'w').write('5');"
        "peers.fwd_bwd(m, b); print((peers._rss_kib('VmHWM') - base) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def size_scaling(
    rounds: int,
    names: Sequence[str] = ("sagnn_mhsa8", "sagnn_no_mhsa", "matgl_megnet"),
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Forward+backward cost vs atoms per cell, on supercells of one real perovskite."""
    from pymatgen.core import Structure

    table = read_structures(
        Path(__file__).resolve().parents[1] / "sagnn_lightning/data/samples/mp_abx3_perovskites.csv.gz"
    )
    base = table.structures[0]
    rows = []
    for scale in [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (4, 2, 2), (4, 4, 2), (5, 4, 2)]:
        s: Structure = base * scale
        batch = collate_graphs([structure_to_graph(s, cutoff=CUTOFF)] * 8).to(device)
        for name in names:
            torch.manual_seed(0)
            m = make_models()[name]().to(device)
            fwd_bwd(m, [batch])
            t = statistics.median(fwd_bwd(m, [batch]) for _ in range(rounds))
            rows.append(
                {
                    "model": name,
                    "atoms_per_cell": len(s),
                    "edges_per_cell": batch.edge_index.shape[1] // 8,
                    "ms_per_crystal": 1e3 * t / 8,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/matbench/matbench_phonons.json.gz",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:k]; CUDA files are named *_cuda.csv")
    parser.add_argument("--no-plot", action="store_true", help="do not write the size-scaling PNG")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"

    batches = load_batches(args.data, args.batch_size, args.num_batches, device)
    names, missing = available_models(list(make_models()))
    for name, why in missing.items():
        print(f"{name}: unavailable ({why}); recorded, not timed", flush=True)
    results = speed(batches, args.rounds, names)
    memory_key = "peak_rss_mib" if device.type == "cpu" else f"peak_{device.type}_mib"
    if not args.skip_memory:
        for name in names:
            if device.type == "cpu":
                results[name][memory_key] = peak_memory_subprocess(name, args.data, args.batch_size, args.num_batches)
            else:
                torch.manual_seed(0)
                results[name][memory_key] = peak_memory_cuda(make_models()[name]().to(device), batches)
    ref_name = next((r for r in REFERENCES if r in results), names[0])
    ref = results[ref_name]["crystals_per_s"]
    where = (
        f"{torch.get_num_threads()} threads, device cpu"
        if device.type == "cpu"
        else f"device {device} ({torch.cuda.get_device_name(device)})"
    )
    print(f"{len(batches)} batches × {args.batch_size} crystals from {args.data.name}, {args.rounds} rounds, {where}")
    print(f"{'model':16s} {'params':>9s} {'crystals/s':>11s} {'vs ' + ref_name:>20s} {'spread':>7s} {'peak MiB':>9s}")
    for name, r in results.items():
        print(
            f"{name:16s} {r['params']:9d} {r['crystals_per_s']:11.1f} {r['crystals_per_s'] / ref:19.2f}x "
            f"{r['spread']:6.0%} {r.get(memory_key, float('nan')):9.1f}"
        )
    for name in missing:
        print(f"{name:16s} unavailable")
    rows = [{"model": k, **v, "status": "ok"} for k, v in results.items()]
    rows += [{"model": k, "status": f"unavailable: {why}"} for k, why in missing.items()]
    _write_csv(args.out / f"peers_speed{suffix}.csv", rows)
    if not args.skip_scaling:
        scaling_names = [n for n in ("sagnn_mhsa8", "sagnn_no_mhsa", "matgl_megnet") if n in results]
        rows = size_scaling(args.rounds, scaling_names, device)
        _write_csv(args.out / f"peers_size_scaling{suffix}.csv", rows)
        if not args.no_plot:
            _plot(rows, args.out / f"peers_size_scaling{suffix}.png", device.type.upper())
        for row in rows:
            print(f"{row['model']:16s} atoms/cell {row['atoms_per_cell']:4d}  {row['ms_per_crystal']:8.2f} ms/crystal")


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))  # rows may lack columns (unavailable peers)
    with atomic_write(path, "w", newline="") as fh:  # umask respected; a replaced file keeps its mode
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _plot(rows: list[dict], path: Path, device: str = "CPU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in sorted({r["model"] for r in rows}):
        pts = [(r["atoms_per_cell"], r["ms_per_crystal"]) for r in rows if r["model"] == name]
        ax.loglog(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("atoms per cell")
    ax.set_ylabel(f"fwd+bwd ms per crystal ({device})")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
