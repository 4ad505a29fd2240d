"""Structure → periodic crystal graph.

The graph stores *what does not change under a rigid motion*: atomic numbers,
Cartesian positions, the lattice and, for every directed edge ``i → j``, the
integer periodic image of ``j``. Bond vectors and lengths are recomputed inside
the model's ``forward`` from these (see :func:`sagnn_lightning.nn.geometry.bond_vectors`),
so they are differentiable and cheap.

Edge convention: ``edge_index[0] = i`` (centre), ``edge_index[1] = j`` (neighbour),
bond vector ``r_ij = pos[j] + image_offsets[e] @ lattice - pos[i]`` (Å).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Data

#: MEGNet's global state when the user gives none: two zeros.
DEFAULT_STATE: tuple[float, ...] = (0.0, 0.0)


class StructureError(ValueError):
    """A structure that cannot be turned into a graph; the message names it and the fix."""


@dataclass(frozen=True)
class GraphSettings:
    """Everything that changes the graph built from a structure (part of the cache key).

    Args:
        cutoff: neighbour cutoff radius in Å (default 5.0, MEGNet).
        max_neighbors: keep at most this many nearest neighbours per atom (``None`` = all
            inside the cutoff). Bounds memory for large cells (e.g. 1,000 atoms).
        isolated_neighbors: policy for an atom with no neighbour inside ``cutoff``: it is
            connected (both directions) to its nearest-neighbour shell, i.e. every atom within
            ``(1 + 1e-3)`` × the nearest distance, searched up to ``max_isolated_radius`` Å.
        max_isolated_radius: give up (clear error) if no neighbour is found within this radius.
        state: global state vector given to every graph (MEGNet default: two zeros).
    """

    cutoff: float = 5.0
    max_neighbors: int | None = None
    max_isolated_radius: float = 20.0
    state: tuple[float, ...] = field(default=DEFAULT_STATE)

    def __post_init__(self) -> None:
        if not self.cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {self.max_neighbors}")
        object.__setattr__(self, "state", tuple(float(s) for s in self.state))

    def as_dict(self) -> dict:
        return asdict(self)


def _check_structure(structure: Structure, name: str) -> None:
    if len(structure) == 0:
        raise StructureError(f"{name}: structure has no sites; remove this entry.")
    if not structure.is_ordered:
        raise StructureError(
            f"{name}: structure has partially occupied / disordered sites "
            f"({structure.composition.reduced_formula}); SA-GNN needs an ordered structure. "
            "Order it first (e.g. pymatgen's OrderDisorderedStructureTransformation) or drop the entry."
        )
    if abs(structure.lattice.volume) < 1e-6:
        raise StructureError(f"{name}: lattice has zero volume; check the cell.")


def neighbor_list(
    structure: Structure, cutoff: float, max_neighbors: int | None = None, max_isolated_radius: float = 20.0,
    name: str = "structure",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Periodic neighbour list from pymatgen's compiled search (no Python loop over atoms).

    Returns ``(i, j, images, distances)`` with shapes ``[E]``, ``[E]``, ``[E, 3]`` (int),
    ``[E]`` (Å), sorted by ``(i, distance, j)``. Isolated atoms get their nearest shell (see
    :class:`GraphSettings`).
    """
    centers, points, images, dists = structure.get_neighbor_list(r=cutoff, exclude_self=True)
    centers = centers.astype(np.int64)
    points = points.astype(np.int64)
    images = np.rint(images).astype(np.int64).reshape(-1, 3)
    n = len(structure)

    isolated = np.setdiff1d(np.arange(n), centers)
    if isolated.size:
        extra = [_nearest_shell(structure, int(a), cutoff, max_isolated_radius, name) for a in isolated]
        ei = np.concatenate([e[0] for e in extra])
        ej = np.concatenate([e[1] for e in extra])
        eimg = np.concatenate([e[2] for e in extra])
        ed = np.concatenate([e[3] for e in extra])
        # both directions so the isolated atom also sends messages; drop duplicates later
        centers = np.concatenate([centers, ei, ej])
        points = np.concatenate([points, ej, ei])
        images = np.concatenate([images, eimg, -eimg])
        dists = np.concatenate([dists, ed, ed])
        key = np.concatenate([centers[:, None], points[:, None], images], axis=1)
        _, keep = np.unique(key, axis=0, return_index=True)
        keep.sort()
        centers, points, images, dists = centers[keep], points[keep], images[keep], dists[keep]

    order = np.lexsort((points, dists, centers))
    centers, points, images, dists = centers[order], points[order], images[order], dists[order]
    if max_neighbors is not None and centers.size:
        # rank of each edge within its centre's (distance-sorted) run
        starts = np.searchsorted(centers, centers, side="left")
        rank = np.arange(centers.size) - starts
        keep = rank < max_neighbors
        centers, points, images, dists = centers[keep], points[keep], images[keep], dists[keep]
    return centers, points, images, dists


