"""Which site of an ABX3 perovskite the attention concentrates on: A, B or the anions X.

Reads an attention export (``python -m sagnn_lightning predict ... --attention DIR``) of 5-atom ABX3 perovskites,
labels each atom by its site from the structure itself — X: the three atoms of O, N, F or S (Castelli's anions);
B: the cation nearest to an anion (octahedral site, at a/2); A: the other cation (at a/√2) — and reports the
attention each site receives (averaged over the queries of the crystal), per head and averaged over heads, as a
multiple of uniform attention (1 = 1/5). Crystals whose anions are not exactly three are counted and left out.

    python -m sagnn_lightning predict --model matbench_perovskites \
        --input ../shared/data/matbench/matbench_perovskites_fold0_test_inputs.csv.gz --output preds.csv --attention att
    python benchmarks/perovskite_attention_roles.py att --out benchmarks/results/perovskite_attention_roles.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ANIONS = {"O", "N", "F", "S"}
ROLES = ("A", "B", "X")


def site_roles(elements: np.ndarray, frac: np.ndarray, lattice: np.ndarray) -> list[str] | None:
    """``["A"|"B"|"X", ...]`` per atom, or ``None`` when the cell is not one ABX3 with three anions."""
    anion = np.array([e in ANIONS for e in elements])
    if anion.sum() != 3 or len(elements) != 5:
        return None
    cations = np.flatnonzero(~anion)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])

    def nearest_anion(c: int) -> float:
        d = frac[anion][None, :, :] - frac[c][None, None, :] + shifts[:, None, :]
        return float(np.linalg.norm(d @ lattice, axis=-1).min())

    b = min(cations.tolist(), key=nearest_anion)
    return ["X" if anion[i] else ("B" if i == b else "A") for i in range(len(elements))]


def site_attention(arrays: dict[str, np.ndarray], layer: int = -1) -> np.ndarray | None:
    """``[heads, 3]``: attention received per atom of sites A, B, X (averaged over the crystal's queries and the
    site's atoms) relative to uniform, in one layer of one exported crystal; ``None`` when it is not one ABX3."""
    roles = site_roles(arrays["elements"], arrays["frac_coords"], arrays["lattice"])
    if roles is None:
        return None
    received = np.asarray(arrays["attention"][layer], dtype=np.float64).mean(axis=1) * len(roles)  # [heads, atoms]
    return np.stack([received[:, [i for i, r in enumerate(roles) if r == role]].mean(axis=1) for role in ROLES], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--out", type=Path, default=None, help="CSV of the per-head means (written atomically)")
    args = parser.parse_args(argv)
    index = json.loads((args.export_dir / "index.json").read_text())
    total: np.ndarray | float = 0.0
    used = skipped = 0
    for entry in index["crystals"].values():
        with np.load(args.export_dir / entry["file"]) as npz:
            sites = site_attention(dict(npz), args.layer)
        if sites is None:
            skipped += 1
            continue
        total = total + sites
        used += 1
    means = {role: np.asarray(total)[:, k] / used for k, role in enumerate(ROLES)}
    heads = len(means["A"])
    print(
        f"{used} crystals ({skipped} left out: not ABX3 with three O/N/F/S anions); layer {index['layers'][args.layer]}"
    )
    print("attention received per atom of each site, relative to uniform (1 = 1/5), averaged over queries and crystals")
    print("| site | " + " | ".join(f"head {h}" for h in range(heads)) + " | mean of heads |")
    print("|---|" + "---|" * (heads + 1))
    for role in ROLES:
        print(f"| {role} | " + " | ".join(f"{v:.2f}" for v in means[role]) + f" | {means[role].mean():.2f} |")
    if args.out is not None:
        from sagnn_lightning.files import atomic_write

        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out, "w") as fh:
            fh.write("site,head,relative_to_uniform,crystals\n")
            for role in ROLES:
                for h, v in enumerate(means[role]):
                    fh.write(f"{role},{h},{v:.6f},{used}\n")
                fh.write(f"{role},mean,{means[role].mean():.6f},{used}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
