"""Attention export: the attention weights of every predicted crystal, one ``.npz`` each, plus ``index.json``.

``python -m sagnn_lightning predict ... --attention DIR`` writes, besides the predictions CSV (unchanged)::

    DIR/index.json          the crystals of this export, the layers, the targets
    DIR/<id>.npz            one per predicted crystal (the id made file-safe; ``-1``, ``-2``... on a clash)

``index.json`` (format version 1)::

    {"format": "sagnn-attention", "format_version": 1,
     "kind": "crystal" | "composition", "model": "<checkpoint or pretrained name>",
     "task_type": "regression" | "classification", "target_names": ["e_form"], "unit": "eV/cell" | null,
     "heads": 8,
     "layers": ["attention_layers.0"],
     "crystals": {"<id>": {"file": "<id>.npz", "n_atoms": 5, "formula": "AlSbO3", "prediction": [0.478]}, ...}}

``layers`` are the model's attention layers in the order they act (their parameter names; ``attention="last"``
has one, ``"each"`` one per block). ``crystals`` keeps the input order; ``prediction`` holds the CSV's values, one
per target (0/1 labels for classification, with ``probability`` beside them), and ``formula`` is the reduced
formula of the cell (of the fractions for a composition).

``<id>.npz`` (``numpy.load(path)``; no pickled objects), ``n`` atoms (element nodes for a composition), ``L``
layers, ``H`` heads, ``T`` targets::

    attention       [L, H, n, n] float32  attention[l, h, i, j]: weight of atom j (key) in the update of atom i
                                          (query), head h, layer l; every row sums to 1
    received        [L, n] float32        attention each atom receives, mean over heads and queries (sums to 1)
    layers          [L] str               the layer names of index.json
    id              scalar str            the crystal's id (the CSV's)
    atomic_numbers  [n] int64             Z of each atom
    elements        [n] str               element symbols
    site_index      [n] int64             the atom's position in the input structure (0-based; the rows and
                                          columns of attention follow it); compositions: the element's rank by Z
    frac_coords     [n, 3] float64        crystals: fractional coordinates as given (not wrapped into the cell)
    lattice         [3, 3] float64        crystals: lattice vectors (rows), Å
    fractions       [n] float64           compositions: each element's share of the formula (sums to 1)
    prediction      [T]                   the CSV's prediction (real units; 0/1 labels for classification)
    unit            scalar str            the predictions' unit, where known (shipped models; else absent)
    probability     [T] float64           classification only
    target_names    [T] str               the targets

The weights come from a second forward pass of each batch on the plain-PyTorch attention path (explicit softmax,
``model(batch, return_attention=True)``); the predictions are those of the normal forward pass, so the CSV is
the same with or without ``--attention`` (the two passes agree up to rounding). Every file is written atomically
(:func:`~sagnn_lightning.files.atomic_write`), ``index.json`` last; other files already in ``DIR`` are left as they
are (``index.json`` lists this export's crystals only). :func:`read_index` and :func:`load_crystal` read it back.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sagnn_lightning.errors import SAGNNError, UsageError, param
from sagnn_lightning.files import atomic_write, safe_name
from sagnn_lightning.nn.attention import AttentionMaps

if TYPE_CHECKING:
    from sagnn_lightning.lit.module import SAGNNModule

FORMAT = "sagnn-attention"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"


@cache
def element_symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (``"X<z>"`` outside the periodic table)."""
    from pymatgen.core import Element

    return Element.from_Z(z).symbol if 0 < z <= 118 else f"X{z}"


def file_stem(sample_id: str) -> str:
    """``sample_id`` as a file-name stem: letters, digits, ``.``, ``_``, ``-`` kept, the rest ``_`` (≤ 100 chars)."""
    return safe_name(sample_id, "crystal", strip="._", max_length=100)


