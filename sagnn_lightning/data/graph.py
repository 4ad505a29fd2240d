"""Structure → periodic crystal graph.

The graph stores *what does not change under a rigid motion*: atomic numbers,
Cartesian positions, the lattice and, for every directed edge ``i → j``, the
integer periodic image of ``j``. Bond vectors and lengths are recomputed inside
the model's ``forward`` from these (see :func:`sagnn_lightning.nn.geometry.bond_vectors`),
so they are differentiable and cheap.

Edge convention: ``edge_index[0] = i`` (centre), ``edge_index[1] = j`` (neighbour),
bond vector ``r_ij = pos[j] + image_offsets[e] @ lattice - pos[i]`` (Å).

The neighbour search is pymatgen's compiled ``find_points_in_spheres`` (the routine behind
``Structure.get_neighbor_list`` / ``get_all_neighbors``): no Python loop over atoms or edges.

Changing what a graph contains for given settings? Bump ``CACHE_FORMAT_VERSION`` in
:mod:`sagnn_lightning.data.cache_format` so cached graphs are rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import NamedTuple

import numpy as np
import torch
from pymatgen.core import DummySpecies, Structure
from pymatgen.optimization.neighbors import find_points_in_spheres
from torch_geometric.data import Data

from sagnn_lightning.errors import SAGNNError, UsageError, param

#: MEGNet's global state when the user gives none: two zeros.
DEFAULT_STATE: tuple[float, ...] = (0.0, 0.0)

#: pymatgen's tolerance (Å): a point closer than this to its centre is the centre itself.
_NUMERICAL_TOL = 1e-8
#: relative width of the nearest-neighbour shell used for isolated atoms.
_SHELL_TOL = 1e-3

#: the largest atomic number of an element (Og); anything else is a dummy or unknown species.
MAX_ATOMIC_NUMBER = 118
#: bound of the neighbour search's grid (see :func:`search_cells`), in cells per atom. pymatgen allocates
#: ~264 bytes per cell, so this caps the search at ~1 MB per atom; real data needs at most 40 (a single
#: atom alone needs 27), a slab or molecule in a 100 Å vacuum box stays below it, a cell length of 1e9 Å
#: (5 atoms: 1.8e8 cells per atom, 194 GB) does not.
MAX_SEARCH_CELLS_PER_ATOM = 4096
#: bound of the density (Å³ per atom, fully periodic cells): no solid comes near it (diamond 5.7, metallic
#: hydrogen ~1.4); below it the lattice is wrong and the search would enumerate millions of images per atom.
MIN_VOLUME_PER_ATOM = 0.5


class StructureError(SAGNNError, ValueError):
    """A structure that cannot be turned into a graph; the message names it and the fix (exit status 1)."""


@dataclass(frozen=True)
class GraphSettings:
    """Everything that changes the graph built from a structure (part of the cache key).

    Args:
        cutoff: neighbour cutoff radius in Å (default 5.0, MEGNet).
        max_neighbors: keep at most this many nearest neighbours per atom (``None`` = all
            inside the cutoff). Bounds memory for large cells (e.g. 1,000 atoms): ``E <= N * k``.
            Ties at the cap are broken by neighbour index, then image.
        max_isolated_radius: isolated-atom policy. An atom with no neighbour inside ``cutoff``
            is connected (both directions) to its nearest-neighbour shell, i.e. every atom within
            ``(1 + 1e-3)`` × the nearest distance, searched up to this radius (Å); beyond it the
            structure is rejected with :class:`StructureError`.
        state: global state vector given to every graph (MEGNet default: two zeros).
    """

    cutoff: float = 5.0
    max_neighbors: int | None = None
    max_isolated_radius: float = 20.0
    state: tuple[float, ...] = field(default=DEFAULT_STATE)

    def __post_init__(self) -> None:
        if not self.cutoff > 0:
            raise UsageError(f"cutoff must be > 0 Å ({param('data.cutoff')}), got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise UsageError(
                f"max_neighbors must be >= 1 or null ({param('data.max_neighbors')}), got {self.max_neighbors}"
            )
        if not self.max_isolated_radius > 0:
            raise UsageError(
                f"max_isolated_radius must be > 0 Å ({param('data.max_isolated_radius')}), got {self.max_isolated_radius}"
            )
        object.__setattr__(self, "cutoff", float(self.cutoff))
        object.__setattr__(self, "max_isolated_radius", float(self.max_isolated_radius))
        if self.max_neighbors is not None:
            object.__setattr__(self, "max_neighbors", int(self.max_neighbors))
        object.__setattr__(self, "state", tuple(float(s) for s in self.state))

    def as_dict(self) -> dict:
        return asdict(self)


class GraphArrays(NamedTuple):
    """One crystal graph as numpy arrays (what the cache stores).

    ``atomic_numbers [N]`` int64, ``pos [N, 3]`` float64 Å, ``lattice [3, 3]`` float64 Å (rows are
    lattice vectors), ``edge_index [2, E]`` int64, ``image_offsets [E, 3]`` int64.
    """

    atomic_numbers: np.ndarray
    pos: np.ndarray
    lattice: np.ndarray
    edge_index: np.ndarray
    image_offsets: np.ndarray


def check_structure(structure: Structure, name: str) -> None:
    """Refuse an empty or disordered structure, or one with a species that is no element (``Xx``, ``X0+``).

    Raises:
        StructureError: naming ``name``, what is wrong and what fixes it.
    """
    if len(structure) == 0:
        raise StructureError(f"{name}: structure has no sites; remove this entry.")
    if not structure.is_ordered:
        raise StructureError(
            f"{name}: structure has partially occupied / disordered sites "
            f"({structure.composition.reduced_formula}); SA-GNN needs an ordered structure. "
            "Order it first (e.g. pymatgen's OrderDisorderedStructureTransformation) or drop the entry."
        )
    # a DummySpecies' Z is the hash of its symbol: check the type, not only the number
    unknown = [
        sp
        for sp in structure.types_of_species
        if isinstance(sp, DummySpecies) or not 1 <= getattr(sp, "Z", 0) <= MAX_ATOMIC_NUMBER
    ]
    if unknown:
        raise StructureError(
            f"{name}: unknown element {', '.join(repr(_symbol(sp)) for sp in unknown)}: every site needs a "
            f"chemical element (atomic number 1..{MAX_ATOMIC_NUMBER}); fix the species symbol or remove this entry."
        )


def _symbol(species: object) -> str:
    return str(getattr(species, "symbol", species))


def _check_atomic_numbers(atomic_numbers: np.ndarray, name: str) -> None:
    z = np.asarray(atomic_numbers)
    if z.size and (z.min() < 1 or z.max() > MAX_ATOMIC_NUMBER):
        bad = np.flatnonzero((z < 1) | (z > MAX_ATOMIC_NUMBER))
        raise StructureError(
            f"{name}: atomic number {z[bad[0]]} (site {bad[0]}) is no element (1..{MAX_ATOMIC_NUMBER}); "
            "fix the species or remove this entry."
        )


def _check_arrays(cart: np.ndarray, lattice: np.ndarray, name: str) -> float:
    """Refuse empty, non-finite or zero-volume input; returns the cell volume (Å³)."""
    if cart.shape[0] == 0:
        raise StructureError(f"{name}: structure has no sites; remove this entry.")
    if not (np.isfinite(cart).all() and np.isfinite(lattice).all()):
        raise StructureError(f"{name}: lattice or coordinates contain NaN/inf; check the input file.")
    # the triple product in Python floats: np.linalg.det costs more than the whole check on a 3x3
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = lattice.tolist()
    volume = abs(a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0))
    if volume < 1e-6:
        raise StructureError(f"{name}: lattice has zero volume; check the cell.")
    return volume


def search_cells(cart_coords: np.ndarray, cutoff: float) -> int:
    """Cells of the grid that pymatgen's ``find_points_in_spheres`` builds to search ``cart_coords`` [N, 3] (Å).

    The grid covers the atoms' bounding box grown by ``cutoff`` on every side, in cubes of edge ``cutoff``
    (0.1 Å at least); its memory and time grow with this count whatever the number of atoms, so a huge cell
    with its atoms spread out (a corrupted length, an absurd vacuum) costs gigabytes. Same arithmetic as pymatgen.
    """
    edge = max(float(cutoff), 0.1)
    reach = float(cutoff) + _NUMERICAL_TOL
    lo, hi = cart_coords.min(axis=0).tolist(), cart_coords.max(axis=0).tolist()
    return math.prod(math.ceil(((top + reach) - (bottom - reach)) / edge) for bottom, top in zip(lo, hi))


def _count(x: float, decimals: int = 0) -> str:
    """``1,234,567`` (``4,096.2``), or ``1.23e+12`` beyond a billion."""
    return f"{x:,.{decimals}f}" if x < 1e9 else f"{x:.3g}"


def _check_search(
    cart: np.ndarray, lattice: np.ndarray, volume: float, cutoff: float, periodic: bool, name: str
) -> None:
    """Refuse a cell whose neighbour search would be unreasonable (the bounds and why: see the module constants)."""
    n = cart.shape[0]
    cells = search_cells(cart, cutoff)
    if cells > MAX_SEARCH_CELLS_PER_ATOM * n:
        lengths = ", ".join(f"{x:.4g}" for x in np.linalg.norm(lattice, axis=1))
        span = " x ".join(f"{x:.4g}" for x in np.ptp(cart, axis=0))
        raise StructureError(
            f"{name}: the neighbour search would need {_count(cells)} grid cells of cutoff={cutoff:g} Å for {n} "
            f"atoms ({_count(cells / n, 1)} per atom, bound MAX_SEARCH_CELLS_PER_ATOM={MAX_SEARCH_CELLS_PER_ATOM}): the atoms "
            f"span {span} Å (lattice lengths {lengths} Å); check the lattice lengths (Å) and that the coordinates "
            "lie in the cell, or remove this entry."
        )
    if periodic and volume < MIN_VOLUME_PER_ATOM * n:  # a non-periodic axis has no images to pile up
        raise StructureError(
            f"{name}: {n} atoms in a cell of {volume:.3g} Å³ ({volume / n:.3g} Å³ per atom, bound "
            f"MIN_VOLUME_PER_ATOM={MIN_VOLUME_PER_ATOM} Å³): far denser than any solid; check the lattice lengths "
            "(Å) or remove this entry."
        )


def _search(cart: np.ndarray, centres: np.ndarray, lattice: np.ndarray, pbc: np.ndarray, r: float):
    """pymatgen's compiled sphere search → ``(centres, points, images (int64), distances)``, unsorted, with
    ``Structure.get_neighbor_list``'s self exclusion when ``centres is cart``."""
    c, p, img, d = find_points_in_spheres(cart, centres, r=float(r), pbc=pbc, lattice=lattice, tol=_NUMERICAL_TOL)
    c, p = np.asarray(c, dtype=np.int64), np.asarray(p, dtype=np.int64)
    images = np.rint(img).astype(np.int64).reshape(-1, 3)
    if centres is cart:
        keep = ~((c == p) & (d <= _NUMERICAL_TOL))
        c, p, images, d = c[keep], p[keep], images[keep], d[keep]
    return c, p, images, d


