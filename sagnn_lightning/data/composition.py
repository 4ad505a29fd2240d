"""Composition → element graph (for matbench's composition-only tasks: no crystal structure).

A chemical formula such as ``Fe2O3`` or ``Ag(AuS)2`` becomes a complete graph over its elements (Roost,
Goodall & Lee, Nat. Commun. 11, 6280, 2020):

* one node per element, carrying its atomic number and its **fraction** of the formula (fractions sum to 1,
  so ``Fe2O3`` and ``Fe4O6`` give the same graph);
* a directed edge ``i → j`` for every ordered pair of elements, self pairs included (``N²`` edges), so every
  element receives a message from every element of its formula, itself too (a one-element formula still
  has one edge).

Nodes are sorted by atomic number, so the graph does not depend on how the formula is written.

Changing what a graph contains? Bump ``CACHE_FORMAT_VERSION`` in :mod:`sagnn_lightning.data.cache_format`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from pymatgen.core import Composition, DummySpecies, Element
from torch_geometric.data import Data

from sagnn_lightning.data.graph import DEFAULT_STATE, MAX_ATOMIC_NUMBER, StructureError, new_data

#: what a reader hands over for one composition
CompositionLike = Composition | str | Mapping[str, float]

# an element symbol followed by an explicit amount (e.g. ``Fe0``, ``O0.0``): pymatgen silently drops zeros
_EXPLICIT_AMOUNT = re.compile(r"([A-Z][a-z]?)\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")


class CompositionError(StructureError):
    """A composition that cannot be turned into a graph; the message names the row and the fix (exit status 1)."""


@dataclass(frozen=True)
class CompositionSettings:
    """Everything that changes the graph built from a composition (part of the cache key).

    Args:
        state: global state vector given to every graph (MEGNet's default: two zeros).
    """

    state: tuple[float, ...] = field(default=DEFAULT_STATE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", tuple(float(s) for s in self.state))

    def as_dict(self) -> dict:
        return {"kind": "composition", **asdict(self)}


class CompositionArrays(NamedTuple):
    """One composition graph as numpy arrays (what the cache stores).

    ``atomic_numbers [N]`` int64 (ascending), ``fractions [N]`` float64 (sum 1), ``edge_index [2, N²]`` int64.
    """

    atomic_numbers: np.ndarray
    fractions: np.ndarray
    edge_index: np.ndarray


def parse_composition(item: CompositionLike, name: str = "composition") -> Composition:
    """A checked pymatgen ``Composition`` from a formula string, a ``Composition`` or ``{element: amount}``.

    Raises:
        CompositionError: unparsable formula, unknown element symbol, or a zero / negative / non-finite
            amount (the message names ``name``).
    """
    if isinstance(item, str):
        text = item.strip()
        if not text:
            raise CompositionError(f"{name}: empty formula; give a formula such as Fe2O3.")
        for symbol, amount in _EXPLICIT_AMOUNT.findall(text):
            if float(amount) == 0.0:
                raise CompositionError(
                    f"{name}: formula {text!r} gives {symbol} an amount of 0; remove the element or fix the amount."
                )
    elif not isinstance(item, (Composition, Mapping)):
        raise CompositionError(
            f"{name}: expected a formula string, a pymatgen Composition or {{element: amount}}, "
            f"got {type(item).__name__}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            composition = item if isinstance(item, Composition) else Composition(item, strict=True)
    except Exception as exc:  # pymatgen raises ValueError/KeyError/... for bad formulas and symbols
        message = str(exc).strip("'\"")
        if "not valid, contains" in message:  # strict mode met a symbol that is no element (a dummy species)
            unknown = [el.symbol for el in Composition(item) if not isinstance(el, Element)]
            message = f"unknown element symbol {', '.join(unknown)}"
        raise CompositionError(f"{name}: cannot read the formula {item!r}: {message}.") from exc
    if len(composition) == 0:
        raise CompositionError(f"{name}: formula {item!r} has no elements.")
    amounts = np.array(list(composition.values()), dtype=np.float64)
    if not np.isfinite(amounts).all() or (amounts <= 0).any():
        bad = {str(el): amt for el, amt in composition.items() if not (np.isfinite(amt) and amt > 0)}
        raise CompositionError(f"{name}: every amount must be a positive number, got {bad} in {item!r}.")
    # a DummySpecies' Z is the hash of its symbol: check the type, not only the number
    unknown = [
        el for el in composition if isinstance(el, DummySpecies) or not 1 <= getattr(el, "Z", 0) <= MAX_ATOMIC_NUMBER
    ]
    if unknown:
        symbols = ", ".join(repr(str(getattr(el, "symbol", el))) for el in unknown)
        raise CompositionError(
            f"{name}: formula {item!r} contains {symbols}, not a chemical element; fix the formula or remove this row."
        )
    return composition


def composition_graph_arrays(item: CompositionLike, name: str = "composition") -> CompositionArrays:
    """Graph arrays of one composition (see the module docstring)."""
    composition = parse_composition(item, name)
    pairs = sorted(((int(el.Z), float(amt)) for el, amt in composition.items()), key=lambda p: p[0])
    z = np.array([p[0] for p in pairs], dtype=np.int64)
    amounts = np.array([p[1] for p in pairs], dtype=np.float64)
    n = z.shape[0]
    # self pairs included: i receives from every j of its formula, itself too
    edge_index = np.stack([np.repeat(np.arange(n), n), np.tile(np.arange(n), n)]).astype(np.int64)
    return CompositionArrays(z, amounts / amounts.sum(), edge_index)


def composition_arrays_to_data(arrays: CompositionArrays, state: Sequence[float] = DEFAULT_STATE) -> Data:
    """Wrap :class:`CompositionArrays` as a PyG ``Data``: ``atomic_numbers [N]`` long, ``fractions [N]``
    float64, ``edge_index [2, N²]`` long, ``state [1, S]`` float32, ``num_nodes = N``."""
    fields: dict[str, Any] = {
        "atomic_numbers": torch.from_numpy(np.ascontiguousarray(arrays.atomic_numbers, dtype=np.int64)),
        "fractions": torch.from_numpy(np.ascontiguousarray(arrays.fractions, dtype=np.float64)),
        "edge_index": torch.from_numpy(np.ascontiguousarray(arrays.edge_index, dtype=np.int64)),
        "state": torch.tensor([tuple(state)], dtype=torch.float32),
        "num_nodes": int(arrays.atomic_numbers.shape[0]),
    }
    return new_data(fields)


def composition_to_graph(
    composition: CompositionLike, state: Sequence[float] | None = None, name: str = "composition"
) -> Data:
    """Element graph of a composition (``"Fe2O3"``, a pymatgen ``Composition`` or ``{"Fe": 2, "O": 3}``).

    Returns:
        ``Data`` with ``atomic_numbers [N]``, ``fractions [N]`` (float64, sum 1), ``edge_index [2, N²]``,
        ``state [1, S]``, ``num_nodes = N``; batch several with :func:`sagnn_lightning.data.collate_graphs`.

    Raises:
        CompositionError: unparsable formula, unknown element, zero or negative amount (names ``name``).
    """
    return composition_arrays_to_data(
        composition_graph_arrays(composition, name), DEFAULT_STATE if state is None else tuple(state)
    )