def _nearest_shell(structure: Structure, atom: int, cutoff: float, max_radius: float, name: str):
    radius = cutoff
    while radius < max_radius:
        radius = min(2 * radius, max_radius)
        c, p, img, d = structure.get_neighbor_list(r=radius, sites=[structure[atom]], exclude_self=True)
        if len(d):
            shell = d <= d.min() * (1 + 1e-3)
            m = int(shell.sum())
            return (np.full(m, atom, dtype=np.int64), p[shell].astype(np.int64),
                    np.rint(img[shell]).astype(np.int64).reshape(-1, 3), d[shell])
    raise StructureError(
        f"{name}: atom {atom} ({structure[atom].species_string}) has no neighbour within "
        f"{max_radius} Å; the cell is probably wrong (check lattice units)."
    )


def structure_to_graph(
    structure: Structure,
    cutoff: float = 5.0,
    max_neighbors: int | None = None,
    state: Sequence[float] | None = None,
    max_isolated_radius: float = 20.0,
    name: str = "structure",
) -> Data:
    """Build the periodic crystal graph of one structure.

    Args:
        structure: an ordered pymatgen ``Structure``.
        cutoff: neighbour cutoff in Å.
        max_neighbors: optional cap on neighbours per atom (nearest kept).
        state: global state vector (default: MEGNet's two zeros).
        max_isolated_radius: search radius limit for atoms with no neighbour in ``cutoff``.
        name: used in error messages (e.g. the material id).

    Returns:
        ``Data`` with ``atomic_numbers [N]`` (long), ``pos [N, 3]`` (float64, Å),
        ``lattice [1, 3, 3]`` (float64, Å, rows are lattice vectors), ``edge_index [2, E]`` (long),
        ``image_offsets [E, 3]`` (long), ``state [1, S]`` (float32), ``num_nodes = N``.
    """
    _check_structure(structure, name)
    i, j, images, _ = neighbor_list(structure, cutoff, max_neighbors, max_isolated_radius, name)
    state = DEFAULT_STATE if state is None else tuple(state)
    return Data(
        atomic_numbers=torch.as_tensor(structure.atomic_numbers, dtype=torch.long),
        pos=torch.tensor(np.array(structure.cart_coords), dtype=torch.float64),
        lattice=torch.tensor(np.array(structure.lattice.matrix), dtype=torch.float64).unsqueeze(0),
        edge_index=torch.from_numpy(np.stack([i, j])),
        image_offsets=torch.from_numpy(images),
        state=torch.tensor([state], dtype=torch.float32),
        num_nodes=len(structure),
    )


def graph_from_settings(structure: Structure, settings: GraphSettings, name: str = "structure") -> Data:
    """:func:`structure_to_graph` with a :class:`GraphSettings`."""
    return structure_to_graph(
        structure, cutoff=settings.cutoff, max_neighbors=settings.max_neighbors, state=settings.state,
        max_isolated_radius=settings.max_isolated_radius, name=name,
    )
