"""Graph building benchmark: whole build (parse → graph → cache) vs a per-structure pymatgen loop.

Baseline (what CGCNN / ALIGNN-style loaders do): for each structure, parse it with pymatgen, call
``Structure.get_all_neighbors(cutoff)`` and assemble the edge list in Python (neighbours sorted by
distance, index / image / distance appended one by one), then make tensors. It writes no cache, which
only favours it. Ours: :func:`sagnn_lightning.data.cache.load_or_build_graphs` into an empty cache
folder (a miss), in-process and with worker processes; both run in the same process, same inputs.

Second part: peak resident memory while iterating (DataLoader, batches of 64) a cache of 10k and of
100k graphs (the shared perovskites replicated), each measured in a fresh subprocess.

Third part: ``Structure`` objects → graph one at a time, ours against matgl 4.1.2's ``Structure2Graph`` (the
``bench`` extra; skipped with a note when matgl is missing), interleaved, same structures, same edge counts.

Usage (from the repository root; needs ../shared/data)::

    python benchmarks/graph_build.py                       # throughput + RSS, prints tables
    python benchmarks/graph_build.py --skip-rss --repeats 1
    python benchmarks/graph_build.py --csv graph_build.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, even when an installed copy exists

from sagnn_lightning.data.batch import collate_graphs  # noqa: E402 (after the sys.path setup above)
from sagnn_lightning.data.cache import GraphDataset, load_or_build_graphs  # noqa: E402 (after the sys.path setup above)
from sagnn_lightning.data.graph import GraphSettings  # noqa: E402 (after the sys.path setup above)


# ------------------------------------------------------------------------------------ inputs
def load_inputs(shared: Path) -> dict[str, tuple[list[str], list, np.ndarray]]:
    """``name -> (ids, items, targets)`` for the benchmark datasets (real data only)."""
    out = {}
    abx3 = pd.read_csv(shared / "mp_abx3/mp_abx3_perovskites.csv.gz")
    out["mp_abx3 perovskites (CIF)"] = (abx3.material_id.tolist(), abx3.cif.tolist(), abx3[["band_gap"]].to_numpy())
    phon = pd.read_csv(shared / "matbench/matbench_phonons.csv.gz")
    out["matbench phonons (CIF)"] = (phon.mbid.tolist(), phon.cif.tolist(), phon[["last phdos peak"]].to_numpy())
    with gzip.open(shared / "matbench/matbench_phonons.json.gz", "rt") as f:
        table = json.load(f)
    ids = [f"mb-phonons-{i + 1:04d}" for i in table["index"]]
    out["matbench phonons (dict)"] = (ids, [r[0] for r in table["data"]], np.array([[r[1]] for r in table["data"]]))
    return out


# ---------------------------------------------------------------------------------- baseline
def loop_graph(structure: Structure, cutoff: float) -> dict[str, torch.Tensor]:
    """CGCNN/ALIGNN-style graph: ``get_all_neighbors`` + Python edge assembly."""
    all_nbrs = structure.get_all_neighbors(cutoff)
    src, dst, images, dists = [], [], [], []
    for i, nbrs in enumerate(all_nbrs):
        for nbr in sorted(nbrs, key=lambda x: x.nn_distance):
            src.append(i)
            dst.append(nbr.index)
            images.append(nbr.image)
            dists.append(nbr.nn_distance)
    return {
        "atomic_numbers": torch.tensor(structure.atomic_numbers, dtype=torch.long),
        "pos": torch.tensor(structure.cart_coords, dtype=torch.float64),
        "lattice": torch.tensor(structure.lattice.matrix, dtype=torch.float64)[None],
        "edge_index": torch.tensor([src, dst], dtype=torch.long),
        "image_offsets": torch.tensor(np.array(images).reshape(-1, 3), dtype=torch.long),
        "distances": torch.tensor(dists, dtype=torch.float64),
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (robust to other jobs on the machine)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def baseline_build(items: list, cutoff: float) -> tuple[float, int, float]:
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    edges = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in items:
            s = Structure.from_str(item, fmt="cif") if isinstance(item, str) else Structure.from_dict(item)
            edges += loop_graph(s, cutoff)["edge_index"].shape[1]
    return time.perf_counter() - t0, edges, cpu_seconds() - c0


def ours_build(ids, items, targets, settings, workers: int, cache_dir: Path) -> tuple[float, int, float, float]:
    fp = uuid.uuid4().hex  # a fresh key: always a miss
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    ds = load_or_build_graphs(cache_dir, fp, ids, items, targets, settings, num_workers=workers, progress=False)
    build = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    t0 = time.perf_counter()
    load_or_build_graphs(cache_dir, fp, ids, lambda: [], targets, settings, progress=False)  # hit
    hit = time.perf_counter() - t0
    edges = int(ds.num_edges.sum())
    ds.path.unlink()
    return build, edges, hit, cpu


def throughput(args, rows: list[dict]) -> None:
    settings = GraphSettings(cutoff=args.cutoff)
    inputs = load_inputs(args.shared)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for name, (ids, items, targets) in inputs.items():
            n = len(ids)
            base = [baseline_build(items, args.cutoff) for _ in range(args.baseline_repeats)]
            t_base = statistics.median(b[0] for b in base)
            cpu_base = statistics.median(b[2] for b in base)
            print(f"\n{name}: {n} structures, cutoff {args.cutoff} Å")
            print(
                f"  baseline loop (pymatgen parse + get_all_neighbors + Python edges): {n / t_base:9.0f} structures/s "
                f"({n / cpu_base:.0f} per CPU-second)"
            )
            for w in args.workers:
                runs = [ours_build(ids, items, targets, settings, w, Path(tmp)) for _ in range(args.repeats)]
                t = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[3] for r in runs)
                assert runs[0][1] == base[0][1], f"edge count differs: ours {runs[0][1]} vs baseline {base[0][1]}"
                ratio = t_base / t
                print(
                    f"  sagnn build, num_workers={w}: {n / t:9.0f} structures/s  ({ratio:.1f}x the loop; "
                    f"{n / cpu:.0f} per CPU-second, {cpu_base / cpu:.1f}x; cache hit {runs[0][2] * 1e3:.0f} ms)"
                )
                rows.append(
                    {
                        "dataset": name,
                        "n": n,
                        "edges": runs[0][1],
                        "workers": w,
                        "ours_per_s": n / t,
                        "baseline_per_s": n / t_base,
                        "ratio": ratio,
                        "hit_ms": runs[0][2] * 1e3,
                        "ours_per_cpu_s": n / cpu,
                        "baseline_per_cpu_s": n / cpu_base,
                        "cpu_ratio": cpu_base / cpu,
                    }
                )


# ----------------------------------------------------------------------------------- memory
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def iterate_child(path: str, release_every: int) -> None:
    """Subprocess body: iterate the whole cache in batches of 64; print peak memory as JSON."""
    from torch.utils.data import DataLoader

    before = _status()
    t0 = time.perf_counter()
    ds = GraphDataset(path, verify=True, release_every=release_every)  # full crc32 check, as on a cache hit
    open_s = time.perf_counter() - t0
    peak = {k: 0 for k in before}
    atoms = 0
    t0 = time.perf_counter()
    for k, batch in enumerate(DataLoader(ds, batch_size=64, collate_fn=collate_graphs)):
        atoms += batch.num_nodes
        if k % 16 == 0:
            peak = {key: max(v, peak[key]) for key, v in _status().items()}
    peak = {key: max(v, peak[key]) for key, v in _status().items()}
    print(
        json.dumps(
            {
                "graphs": len(ds),
                "atoms": atoms,
                "open_s": open_s,
                "seconds": time.perf_counter() - t0,
                "file_mib": os.path.getsize(path) / 2**20,
                "before": before,
                "peak": peak,
                "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def memory(args, rows: list[dict]) -> None:
    abx3 = pd.read_csv(args.shared / "mp_abx3/mp_abx3_perovskites.csv.gz")
    settings = GraphSettings(cutoff=args.cutoff)
    cache_dir = Path(tempfile.mkdtemp(dir=args.tmp))
    print("\nPeak memory while iterating a cache (DataLoader, batch 64), fresh subprocess per run:")
    try:
        for size in args.rss_sizes:
            reps = -(-size // len(abx3))
            ids = [f"{m}#{r}" for r in range(reps) for m in abx3.material_id][:size]
            items = (abx3.cif.tolist() * reps)[:size]
            targets = np.tile(abx3[["band_gap"]].to_numpy(), (reps, 1))[:size]
            t0 = time.perf_counter()
            ds = load_or_build_graphs(
                cache_dir, f"rss-{size}", ids, items, targets, settings, num_workers=max(args.workers), progress=False
            )
            build = time.perf_counter() - t0
            print(
                f"  {size} graphs: built in {build:.1f} s ({size / build:.0f} structures/s, "
                f"num_workers={max(args.workers)}), file {ds.path.stat().st_size / 2**20:.0f} MiB"
            )
            del items
            for release in (4096, 0):
                cmd = [sys.executable, __file__, "--_iterate", str(ds.path), "--_release-every", str(release)]
                res = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                )
                b, p = res["before"], res["peak"]
                print(
                    f"    release_every={release:5d}: peak RSS {p['VmRSS']} MiB (anon {p['RssAnon']}, file-backed "
                    f"{p['RssFile']}); before opening {b['VmRSS']} MiB; open+verify {res['open_s']:.2f} s, "
                    f"iterated in {res['seconds']:.1f} s"
                )
                rows.append(
                    {
                        "dataset": f"rss {size}",
                        "n": size,
                        "release_every": release,
                        "peak_rss_mib": p["VmRSS"],
                        "peak_anon_mib": p["RssAnon"],
                        "peak_file_mib": p["RssFile"],
                        "before_mib": b["VmRSS"],
                        "file_mib": res["file_mib"],
                        "iterate_s": res["seconds"],
                        "open_s": res["open_s"],
                    }
                )
            ds.path.unlink()
    finally:
        for p in cache_dir.iterdir():
            p.unlink()
        cache_dir.rmdir()


def converters(args, rows: list[dict]) -> None:
    """``Structure`` objects → graph, one structure at a time: our ``structure_to_graph`` against matgl's
    ``Structure2Graph.get_graph`` (the ``bench`` extra), on the same parsed structures, interleaved over
    ``--repeats`` rounds (1 thread); edge counts compared on the first 200."""
    from sagnn_lightning.data.graph import structure_to_graph

    try:
        from matgl.ext.pymatgen import Structure2Graph, get_element_list
    except ImportError as err:
        print(f"\nconverters: matgl not importable ({err}); install the bench extra: pip install -e '.[bench]'")
        rows.append({"part": "converter", "status": f"matgl missing: {err}"})
        return
    torch.set_num_threads(1)
    inputs = {
        "perovskites": pd.read_csv(args.shared / "mp_abx3/mp_abx3_perovskites.csv.gz").cif.tolist(),
        "phonons": pd.read_csv(args.shared / "matbench/matbench_phonons.csv.gz").cif.tolist(),
    }
    print(f"\nStructure -> graph, one at a time, 1 thread, {args.converter_structures} structures, interleaved:")
    for name, cifs in inputs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = [Structure.from_str(c, fmt="cif") for c in cifs[: args.converter_structures]]
        matgl = Structure2Graph(element_types=get_element_list(structures), cutoff=args.cutoff)
        for s in structures[:200]:
            ours_edges = structure_to_graph(s, cutoff=args.cutoff).edge_index.shape[1]
            theirs_edges = int(matgl.get_graph(s)[0].edge_index.shape[1])
            if ours_edges != theirs_edges:
                raise SystemExit(f"{name}: edge counts differ ({ours_edges} vs matgl {theirs_edges})")
        rates: dict[str, list[float]] = {"ours": [], "matgl": []}
        for _ in range(args.repeats):
            for label, build in (
                ("ours", lambda s: structure_to_graph(s, cutoff=args.cutoff)),
                ("matgl", matgl.get_graph),
            ):
                start = time.perf_counter()
                for s in structures:
                    build(s)
                rates[label].append(len(structures) / (time.perf_counter() - start))
        ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["matgl"])
        print(
            f"  {name:12s} structure_to_graph {ours:8.0f}/s   matgl get_graph {theirs:8.0f}/s   ratio {ours / theirs:.2f}x"
        )
        rows.append(
            {
                "part": "converter",
                "data": name,
                "structures": len(structures),
                "ours_per_s": round(ours),
                "matgl_per_s": round(theirs),
                "ratio": round(ours / theirs, 3),
            }
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT / "../shared/data", help="shared data folder")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs of our build (median)")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-converters", action="store_true", help="skip the Structure -> graph vs matgl part")
    parser.add_argument("--converter-structures", type=int, default=1200)
    parser.add_argument("--tmp", type=Path, default=None, help="folder for temporary caches (default: system temp)")
    parser.add_argument("--csv", type=Path, default=None, help="write the results here")
    parser.add_argument("--_iterate", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_release-every", type=int, default=4096, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._iterate:
        iterate_child(args._iterate, args._release_every)
        return
    if not args.shared.is_dir():
        sys.exit(f"shared data folder {args.shared} not found (pass --shared)")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    rows: list[dict] = []
    if not args.skip_throughput:
        throughput(args, rows)
    if not args.skip_converters:
        converters(args, rows)
    if not args.skip_rss:
        memory(args, rows)
    if args.csv and rows:
        keys = sorted({k for r in rows for k in r})
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
