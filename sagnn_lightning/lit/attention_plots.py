"""Pictures of attention: per-crystal heatmaps and the dataset's element-pair map, from an attention export.

``python -m sagnn_lightning attention-plots DIR [--crystals 5] [--ids ID ...] [--out DIR/plots] [--layer -1]
[--value relative|weight]`` reads an export of ``predict --attention DIR``
(:mod:`sagnn_lightning.lit.attention_export`) and writes into ``--out``:

* ``<id>.png`` for the first ``--crystals`` crystals (or the ``--ids``): one heatmap per layer and head, rows = the
  query atoms, columns = the keys, labelled ``<element><site index>`` (compositions: ``<element> <fraction>``),
  one colour scale per picture, the prediction in the title (:func:`crystal_figure`);
* ``element_pairs.csv`` and ``element_pairs.png``: over every crystal of the export, the attention from atoms of
  element A (query) to atoms of element B (key), heads averaged, for one layer (default the last), elements in
  periodic-table order, with the number of atom pairs behind each value (:func:`element_pair_table`).

Element-pair values, over all crystals ``c``, heads ``h`` and atom pairs ``(i, j)`` with ``Z_i = A``, ``Z_j = B``
(self pairs ``i = j`` included), ``n_c`` atoms in crystal ``c``:

* ``mean_weight`` = mean of ``attention[h, i, j]``;
* ``relative_to_uniform`` = mean of ``n_c · attention[h, i, j]``: 1 where A's atoms attend to B's atoms as much as
  to any atom of their crystal (uniform attention), > 1 more, < 1 less. It does not shrink with the cell size, so
  crystals of different sizes can be pooled; the PNG shows it (``--value weight``: ``mean_weight``);
* ``atom_pairs`` = number of ``(crystal, i, j)`` behind the value, ``crystals`` = crystals holding both elements.

Figures are drawn on matplotlib's Agg canvas (no pyplot, no global state) and written atomically
(:func:`~sagnn_lightning.files.atomic_write`). User errors are one line (:class:`~sagnn_lightning.errors.SAGNNError`).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sagnn_lightning.errors import UsageError, param
from sagnn_lightning.files import atomic_write, write_csv_rows
from sagnn_lightning.lit.attention_export import element_symbol, file_stem, formula_of, load_crystal, read_index

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: largest atomic number counted in the element-pair map
MAX_Z = 118
#: at most this many tick labels per heatmap axis (larger crystals label every k-th atom)
MAX_TICKS = 40
#: element-pair maps with at most this many elements print their values in the cells
MAX_ANNOTATED = 12
PAIR_VALUES = ("relative", "weight")
#: colour of element pairs that occur in no crystal
NO_PAIR = "0.8"


# --------------------------------------------------------------------------- one crystal


def atom_labels(arrays: dict[str, np.ndarray]) -> list[str]:
    """``Fe0``, ``O1``, ... (element + site index) for a crystal; ``Fe 0.4`` (element + fraction) for a composition."""
    elements = [str(e) for e in arrays["elements"]]
    if "fractions" in arrays:
        return [f"{e} {f:.3g}" for e, f in zip(elements, arrays["fractions"].tolist())]
    return [f"{e}{k}" for e, k in zip(elements, arrays["site_index"].tolist())]


def crystal_title(arrays: dict[str, np.ndarray]) -> str:
    """``<id>  <formula>  <target> = <prediction> <unit>[ (true <y>)]`` for the figure's title (the unit where the
    export records one)."""
    names = [str(n) for n in arrays["target_names"]]
    unit = f" {arrays['unit']}" if "unit" in arrays and str(arrays["unit"]) else ""
    values = arrays["prediction"].reshape(-1).tolist()
    truth = arrays["target"].reshape(-1).tolist() if "target" in arrays else [None] * len(values)
    parts = []
    for name, value, true in zip(names, values, truth):
        text = f"{name} = {value:.4g}{unit}"
        if true is not None and math.isfinite(true):
            text += f" (true {true:.4g})"
        parts.append(text)
    return f"{arrays['id']}  {formula_of(arrays)}  predicted " + ", ".join(parts)


def crystal_figure(arrays: dict[str, np.ndarray], title: str | None = None) -> Figure:
    """Heatmaps of one crystal's ``attention [L, H, n, n]``: a panel per layer and head (rows = queries), one colour
    scale, atoms labelled by :func:`atom_labels`, ``title`` (default :func:`crystal_title`) on top."""
    from matplotlib.figure import Figure

    weights = np.asarray(arrays["attention"], dtype=np.float64)
    num_layers, heads, n, _ = weights.shape
    layers = [str(name) for name in arrays["layers"]]
    labels = atom_labels(arrays)
    cols = min(heads, 4)
    rows_per_layer = math.ceil(heads / cols)
    side = min(max(0.22 * n + 1.0, 2.2), 5.0)
    fig = Figure(figsize=(cols * side + 1.2, num_layers * rows_per_layer * side + 0.8), layout="constrained")
    axes = fig.subplots(num_layers * rows_per_layer, cols, squeeze=False)
    vmax = float(weights.max()) if weights.size else 1.0
    step = max(1, math.ceil(n / MAX_TICKS))
    ticks = list(range(0, n, step))
    fontsize = 8 if n <= 12 else 6 if n <= 24 else 5
    image = None
    for layer in range(num_layers):
        for head in range(rows_per_layer * cols):
            ax = axes[layer * rows_per_layer + head // cols][head % cols]
            if head >= heads:
                ax.set_axis_off()
                continue
            image = ax.imshow(weights[layer, head], vmin=0.0, vmax=vmax, cmap="viridis", interpolation="nearest")
            ax.set_title(f"{layers[layer]} head {head}" if num_layers > 1 else f"head {head}", fontsize=8)
            ax.set_xticks(ticks, [labels[k] for k in ticks], rotation=90, fontsize=fontsize)
            ax.set_yticks(ticks, [labels[k] for k in ticks], fontsize=fontsize)
            if head % cols == 0:
                ax.set_ylabel("query (attends)", fontsize=7)
            if head // cols == rows_per_layer - 1:
                ax.set_xlabel("key (attended to)", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(title if title is not None else crystal_title(arrays), fontsize=9)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render ``fig`` on the Agg canvas into ``path`` (PNG), atomically; creates the folder."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path


def figure_rgb(fig: Figure, dpi: int = 110) -> np.ndarray:
    """``fig`` rendered on the Agg canvas as an ``[height, width, 3]`` uint8 image (for loggers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --------------------------------------------------------------------------- the element-pair map


def resolve_layer(layers: Sequence[str], layer: int | str) -> int:
    """Index into ``layers`` of ``layer``: an index (negative from the end) or a layer name."""
    names = list(layers)
    if isinstance(layer, str) and layer in names:
        return names.index(layer)
    try:
        k = int(layer)
    except ValueError:
        k = len(names)  # not a number: an unknown name
    if not -len(names) <= k < len(names):
        raise UsageError(
            f"{param('layer')} {layer}: the export has {len(names)} attention layer(s): {names} (or -1 = the last)"
        )
    return k % len(names)


def element_pair_table(folder: str | os.PathLike, layer: int | str = -1) -> list[dict[str, Any]]:
    """Element-pair attention over every crystal of an export (module docstring), one row per (query, key) element
    pair that occurs, ordered by the query's then the key's atomic number.

    Columns: ``query``, ``key`` (symbols), ``query_Z``, ``key_Z``, ``mean_weight``, ``relative_to_uniform``,
    ``atom_pairs``, ``crystals``.
    """
    index = read_index(folder)
    k = resolve_layer(index["layers"], layer)

    def crystals() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for entry in index["crystals"].values():
            arrays = load_crystal(folder, entry)
            yield np.asarray(arrays["attention"][k], dtype=np.float64).mean(axis=0), arrays["atomic_numbers"]

    return element_pair_rows(crystals())


def element_pair_rows(crystals: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """:func:`element_pair_table` from ``(head-averaged weights [n, n], atomic_numbers [n])`` per crystal."""
    size = MAX_Z + 1
    weight_sum, relative_sum = np.zeros((size, size)), np.zeros((size, size))
    pairs, counts = np.zeros((size, size), dtype=np.int64), np.zeros((size, size), dtype=np.int64)
    for a, numbers in crystals:
        z = np.asarray(numbers).astype(np.int64)
        rows, cols = np.broadcast_arrays(z[:, None], z[None, :])
        np.add.at(weight_sum, (rows, cols), a)
        np.add.at(relative_sum, (rows, cols), a * len(z))
        np.add.at(pairs, (rows, cols), 1)
        present = np.unique(z)
        counts[np.ix_(present, present)] += 1
    table = []
    for qz, kz in zip(*np.nonzero(pairs)):  # row-major: by query Z, then key Z
        count = int(pairs[qz, kz])
        table.append(
            {
                "query": element_symbol(int(qz)),
                "key": element_symbol(int(kz)),
                "query_Z": int(qz),
                "key_Z": int(kz),
                "mean_weight": float(weight_sum[qz, kz] / count),
                "relative_to_uniform": float(relative_sum[qz, kz] / count),
                "atom_pairs": count,
                "crystals": int(counts[qz, kz]),
            }
        )
    return table


def element_pair_figure(table: list[dict[str, Any]], value: str = "relative", title: str = "") -> Figure:
    """The element-pair ``table`` as two heatmaps, elements by atomic number: the mean attention
    (``value="relative"``: ``relative_to_uniform``, centred on 1; ``"weight"``: ``mean_weight``) and the number of
    atom pairs behind each cell. Pairs that never occur are grey."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, TwoSlopeNorm
    from matplotlib.figure import Figure

    zs = sorted({row["query_Z"] for row in table} | {row["key_Z"] for row in table})
    pos = {z: k for k, z in enumerate(zs)}
    m = len(zs)
    column = "relative_to_uniform" if value == "relative" else "mean_weight"
    values, counts = np.full((m, m), np.nan), np.full((m, m), np.nan)
    for row in table:
        values[pos[row["query_Z"]], pos[row["key_Z"]]] = row[column]
        counts[pos[row["query_Z"]], pos[row["key_Z"]]] = row["atom_pairs"]
    side = min(max(0.32 * m + 2.0, 3.5), 14.0)
    fig = Figure(figsize=(2 * side + 1.5, side + 0.6), layout="constrained")
    ax_value, ax_count = fig.subplots(1, 2, squeeze=True)
    finite = values[np.isfinite(values)]
    if value == "relative":
        low = min(float(finite.min()) if finite.size else 1.0, 0.999)
        high = max(float(finite.max()) if finite.size else 1.0, 1.001)
        cmap = colormaps["RdBu_r"].with_extremes(bad=NO_PAIR)
        image = ax_value.imshow(values, cmap=cmap, norm=TwoSlopeNorm(vcenter=1.0, vmin=low, vmax=high))
        label = "mean attention × atoms in the crystal (1 = uniform)"
    else:
        image = ax_value.imshow(values, cmap=colormaps["viridis"].with_extremes(bad=NO_PAIR), vmin=0.0)
        label = "mean attention weight"
    fig.colorbar(image, ax=ax_value, shrink=0.8, label=label)
    most = max(float(np.nanmax(counts)), 2.0)
    count_norm = LogNorm(vmin=0.5, vmax=most)  # below 1: a single pair is visible
    count_image = ax_count.imshow(counts, cmap=colormaps["Blues"].with_extremes(bad=NO_PAIR), norm=count_norm)
    count_bar = fig.colorbar(count_image, ax=ax_count, shrink=0.8, label="atom pairs (crystal, query, key)")
    # whole counts only: decades from 1 (LogNorm's own ticks would label the 0.5 floor as 5x10^-1)
    decades = [10**k for k in range(0, int(math.log10(most)) + 1)]
    count_bar.set_ticks(decades, labels=[f"{d:,}" for d in decades])
    count_bar.ax.minorticks_off()
    symbols = [element_symbol(z) for z in zs]
    fontsize = 8 if m <= 20 else 6 if m <= 40 else 4
    for ax, name in ((ax_value, label.split(" (")[0]), (ax_count, "atom pairs")):
        ax.set_xticks(range(m), symbols, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(m), symbols, fontsize=fontsize)
        ax.set_xlabel("key element (attended to)")
        ax.set_ylabel("query element (attends)")
        ax.set_title(f"{name} (grey: no such pair)", fontsize=9)
    if m <= MAX_ANNOTATED:
        for r in range(m):
            for c in range(m):
                if np.isfinite(values[r, c]):
                    ax_value.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize=7)
                    ax_count.text(c, r, f"{int(counts[r, c])}", ha="center", va="center", fontsize=7, color="tab:red")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def write_element_pair_map(
    folder: str | os.PathLike, out: str | os.PathLike, layer: int | str = -1, value: str = "relative"
) -> tuple[Path, Path]:
    """Write ``<out>/element_pairs.csv`` (:func:`element_pair_table`) and ``<out>/element_pairs.png``
    (:func:`element_pair_figure`) for an export ``folder``; returns both paths."""
    if value not in PAIR_VALUES:
        raise UsageError(f"{param('value')} must be one of {', '.join(PAIR_VALUES)}, got {value!r}")
    index = read_index(folder)
    k = resolve_layer(index["layers"], layer)
    table = element_pair_table(folder, k)
    if not table:
        raise UsageError(f"{folder}: the export lists no crystals; nothing to map")
    out = Path(out).expanduser()
    csv_path = write_csv_rows(out / "element_pairs.csv", table)
    title = (
        f"{Path(folder).expanduser().name}: {len(index['crystals'])} crystals, {index['layers'][k]}, "
        f"{index['heads']} heads averaged; rows = query element, columns = key element"
    )
    png_path = save_png(element_pair_figure(table, value, title), out / "element_pairs.png")
    return csv_path, png_path


def write_crystal_maps(
    folder: str | os.PathLike, out: str | os.PathLike, crystals: int = 5, ids: Sequence[str] | None = None
) -> list[Path]:
    """Write ``<out>/<id>.png`` (:func:`crystal_figure`) for the crystals ``ids`` of an export, else its first
    ``crystals``; returns the paths."""
    index = read_index(folder)
    entries = index["crystals"]
    if ids:
        unknown = [i for i in ids if i not in entries]
        if unknown:
            raise UsageError(
                f"{param('ids')}: {len(unknown)} id(s) not in {folder} (first: {unknown[0]!r}); "
                f"the export holds {len(entries)} crystals, e.g. {list(entries)[:3]}"
            )
        chosen = list(ids)
    else:
        chosen = list(entries)[:crystals]
    out = Path(out).expanduser()
    paths = []
    for sample_id in chosen:
        arrays = load_crystal(folder, entries[sample_id])
        stem = Path(entries[sample_id]["file"]).stem or file_stem(sample_id)
        paths.append(save_png(crystal_figure(arrays), out / f"{stem}.png"))
    return paths


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sagnn_lightning attention-plots",
        description="Heatmaps of an attention export (predict --attention DIR): per crystal, and element pairs.",
    )
    parser.add_argument("folder", metavar="DIR", help="the folder written by predict --attention DIR")
    parser.add_argument("--out", default=None, help="folder for the pictures and the CSV (default DIR/plots)")
    parser.add_argument("--crystals", type=int, default=5, help="heatmaps of the first N crystals (default 5; 0: none)")
    parser.add_argument("--ids", nargs="+", default=None, metavar="ID", help="heatmaps of these crystals instead")
    parser.add_argument(
        "--layer", default="-1", help="element-pair map of this attention layer: index or name (default -1, the last)"
    )
    parser.add_argument(
        "--value",
        default="relative",
        choices=PAIR_VALUES,
        help="element-pair colour: 'relative' (mean attention × atoms in the crystal, 1 = uniform; default) or "
        "'weight' (mean attention weight)",
    )
    return parser


def attention_plots_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (module docstring); returns the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.crystals < 0:
        raise UsageError(f"{param('crystals')} must be >= 0, got {args.crystals}")
    folder = Path(args.folder).expanduser()
    index = read_index(folder)
    layer = resolve_layer(index["layers"], args.layer)
    out = Path(args.out).expanduser() if args.out else folder / "plots"
    pictures = write_crystal_maps(folder, out, args.crystals, args.ids)
    csv_path, png_path = write_element_pair_map(folder, out, layer, args.value)
    print(f"wrote {len(pictures)} crystal heatmaps, {png_path.name} and {csv_path.name} to {out}")
    return 0


__all__ = [
    "attention_plots_main",
    "crystal_figure",
    "element_pair_rows",
    "element_pair_table",
    "write_element_pair_map",
]
