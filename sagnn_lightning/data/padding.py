"""Static shapes for captured (CUDA-graph) and compiled training: a batch padded to a fixed capacity.

A captured graph replays only for the shapes it was captured with, so each batch is padded up to the smallest of a
few capacities (:func:`choose_capacities`, from the dataset's batch sizes) by :func:`pad_graphs`: extra *padding
crystals* of hydrogen atoms whose edges stay inside them. The padding is inert:

* no padding edge touches a real atom, so no real atom, bond or crystal receives anything from it (segment sums
  and means, Set2Set and the self-attention all work per crystal);
* padding crystals have NaN targets, which the loss and the metrics leave out (the loss divides by the number of
  real targets), so loss, metrics and gradients are those of the real crystals;
* ``batch.num_real_graphs`` says how many rows of the output are real (the LightningModule logs with it and
  ``predict`` keeps only those rows).

Padding atoms sit at the origin of a cubic 3 Å cell; each padding edge is an atom's bond to its own image one cell
away (length 3 Å), so no bond length is zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.graph import new_data

#: edge length of the padding crystals' cubic cell, Å
PAD_CELL = 3.0
#: atomic number of padding atoms (in every element table)
PAD_Z = 1


@dataclass(frozen=True)
class Capacity:
    """A static batch shape: ``atoms`` and ``edges`` in all, ``graphs`` crystals, at most ``max_atoms`` per crystal."""

    atoms: int
    edges: int
    graphs: int
    max_atoms: int

    def fits(self, graphs: Sequence[Data]) -> bool:
        """Whether ``graphs`` pad up to this shape (one padding atom per padding crystal at least)."""
        n, e, b = _sizes(graphs)
        largest = max((int(g.num_nodes) for g in graphs), default=0)
        if b > self.graphs or e > self.edges or largest > self.max_atoms or n > self.atoms:
            return False
        pad_graphs, pad_atoms = self.graphs - b, self.atoms - n
        if pad_graphs == 0:
            return pad_atoms == 0 and e == self.edges
        return pad_atoms >= pad_graphs and math.ceil(pad_atoms / pad_graphs) <= self.max_atoms


def _sizes(graphs: Sequence[Data]) -> tuple[int, int, int]:
    return sum(int(g.num_nodes) for g in graphs), sum(int(g.edge_index.shape[1]) for g in graphs), len(graphs)


def _padding_crystal(atoms: int, edges: int, like: Data) -> Data:
    """``atoms`` hydrogen atoms with ``edges`` bonds to their own images (spread over the atoms), NaN targets."""
    src = np.arange(edges, dtype=np.int64) % max(atoms, 1)
    offsets = np.zeros((edges, 3), dtype=np.int64)
    offsets[np.arange(edges), (np.arange(edges) // max(atoms, 1)) % 3] = 1  # +a, +b, +c, +a, ...
    fields = {
        "atomic_numbers": torch.full((atoms,), PAD_Z, dtype=torch.long),
        "edge_index": torch.from_numpy(np.stack([src, src])),
        "state": torch.zeros_like(like.state),
        "num_nodes": atoms,
    }
    if getattr(like, "fractions", None) is not None:
        fields["fractions"] = torch.full((atoms,), 1.0 / atoms, dtype=like.fractions.dtype)
    else:
        fields["pos"] = torch.zeros(atoms, 3, dtype=like.pos.dtype)
        fields["lattice"] = torch.eye(3, dtype=like.lattice.dtype).reshape(1, 3, 3) * PAD_CELL
        fields["image_offsets"] = torch.from_numpy(offsets)
    if getattr(like, "y", None) is not None:
        fields["y"] = torch.full_like(like.y, float("nan"))
    data = new_data(fields)
    if getattr(like, "cutoff", None) is not None:
        data.cutoff = like.cutoff
    if getattr(like, "sample_id", None) is not None:
        data.sample_id = ""
    return data


def pad_graphs(graphs: Sequence[Data], capacity: Capacity) -> list[Data]:
    """``graphs`` followed by padding crystals, so that the whole has exactly ``capacity``'s atoms, edges and
    crystals (no padding crystal larger than ``capacity.max_atoms``).

    Raises:
        ValueError: the graphs do not fit ``capacity`` (:meth:`Capacity.fits`).
    """
    if not graphs or not capacity.fits(graphs):
        raise ValueError(f"pad_graphs: {len(graphs)} graphs of sizes {_sizes(graphs)} do not fit {capacity}")
    n, e, b = _sizes(graphs)
    pad_graphs_count, pad_atoms, pad_edges = capacity.graphs - b, capacity.atoms - n, capacity.edges - e
    padded = list(graphs)
    for k in range(pad_graphs_count):
        atoms = pad_atoms // pad_graphs_count + (1 if k < pad_atoms % pad_graphs_count else 0)
        edges = pad_edges // pad_graphs_count + (1 if k < pad_edges % pad_graphs_count else 0)
        padded.append(_padding_crystal(atoms, edges, graphs[0]))
    return padded


def capacity_for(atoms: int, edges: int, crystals: int, largest: int) -> Capacity:
    """The shape that holds every batch of at most ``crystals`` crystals with at most ``atoms`` atoms, ``edges``
    edges and ``largest`` atoms per crystal, when ``atoms`` is the most that many crystals can have (a batch of
    ``b`` crystals then has at most ``atoms - (crystals - b)``): ``P = ceil((atoms - 1) / (m - 1))`` padding crystals
    of at most ``m = max(largest, 8)`` atoms absorb any shortfall, each with at least one atom."""
    most = max(largest, 8)
    pads = max(1, math.ceil((atoms - 1) / (most - 1)))
    return Capacity(atoms + pads, edges, crystals + pads, most)


def choose_capacities(batch_sizes: Sequence[tuple[int, int, int, int]], max_buckets: int = 8) -> list[Capacity]:
    """At most ``max_buckets`` capacities from ``(atoms, edges, crystals, largest crystal)`` of batches: sorted by
    atoms and cut into ``max_buckets`` groups, each group's capacity is :func:`capacity_for` its maxima. The
    largest group's capacity holds every batch when its row is the worst case (see :func:`capacity_for`); a batch
    that does not fit a smaller one takes the next (:func:`smallest_fitting`)."""
    if not batch_sizes:
        return []
    ordered = sorted(batch_sizes)
    groups = np.array_split(np.arange(len(ordered)), min(max_buckets, len(ordered)))
    capacities = {
        capacity_for(*(max(ordered[k][f] for k in group) for f in range(4))) for group in groups if len(group)
    }
    return sorted(capacities, key=lambda c: (c.atoms, c.edges))


def smallest_fitting(graphs: Sequence[Data], capacities: Sequence[Capacity]) -> Capacity:
    """The smallest capacity (by atoms, then edges) that ``graphs`` fit; ``ValueError`` when none does."""
    for capacity in sorted(capacities, key=lambda c: (c.atoms, c.edges)):
        if capacity.fits(graphs):
            return capacity
    raise ValueError(f"no capacity fits a batch of sizes {_sizes(graphs)}; choose the capacities from this data")


def collate_padded(graphs: Sequence[Data], capacities: Sequence[Capacity]) -> Batch:
    """:func:`~sagnn_lightning.data.collate_graphs` of ``graphs`` padded to the smallest capacity they fit, with
    ``num_real_graphs`` (the real crystals come first) and a static ``max_num_atoms`` (the capacity's)."""
    capacity = smallest_fitting(graphs, capacities)
    batch = collate_graphs(pad_graphs(graphs, capacity))
    batch.max_num_atoms = capacity.max_atoms
    batch.num_real_graphs = len(graphs)
    return batch


__all__ = [
    "PAD_CELL",
    "PAD_Z",
    "Capacity",
    "capacity_for",
    "choose_capacities",
    "collate_padded",
    "pad_graphs",
    "smallest_fitting",
]
