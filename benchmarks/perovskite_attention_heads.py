"""Compare the attention of models with different numbers of heads (e.g. 4, 8, 16) on the same ABX3 perovskites.

Reads one attention export per model (``python -m sagnn_lightning predict ... --attention DIR``), all of the same
crystals, and reports for one attention layer (default the last):

* per head: where the attention goes by site (A, B, X from the geometry, as in ``perovskite_attention_roles.py``;
  attention received per atom, averaged over the queries of a crystal, as a multiple of uniform 1/n), how sharp it
  is (``entropy``: row entropy / log n, 1 = uniform, 0 = all on one key; ``max_weight``: the largest weight of a
  row) and how far it is from uniform (``from_uniform``: total-variation distance ½ Σ_j |a_ij − 1/n|, 0–1);
* per model: the same, averaged over heads, plus ``head_spread``: the mean total-variation distance between the
  rows of two different heads (0 = all heads attend alike, 1 = to disjoint atoms), and ``mean_map_from_uniform``:
  the distance of the head-averaged rows from uniform (the scale for ``map_distance`` below);
* per pair of models: ``map_distance``, the total-variation distance between their head-averaged rows, crystal by
  crystal; ``received_corr``, the correlation of the head-averaged attention each atom receives (× n);
  ``element_pair_corr``, the correlation of the element-pair maps (``relative_to_uniform`` of
  ``attention-plots``), over pairs of elements seen in at least ``--min-pairs`` atom pairs in both exports
  (NaN with fewer than two such pairs, e.g. on a small export: lower ``--min-pairs``).

Rows with a total-variation distance are averaged over crystals and queries. Crystals that are not one ABX3 cell
with three O/N/F/S anions are counted and left out of the site columns only.

    python benchmarks/perovskite_attention_heads.py 4=att_h4 8=att_h8 16=att_h16 \
        --out benchmarks/results/perovskite_attention_heads --png docs/guide/attention_heads_perovskites.png

writes ``<out>_per_head.csv``, ``<out>_models.csv``, ``<out>_agreement.csv`` (atomically) and, with ``--png``, one
heatmap per model: heads × sites, relative to uniform.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, even when an installed copy exists
sys.path.insert(0, str(Path(__file__).resolve().parent))

from perovskite_attention_roles import ROLES, site_attention  # noqa: E402 (after the sys.path setup above)

from sagnn_lightning.errors import SAGNNError  # noqa: E402
from sagnn_lightning.files import write_csv_rows  # noqa: E402
from sagnn_lightning.lit.attention_export import load_crystal, read_index  # noqa: E402
from sagnn_lightning.lit.attention_plots import element_pair_rows, resolve_layer, save_png  # noqa: E402

SHARPNESS = ("entropy", "max_weight", "from_uniform")


def head_statistics(attention: np.ndarray) -> dict[str, np.ndarray]:
    """Per-head sharpness of one crystal's maps ``[H, n, n]``, each averaged over the ``n`` queries: ``entropy``
    (/ log n; 1 for n = 1), ``max_weight``, ``from_uniform`` (total variation to 1/n), all ``[H]``; and
    ``head_spread``: the mean total-variation distance between the rows of two different heads (scalar; 0 for
    one head)."""
    a = np.asarray(attention, dtype=np.float64)
    heads, n = a.shape[0], a.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log(a), 0.0)
    entropy = (-plogp.sum(-1) / np.log(n)).mean(-1) if n > 1 else np.ones(heads)
    spread = [0.5 * np.abs(a[g] - a[h]).sum(-1).mean() for g, h in itertools.combinations(range(heads), 2)]
    return {
        "entropy": entropy,
        "max_weight": a.max(-1).mean(-1),
        "from_uniform": 0.5 * np.abs(a - 1.0 / n).sum(-1).mean(-1),
        "head_spread": np.array(float(np.mean(spread)) if spread else 0.0),
    }


def analyse_export(folder: Path, layer: int | str = -1) -> dict[str, Any]:
    """Site profile and sharpness per head of one export, each crystal's head-averaged map and the element-pair
    table (for comparing exports): ``{"heads", "layer", "crystals", "site_crystals", "left_out",
    "sites": {role: [H]}, "stats": {name: [H] or scalar}, "mean_maps": {id: [n, n]}, "element_pairs": [row]}``."""
    index = read_index(folder)
    k = resolve_layer(index["layers"], layer)
    heads = int(index["heads"])
    sums: dict[str, np.ndarray] = {name: np.zeros(heads) for name in SHARPNESS}
    spread = averaged_from_uniform = 0.0
    site_sums = {role: np.zeros(heads) for role in ROLES}
    mean_maps: dict[str, np.ndarray] = {}
    numbers: list[np.ndarray] = []
    used = left_out = 0
    for sample_id, entry in index["crystals"].items():
        arrays = load_crystal(folder, entry)
        a = np.asarray(arrays["attention"][k], dtype=np.float64)  # [H, n, n]
        stats = head_statistics(a)
        for name in SHARPNESS:
            sums[name] += stats[name]
        spread += float(stats["head_spread"])
        mean_maps[sample_id] = a.mean(0)
        numbers.append(arrays["atomic_numbers"])
        averaged_from_uniform += 0.5 * np.abs(mean_maps[sample_id] - 1.0 / a.shape[-1]).sum(-1).mean()
        sites = site_attention(arrays, k)  # [H, 3] or None
        if sites is None:
            left_out += 1
            continue
        for s, role in enumerate(ROLES):
            site_sums[role] += sites[:, s]
        used += 1
    total = len(mean_maps)
    if total == 0:
        raise SystemExit(f"error: {folder}: the export lists no crystals")
    return {
        "heads": heads,
        "layer": index["layers"][k],
        "crystals": total,
        "site_crystals": used,
        "left_out": left_out,
        "sites": {role: site_sums[role] / max(used, 1) for role in ROLES},
        "stats": {name: sums[name] / total for name in SHARPNESS}
        | {"head_spread": spread / total, "mean_map_from_uniform": averaged_from_uniform / total},
        "mean_maps": mean_maps,
        "element_pairs": element_pair_rows(zip(mean_maps.values(), numbers)),
    }


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of ``x`` and ``y``; NaN when there are fewer than 2 values or one of them is constant."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def agreement(a: dict[str, Any], b: dict[str, Any], min_pairs: int) -> dict[str, float]:
    """How alike two exports' head-averaged attention is, on the crystals both hold (module docstring)."""
    common = [i for i in a["mean_maps"] if i in b["mean_maps"]]
    if not common:
        raise SystemExit("error: the exports share no crystal ids; export the same --input with every model")
    distance = np.mean([0.5 * np.abs(a["mean_maps"][i] - b["mean_maps"][i]).sum(-1).mean() for i in common])
    received_a = np.concatenate([a["mean_maps"][i].mean(0) * len(a["mean_maps"][i]) for i in common])
    received_b = np.concatenate([b["mean_maps"][i].mean(0) * len(b["mean_maps"][i]) for i in common])
    table_b = {(r["query_Z"], r["key_Z"]): r for r in b["element_pairs"]}
    matched = [
        (r["relative_to_uniform"], table_b[key]["relative_to_uniform"])
        for r in a["element_pairs"]
        if (key := (r["query_Z"], r["key_Z"])) in table_b
        and min(r["atom_pairs"], table_b[key]["atom_pairs"]) >= min_pairs
    ]
    x, y = np.array(matched).reshape(-1, 2).T
    return {
        "crystals": len(common),
        "map_distance": float(distance),
        "received_corr": correlation(received_a, received_b),
        "element_pairs": len(matched),
        "element_pair_corr": correlation(x, y),
    }