#: distances closer than this (Å) sort as equal, so that ties are broken by neighbour and image, never by float noise
DISTANCE_TIE = 1e-4


def _edge_order(centers: np.ndarray, points: np.ndarray, images: np.ndarray, dists: np.ndarray) -> np.ndarray:
    """Permutation sorting edges by ``(centre, distance, neighbour, image)``, the distance in steps of
    :data:`DISTANCE_TIE`.

    Symmetry-equivalent neighbours are at the same distance up to the rounding of how the structure was given
    (a CIF's 6 decimals, a dict, a cache): sorted by the exact float, which of them the ``max_neighbors`` cut keeps
    would depend on that noise, and the same crystal would get other graphs in training and in prediction.

    Three sort keys instead of six: neighbour and image are packed into one int64 (images are bounded by the
    search radius over the shortest lattice-plane spacing, far inside ±2**15), which halves ``np.lexsort``'s
    time on a typical 200-edge graph (28 → 14 µs).
    """
    packed = points.copy()
    for axis in range(3):
        packed <<= 16
        packed |= images[:, axis] + (1 << 15)
    return np.lexsort((packed, np.rint(dists / DISTANCE_TIE), centers))


def neighbor_list_arrays(
    cart_coords: np.ndarray,
    lattice: np.ndarray,
    cutoff: float,
    max_neighbors: int | None = None,
    max_isolated_radius: float = 20.0,
    pbc: Sequence[bool] = (True, True, True),
    name: str = "structure",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Periodic neighbour list from Cartesian coordinates ``[N, 3]`` (Å) and a lattice ``[3, 3]`` (Å).

    Returns ``(i, j, images, distances)`` with shapes ``[E]``, ``[E]``, ``[E, 3]`` (int64),
    ``[E]`` (Å), sorted by ``(i, distance, j)``; ``images`` are relative to the *given*
    coordinates (no wrapping). Isolated atoms get their nearest shell (see :class:`GraphSettings`).

    Raises:
        StructureError: no atoms, NaN/inf, zero volume, a search grid above :data:`MAX_SEARCH_CELLS_PER_ATOM`
            cells per atom (:func:`search_cells`), a fully periodic cell with less than
            :data:`MIN_VOLUME_PER_ATOM` Å³ per atom, or an isolated atom with no neighbour within
            ``max_isolated_radius``.
    """
    cart = np.ascontiguousarray(cart_coords, dtype=np.float64)
    lat = np.ascontiguousarray(lattice, dtype=np.float64)
    periodic = [int(bool(x)) for x in pbc]
    pbc_arr = np.ascontiguousarray(periodic, dtype=np.int64)
    volume = _check_arrays(cart, lat, name)
    _check_search(cart, lat, volume, cutoff, all(periodic), name)
    centers, points, images, dists = _search(cart, cart, lat, pbc_arr, cutoff)
    n = cart.shape[0]

    isolated = np.flatnonzero(np.bincount(centers, minlength=n) == 0)
    if isolated.size:
        extra = [_nearest_shell(cart, lat, pbc_arr, int(a), cutoff, max_isolated_radius, name) for a in isolated]
        ei = np.concatenate([e[0] for e in extra])
        ej = np.concatenate([e[1] for e in extra])
        eimg = np.concatenate([e[2] for e in extra])
        ed = np.concatenate([e[3] for e in extra])
        # both directions so the isolated atom also receives messages; drop duplicates
        centers = np.concatenate([centers, ei, ej])
        points = np.concatenate([points, ej, ei])
        images = np.concatenate([images, eimg, -eimg])
        dists = np.concatenate([dists, ed, ed])
        key = np.concatenate([centers[:, None], points[:, None], images], axis=1)
        _, keep = np.unique(key, axis=0, return_index=True)
        keep.sort()
        centers, points, images, dists = centers[keep], points[keep], images[keep], dists[keep]

    order = _edge_order(centers, points, images, dists)
    centers, points, images, dists = centers[order], points[order], images[order], dists[order]
    if max_neighbors is not None and centers.size:
        # rank of each edge within its centre's (distance-sorted) run
        starts = np.searchsorted(centers, centers, side="left")
        keep = (np.arange(centers.size) - starts) < max_neighbors
        centers, points, images, dists = centers[keep], points[keep], images[keep], dists[keep]
    return centers, points, images, dists


def neighbor_list(
    structure: Structure,
    cutoff: float,
    max_neighbors: int | None = None,
    max_isolated_radius: float = 20.0,
    name: str = "structure",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Periodic neighbour list of a pymatgen ``Structure``; see :func:`neighbor_list_arrays`.

    Inside the cutoff it equals ``structure.get_all_neighbors(cutoff)`` as a set of
    ``(i, j, image)`` with the same distances.
    """
    return neighbor_list_arrays(
        structure.cart_coords,
        structure.lattice.matrix,
        cutoff,
        max_neighbors,
        max_isolated_radius,
        pbc=structure.pbc,
        name=name,
    )


def _nearest_shell(cart, lat, pbc, atom: int, cutoff: float, max_radius: float, name: str):
    # The growing radius needs no guard of its own. A search around one atom has a 27-cell grid, and the images
    # it enumerates lie in a cube of side 2 x radius. The growth stops at the first radius holding a neighbour,
    # below twice the shortest lattice vector L (the atom's own image), and L³ <= 1.9 x volume (Minkowski): the
    # cube then holds at most ~120 images of each atom of the cell. At the first step (2 x cutoff) the cube
    # holds at most (4 x cutoff)³ / MIN_VOLUME_PER_ATOM points (16,000 at cutoff=5).
    radius = cutoff
    while radius < max_radius:
        radius = min(2 * radius, max_radius)
        _, p, img, d = _search(cart, np.ascontiguousarray(cart[atom : atom + 1]), lat, pbc, radius)
        self_pair = (p == atom) & (d <= _NUMERICAL_TOL)
        p, img, d = p[~self_pair], img[~self_pair], d[~self_pair]
        if len(d):
            shell = d <= d.min() * (1 + _SHELL_TOL)
            m = int(shell.sum())
            return np.full(m, atom, dtype=np.int64), p[shell], img[shell], d[shell]
    raise StructureError(
        f"{name}: atom {atom} has no neighbour within {max(max_radius, cutoff)} Å; the cell is probably "
        "wrong (check the lattice units), or raise the search limit max_isolated_radius "
        f"({param('data.max_isolated_radius')}=<Å>)."
    )


def graph_arrays(
    atomic_numbers: np.ndarray,
    cart_coords: np.ndarray,
    lattice: np.ndarray,
    settings: GraphSettings,
    pbc: Sequence[bool] = (True, True, True),
    name: str = "structure",
) -> GraphArrays:
    """Graph of an ordered crystal given as arrays (Z ``[N]``, Cartesian ``[N, 3]`` Å, lattice ``[3, 3]`` Å).

    Raises:
        StructureError: see :func:`structure_to_graph`; also an atomic number outside 1..118.
    """
    _check_atomic_numbers(atomic_numbers, name)
    cart = np.array(cart_coords, dtype=np.float64).reshape(-1, 3)  # copies: pymatgen's arrays are read-only
    lat = np.array(lattice, dtype=np.float64).reshape(3, 3)
    i, j, images, _ = neighbor_list_arrays(
        cart, lat, settings.cutoff, settings.max_neighbors, settings.max_isolated_radius, pbc=pbc, name=name
    )
    return GraphArrays(np.asarray(atomic_numbers, dtype=np.int64), cart, lat, np.stack([i, j]), images)


def structure_graph_arrays(structure: Structure, settings: GraphSettings, name: str = "structure") -> GraphArrays:
    """:func:`graph_arrays` of a pymatgen ``Structure`` (checks it is non-empty and ordered)."""
    check_structure(structure, name)
    return graph_arrays(
        np.array(structure.atomic_numbers),
        structure.cart_coords,
        structure.lattice.matrix,
        settings,
        pbc=structure.pbc,
        name=name,
    )


def arrays_to_data(arrays: GraphArrays, state: Sequence[float] = DEFAULT_STATE) -> Data:
    """Wrap :class:`GraphArrays` as a PyG ``Data`` with the dtypes of :func:`structure_to_graph`."""
    fields = {
        "atomic_numbers": torch.from_numpy(np.ascontiguousarray(arrays.atomic_numbers, dtype=np.int64)),
        "pos": torch.from_numpy(np.ascontiguousarray(arrays.pos, dtype=np.float64)),
        "lattice": torch.from_numpy(np.ascontiguousarray(arrays.lattice, dtype=np.float64)).reshape(1, 3, 3),
        "edge_index": torch.from_numpy(np.ascontiguousarray(arrays.edge_index, dtype=np.int64)),
        "image_offsets": torch.from_numpy(np.ascontiguousarray(arrays.image_offsets, dtype=np.int64)),
        "state": torch.tensor([tuple(state)], dtype=torch.float32),
        "num_nodes": int(arrays.atomic_numbers.shape[0]),
    }
    return new_data(fields)


def with_cutoff(data: Data, settings: GraphSettings) -> Data:
    """``data`` stamped with the cutoff (Å) its edges were built with (``data.cutoff``): a model built for another
    cutoff refuses the batch (:func:`~sagnn_lightning.data.batch.collate_graphs` carries it)."""
    data.cutoff = float(settings.cutoff)
    return data


def new_data(fields: dict) -> Data:
    """``Data(**fields)``, 6× faster when PyG's storage layout is the one :func:`_fast_data_works` checked:
    ``Data.__init__`` runs PyG's ``__setattr__`` per field (29 µs for these 7 on the benchmark machine, a
    third of building a small crystal's graph); filling the storage's mapping directly costs 4.6 µs."""
    if _fast_data_works():
        data = Data()
        data._store._mapping.update(fields)
        return data
    return Data(**fields)


@cache
def _fast_data_works() -> bool:
    """Whether filling ``Data()._store._mapping`` gives the same object as ``Data(**fields)`` with this PyG
    (checked once per process on a small graph: keys, values, ``num_nodes``, ``num_edges``, collation)."""
    from torch_geometric.data import Batch

    fields = {
        "x": torch.arange(3),
        "edge_index": torch.tensor([[0, 1], [1, 2]]),
        "lattice": torch.eye(3).reshape(1, 3, 3),
        "num_nodes": 3,
    }
    try:
        data = Data()
        data._store._mapping.update(fields)
        slow = Data(**fields)
        batch, slow_batch = Batch.from_data_list([data, data]), Batch.from_data_list([slow, slow])
        return (
            sorted(data.keys()) == sorted(slow.keys())
            and all(torch.equal(data[k], slow[k]) for k in ("x", "edge_index", "lattice"))
            and data.num_nodes == slow.num_nodes == 3
            and data.num_edges == slow.num_edges
            and torch.equal(batch.edge_index, slow_batch.edge_index)
            and torch.equal(batch.batch, slow_batch.batch)
        )
    except Exception:  # noqa: BLE001 - any difference in PyG's internals means: use the public constructor
        return False


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

    Raises:
        StructureError: empty or disordered structure, a species that is no element, or a cell that
            :func:`neighbor_list_arrays` refuses (non-finite, zero volume, far too large or too dense for its
            atoms, an atom with no neighbour within ``max_isolated_radius``).
    """
    settings = GraphSettings(
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        max_isolated_radius=max_isolated_radius,
        state=DEFAULT_STATE if state is None else tuple(state),
    )
    return graph_from_settings(structure, settings, name=name)


def graph_from_settings(structure: Structure, settings: GraphSettings, name: str = "structure") -> Data:
    """:func:`structure_to_graph` with a :class:`GraphSettings`."""
    return with_cutoff(arrays_to_data(structure_graph_arrays(structure, settings, name), settings.state), settings)