def reduced_formula(symbols: list[str], amounts: list[float] | None = None) -> str:
    """Reduced formula of the atoms ``symbols``, or of the ``amounts`` of each element (a composition's fractions:
    ``Fe2O3`` when small whole numbers give them to 1e-6, else e.g. ``Fe0.684Mn0.304C0.012``)."""
    from pymatgen.core import Composition

    if amounts is None:
        return Composition(dict(Counter(symbols))).reduced_formula
    composition = Composition(dict(zip(symbols, amounts)))
    whole = Composition(composition.get_integer_formula_and_factor(max_denominator=20)[0])
    if whole.fractional_composition.almost_equals(composition.fractional_composition, rtol=0.0, atol=1e-6):
        return whole.reduced_formula
    return composition.reduced_formula


class AttentionExport:
    """Writes the export of the module docstring, batch by batch (:meth:`add_batch`), then :meth:`finish`.

    Args:
        folder: the export folder (created with the first file).
        module: the trained module (eval mode); its network must have attention layers.
        source: what to record as ``model`` in ``index.json`` (checkpoint path or pretrained name).
        unit: the predictions' unit where it is known (a shipped model's card), written as ``unit`` in
            ``index.json`` and each ``.npz`` (the plots' titles show it).
    """

    def __init__(
        self, folder: str | os.PathLike, module: SAGNNModule, source: str = "", unit: str | None = None
    ) -> None:
        if not len(getattr(module.model, "attention_layers", ())):
            raise UsageError(
                f"{param('attention')}: this model has no attention layers (attention='none', i.e. MEGNet); nothing to "
                "export"
            )
        self.folder = Path(folder).expanduser()
        self.module, self.source, self.unit = module, source, unit
        self.layers: list[str] = []
        self.heads = 0
        self.kind = ""
        self.crystals: dict[str, dict[str, Any]] = {}
        self._stems: set[str] = set()

    def _unique_stem(self, sample_id: str) -> str:
        stem, k = file_stem(sample_id), 0
        while (stem if k == 0 else f"{stem}-{k}").lower() in self._stems:  # case-insensitive file systems too
            k += 1
        stem = stem if k == 0 else f"{stem}-{k}"
        self._stems.add(stem.lower())
        return stem

    def add_batch(self, batch: Any, outputs: dict[str, Any]) -> None:
        """Export every crystal of ``batch`` (from :func:`~sagnn_lightning.data.collate_graphs`); ``outputs`` is the
        module's ``predict_step`` on it (``sample_id``, ``prediction [B, T]``, ``probability [B, T]``)."""
        _, maps = self.module.model(batch, return_attention=True)
        if not self.layers:
            self.layers, self.heads = list(maps), int(next(iter(maps.values()))[0].shape[0])
        self.kind = "composition" if getattr(batch, "fractions", None) is not None else "crystal"
        for arrays in crystal_arrays(batch, maps, outputs, self.module.target_names):
            sample_id = str(arrays["id"])
            if self.unit:
                arrays["unit"] = np.array(self.unit)
            if sample_id in self.crystals:
                raise SAGNNError(
                    f"{param('attention')}: the id {sample_id!r} occurs twice; ids must be unique ({param('id_column')})"
                )
            stem = self._unique_stem(sample_id)
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.folder / f"{stem}.npz", "wb") as fh:
                fields: dict[str, Any] = arrays  # (numpy's stubs type ``**kwds`` like its allow_pickle flag)
                np.savez_compressed(fh, **fields)
            entry: dict[str, Any] = {
                "file": f"{stem}.npz",
                "n_atoms": len(arrays["atomic_numbers"]),
                "formula": formula_of(arrays),
                "prediction": arrays["prediction"].tolist(),
            }
            if "probability" in arrays:
                entry["probability"] = arrays["probability"].tolist()
            self.crystals[sample_id] = entry

    __call__ = add_batch

    def finish(self) -> Path:
        """Write ``index.json`` (atomically) and return its path."""
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind or "crystal",
            "model": self.source,
            "task_type": self.module.task_type,
            "target_names": list(self.module.target_names),
            "unit": self.unit,
            "heads": self.heads,
            "layers": self.layers,
            "crystals": self.crystals,
        }
        path = self.folder / INDEX_FILE
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=1)
            fh.write("\n")
        return path