def site_figure(results: dict[str, dict[str, Any]]):
    """One heatmap per model: heads (rows) × sites A, B, X (columns), attention received relative to uniform,
    one colour scale centred on 1."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    tables = {label: np.stack([r["sites"][role] for role in ROLES], axis=1) for label, r in results.items()}
    # symmetric in log space around 1, so that 0.8 (= 1/1.25) is as pale as 1.25
    span = max(1.001, *(max(float(t.max()), 1.0 / max(float(t.min()), 1e-6)) for t in tables.values()))
    norm = TwoSlopeNorm(vcenter=1.0, vmin=1.0 / span, vmax=span)
    tallest = max(t.shape[0] for t in tables.values())
    fig = Figure(figsize=(2.2 * len(tables) + 1.2, 0.28 * tallest + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tables), squeeze=True))
    image = None
    for ax, (label, table) in zip(axes, tables.items()):
        image = ax.imshow(table, cmap=colormaps["RdBu_r"], norm=norm, aspect="auto")
        for h in range(table.shape[0]):
            for s in range(table.shape[1]):
                dark = abs(np.log(max(table[h, s], 1e-6))) > 0.6 * np.log(span)
                ax.text(s, h, f"{table[h, s]:.2f}", ha="center", va="center", fontsize=6, color="w" if dark else "k")
        ax.set_xticks(range(len(ROLES)), ["A", "B", "X (each)"], fontsize=8)
        ax.set_yticks(range(table.shape[0]), [str(h) for h in range(table.shape[0])], fontsize=6)
        heads = f"{table.shape[0]} heads"
        ax.set_title(heads if label in (str(table.shape[0]), heads) else f"{label}: {heads}", fontsize=9)
        ax.set_ylabel("head", fontsize=8)
    assert image is not None, "no table to draw"
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="attention received per atom (1 = uniform)")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", help="LABEL=DIR, one per model (e.g. 4=att_h4)")
    parser.add_argument("--layer", default="-1", help="attention layer: index or name (default the last)")
    parser.add_argument("--min-pairs", type=int, default=100, help="atom pairs an element pair needs (both exports)")
    parser.add_argument("--out", type=Path, default=None, help="prefix of the three CSV files")
    parser.add_argument("--png", type=Path, default=None, help="heads × sites heatmaps, one per model")
    args = parser.parse_args(argv)
    folders: dict[str, Path] = {}
    for item in args.exports:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            parser.error(f"expected LABEL=DIR, got {item!r}")
        folders[label] = Path(folder)
    layer: int | str = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    try:
        results = {label: analyse_export(folder, layer) for label, folder in folders.items()}
    except SAGNNError as err:  # no export there, unknown --layer: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1

    per_head, models = [], []
    for label, r in results.items():
        for h in range(r["heads"]):
            per_head.append(
                {"model": label, "head": h}
                | {f"site_{role}": round(float(r["sites"][role][h]), 6) for role in ROLES}
                | {name: round(float(r["stats"][name][h]), 6) for name in SHARPNESS}
            )
        models.append(
            {"model": label, "heads": r["heads"], "layer": r["layer"], "crystals": r["crystals"]}
            | {"site_crystals": r["site_crystals"], "left_out": r["left_out"]}
            | {f"site_{role}": round(float(r["sites"][role].mean()), 6) for role in ROLES}
            | {f"site_{role}_head_min": round(float(r["sites"][role].min()), 6) for role in ROLES}
            | {f"site_{role}_head_max": round(float(r["sites"][role].max()), 6) for role in ROLES}
            | {name: round(float(r["stats"][name].mean()), 6) for name in SHARPNESS}
            | {key: round(float(r["stats"][key]), 6) for key in ("head_spread", "mean_map_from_uniform")}
        )
    pairs = [
        {"model_a": x, "model_b": y}
        | {
            key: round(value, 6) if isinstance(value, float) else value
            for key, value in agreement(results[x], results[y], args.min_pairs).items()
        }
        for x, y in itertools.combinations(results, 2)
    ]

    print(
        "| model | heads | crystals | A | B | X (each) | entropy | max weight | from uniform | head spread "
        "| head mean from uniform |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        sites = " | ".join(
            f"{m[f'site_{role}']:.2f} ({m[f'site_{role}_head_min']:.2f}–{m[f'site_{role}_head_max']:.2f})"
            for role in ROLES
        )
        print(
            f"| {m['model']} | {m['heads']} | {m['site_crystals']} | {sites} | {m['entropy']:.3f} | "
            f"{m['max_weight']:.3f} | {m['from_uniform']:.3f} | {m['head_spread']:.3f} | "
            f"{m['mean_map_from_uniform']:.3f} |"
        )
    print()
    print("| models | crystals | map distance | received corr | element pairs | element-pair corr |")
    print("|---|---|---|---|---|---|")
    for p in pairs:
        print(
            f"| {p['model_a']} vs {p['model_b']} | {p['crystals']} | {p['map_distance']:.3f} | "
            f"{p['received_corr']:.3f} | {p['element_pairs']} | {p['element_pair_corr']:.3f} |"
        )
    if args.out is not None:
        write_csv_rows(f"{args.out}_per_head.csv", per_head)
        write_csv_rows(f"{args.out}_models.csv", models)
        if pairs:
            write_csv_rows(f"{args.out}_agreement.csv", pairs)
    if args.png is not None:
        save_png(site_figure(results), args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