def crystal_arrays(
    batch: Any, maps: AttentionMaps, outputs: dict[str, Any], target_names: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """The ``.npz`` arrays (module docstring) of every crystal of ``batch``, in memory.

    ``maps`` is ``model(batch, return_attention=True)[1]``; ``outputs`` holds ``sample_id`` (``[B]`` str, default
    the position in the batch), ``prediction [B, T]`` and, for classification, ``probability [B, T]``.
    """
    names = list(maps)
    composition = getattr(batch, "fractions", None) is not None
    ptr = batch.ptr.tolist()
    z_all = batch.atomic_numbers.cpu().numpy().astype(np.int64)
    pos_all = None if composition else batch.pos.detach().cpu().double().numpy()
    lattice_all = None if composition else batch.lattice.detach().cpu().double().numpy().reshape(-1, 3, 3)
    fractions_all = batch.fractions.detach().cpu().double().numpy() if composition else None
    prediction = outputs["prediction"].detach().cpu()
    probability = outputs.get("probability")
    ids = list(outputs.get("sample_id") or [str(b) for b in range(len(ptr) - 1)])
    records = []
    for b, sample_id in enumerate(ids):
        start, end = ptr[b], ptr[b + 1]
        weights = torch.stack([maps[name][b] for name in names]).detach().float().cpu()  # [L, H, n, n]
        z = z_all[start:end]
        arrays: dict[str, np.ndarray] = {
            "id": np.array(str(sample_id)),
            "layers": np.array(names),
            "attention": weights.numpy(),
            "received": received_attention(weights).numpy(),
            "atomic_numbers": z,
            "elements": np.array([element_symbol(int(v)) for v in z]),
            "site_index": np.arange(end - start, dtype=np.int64),
            "prediction": prediction[b].double().numpy() if prediction.is_floating_point() else prediction[b].numpy(),
            "target_names": np.array([str(n) for n in target_names]),
        }
        if fractions_all is not None:
            arrays["fractions"] = fractions_all[start:end]
        if pos_all is not None and lattice_all is not None:
            arrays["lattice"] = lattice_all[b]
            arrays["frac_coords"] = pos_all[start:end] @ np.linalg.inv(lattice_all[b])  # cart = frac @ lattice (rows)
        if probability is not None:
            arrays["probability"] = probability[b].detach().cpu().double().numpy()
        records.append(arrays)
    return records


def formula_of(arrays: dict[str, np.ndarray]) -> str:
    """Reduced formula of one crystal's arrays (of its fractions for a composition)."""
    symbols = [str(s) for s in arrays["elements"]]
    return reduced_formula(symbols, arrays["fractions"].tolist() if "fractions" in arrays else None)


def received_attention(weights: Tensor) -> Tensor:
    """``[L, H, n, n]`` weights → ``[L, n]``: the attention each atom (key) receives, mean over heads and queries."""
    return weights.mean(dim=(1, 2))


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``index.json`` of an export folder, checked.

    Raises:
        SAGNNError: no export there, or one of another format version.
    """
    folder = Path(folder).expanduser()
    path = folder / INDEX_FILE
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"has no {INDEX_FILE}"
        raise SAGNNError(
            f"{folder} {what}: not an attention export; write one with "
            f"`python -m sagnn_lightning predict ... --attention {folder}`"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SAGNNError(f"cannot read {path}: {err}") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise SAGNNError(f'{path} is not a sagnn attention index (no "format": "{FORMAT}")')
    if index.get("format_version") != FORMAT_VERSION:
        raise SAGNNError(
            f"{path} has format_version {index.get('format_version')}; this sagnn_lightning reads {FORMAT_VERSION}"
        )
    return index


def load_crystal(folder: str | os.PathLike, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one crystal of an export (``entry`` = its ``index.json`` record), loaded into memory."""
    path = Path(folder).expanduser() / entry["file"]
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise SAGNNError(f"cannot read {path} (listed in {INDEX_FILE}): {err}") from err


def iter_crystals(folder: str | os.PathLike) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """``(id, arrays)`` of every crystal of an export, in the order of ``index.json``."""
    index = read_index(folder)
    for sample_id, entry in index["crystals"].items():
        yield sample_id, load_crystal(folder, entry)


__all__ = ["AttentionExport", "load_crystal", "read_index"]
