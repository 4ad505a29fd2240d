"""Fast parsers for the most common inputs; ``None`` means "use pymatgen" (which then decides).

:func:`parse_simple_dict` reads an ordered ``Structure.as_dict()`` (lattice matrix, one element per
site with occupancy 1, fractional ``abc``) as ``Structure.from_dict`` does, without building
Site objects. :func:`parse_simple_cif` handles P1 CIFs with fully occupied sites:

pymatgen's ``CifParser`` takes ~2 ms per small structure, more than building its graph.
Materials Project / matbench exports (``# generated using pymatgen``) are P1 files with one
``x, y, z`` symmetry operation and occupancy 1; for those :func:`parse_simple_cif` reads the
cell and the atom-site loop directly and reproduces pymatgen's numbers: the same lattice matrix
(``Lattice.from_parameters``), the same 1/3 and 2/3 rounding of fractional coordinates
(tolerance 1e-4) and the same wrapping into ``[0, 1)``. Anything else (symmetry operations,
partial occupancy, missing ``_atom_site_type_symbol``, unusual symbols, text fields, several data
blocks, sites closer than pymatgen's merge tolerance, more than 300 sites) returns ``None`` and the
caller falls back to pymatgen. Atom order is the file's row order (pymatgen sorts by
electronegativity); the graph is the same up to that permutation.

What agreement is promised (and tested, ``tests/data/test_graph.py``, ``tests/data/test_cache.py``):
atomic numbers exactly (in the dict's site order; for CIFs in the file's row order), lattice matrices and
Cartesian positions to within 1e-10 Å of pymatgen's. Not bit for bit: the same formula (``frac @ matrix``) is evaluated by different numpy calls,
whose last bit moves with the numpy/BLAS build (1.8e-15 Å seen with numpy 2.4 / pymatgen 2026.10).
Graphs built from either have the same edges (i, j, periodic image) unless a bond length lies within that
tolerance of the cutoff (or of the last bond kept by ``max_neighbors``); edges are sorted by length, so
equally long bonds may come in another order.
"""

from __future__ import annotations

import re

import numpy as np
from pymatgen.core import Element, Lattice

_Z = {el.symbol: el.Z for el in Element}
_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")
_SYMBOL = re.compile(r"^([A-Z][a-z]?)(\d*[+-])?$")
_ESD = re.compile(r"\(.+\)*")  # pymatgen's str2float strips uncertainties this way
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
_CELL = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_FRAC_TOL = 1e-4  # pymatgen CifParser frac_tolerance and site_tolerance
_MAX_SITES = 300


def _float(text: str) -> float:
    return float(_ESD.sub("", text))


def _tokens(lines: list[str]) -> tuple[dict[str, str], list[tuple[list[str], list[str]]]] | None:
    """Split into single items ``{tag: value}`` and loops ``[(tags, values)]``; ``None`` if unusual."""
    items: dict[str, str] = {}
    loops: list[tuple[list[str], list[str]]] = []
    k, n = 0, len(lines)
    while k < n:
        line = lines[k]
        if line.startswith("loop_"):
            tags: list[str] = []
            k += 1
            while k < n and lines[k].startswith("_"):
                tags.append(lines[k].split()[0].lower())
                k += 1
            values: list[str] = []
            while k < n and not lines[k].startswith(("_", "loop_", "data_")):
                values.extend(_TOKEN.findall(lines[k]))
                k += 1
            if not tags or len(values) % len(tags):
                return None
            loops.append((tags, values))
            continue
        if line.startswith("_"):
            parts = line.split(None, 1)
            if len(parts) != 2:
                return None  # value on the next line(s): leave it to pymatgen
            toks = _TOKEN.findall(parts[1])
            if len(toks) != 1:
                return None
            items[parts[0].lower()] = toks[0]
        elif not line.startswith("data_"):
            return None
        k += 1
    return items, loops


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def parse_simple_cif(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Parse a simple P1 CIF: ``(atomic_numbers [N] int64, cart_coords [N, 3] Å, lattice [3, 3] Å)`` or ``None``.

    ``None`` means "not simple enough, use pymatgen" (never "invalid"). Agrees with
    ``Structure.from_str(text, fmt="cif")`` up to atom order: same elements, lattice and positions to within
    1e-10 Å (positions compared modulo the lattice).
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if sum(ln.startswith("data_") for ln in lines) != 1 or any(ln.startswith(";") for ln in lines):
        return None
    if any("magn" in ln or "attached_hydrogens" in ln for ln in lines if ln.startswith("_")):
        return None
    parsed = _tokens(lines)
    if parsed is None:
        return None
    items, loops = parsed
    try:
        cell = [_float(items[t]) for t in _CELL]
    except (KeyError, ValueError):
        return None

    ops: list[str] = [items[t] for t in _SYMOP_TAGS if t in items]
    site: dict[str, list[str]] | None = None
    for tags, values in loops:
        cols = {t: values[c :: len(tags)] for c, t in enumerate(tags)}
        for t in _SYMOP_TAGS:
            ops.extend(cols.get(t, []))
        if "_atom_site_fract_x" in cols:
            if site is not None:
                return None
            site = cols
    if not ops or any(re.sub(r"\s", "", _unquote(op)).lower() != "x,y,z" for op in ops):
        return None
    if (
        site is None
        or "_atom_site_type_symbol" not in site
        or not {"_atom_site_fract_y", "_atom_site_fract_z"} <= set(site)
    ):
        return None
    n = len(site["_atom_site_fract_x"])
    if not 0 < n <= _MAX_SITES:
        return None
    try:
        z = []
        for sym in site["_atom_site_type_symbol"]:
            m = _SYMBOL.match(sym)
            if m is None or m.group(1) not in _Z:
                return None
            z.append(_Z[m.group(1)])
        if any(_float(o) != 1.0 for o in site.get("_atom_site_occupancy", [])):
            return None
        frac = np.array([[_float(v) for v in site[f"_atom_site_fract_{c}"]] for c in "xyz"], dtype=np.float64).T
    except ValueError:
        return None
    for ideal in (1 / 3, 2 / 3):  # pymatgen CifParser._sanitize_data
        close = np.abs(frac / ideal - 1) <= _FRAC_TOL
        frac[close] = float(str(ideal))
    frac = frac - np.floor(frac)
    if n > 1:  # pymatgen merges sites within the site tolerance: let it
        diff = frac[:, None, :] - frac[None, :, :]
        same = np.asarray((np.abs(diff - np.round(diff)) < _FRAC_TOL).all(-1))
        np.fill_diagonal(same, False)
        if same.any():
            return None
    matrix = np.array(Lattice.from_parameters(*cell).matrix, dtype=np.float64)
    if _min_thickness(matrix.tolist()) < 0.01:
        return None  # pymatgen rejects cells thinner than 0.01 Å: let it raise its own error
    return np.asarray(z, dtype=np.int64), frac @ matrix, matrix


def _min_thickness(m: list[list[float]]) -> float:
    """Smallest interplanar spacing d_100, d_010, d_001 (Å) of a 3×3 lattice (plain floats: fast)."""

    def cross(u, v):
        return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])

    areas = [cross(m[(i + 1) % 3], m[(i + 2) % 3]) for i in range(3)]
    volume = abs(sum(a * b for a, b in zip(m[0], areas[0])))
    norms = [sum(x * x for x in a) ** 0.5 for a in areas]
    return min(volume / n if n > 0 else 0.0 for n in norms)


def parse_simple_dict(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Read an ordered, fully periodic ``Structure.as_dict()``: ``(Z [N], cart [N, 3] Å, lattice [3, 3] Å)`` or ``None``.

    Same site order and atomic numbers as ``Structure.from_dict``, the dict's lattice matrix unchanged, and
    positions ``abc @ matrix`` that agree with ``Structure.from_dict(d).cart_coords`` to within 1e-10 Å (not
    bit for bit: numpy may evaluate the product differently, see the module docstring).
    """
    try:
        lattice = d["lattice"]
        if not all(lattice.get("pbc", (True, True, True))):
            return None
        matrix = np.array(lattice["matrix"], dtype=np.float64)
        z, frac = [], []
        for site in d["sites"]:
            species = site["species"]
            if len(species) != 1 or float(species[0].get("occu", 1)) != 1.0 or species[0]["element"] not in _Z:
                return None
            z.append(_Z[species[0]["element"]])
            frac.append(site["abc"])
        frac_arr = np.array(frac, dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not z or matrix.shape != (3, 3) or frac_arr.shape != (len(z), 3):
        return None
    return np.asarray(z, dtype=np.int64), frac_arr @ matrix, matrix


_CELL_TAGS_ANY = ("_cell_length_", "_cell_angle_")
_SITE_COORDS = ("_atom_site_fract_x", "_atom_site_cartn_x")


def describe_cif_problem(text: str) -> str | None:
    """Why ``text`` is not a usable CIF, in words a user can act on (``None``: no obvious problem).

    Used for error messages after pymatgen failed: its exceptions for broken files are often
    internal (``ZeroDivisionError: integer modulo by zero`` for a file cut off after the atom-site
    loop header).
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return "the CIF is empty"
    if not any(ln.startswith("data_") for ln in lines):
        return "not a CIF (no 'data_' block)"
    tags = {ln.split()[0].lower() for ln in lines if ln.startswith("_")}
    missing_cell = [t for t in _CELL if t not in tags]
    if missing_cell:
        return f"cell parameters missing: {', '.join(missing_cell)} (truncated file, or not a crystal CIF)"
    if not tags & set(_SITE_COORDS):
        return "no atom sites, no _atom_site_fract_x loop (truncated file?)"
    k, n = 0, len(lines)
    while k < n:  # the loop holding the atom-site coordinates: count its values
        if not lines[k].startswith("loop_"):
            k += 1
            continue
        k += 1
        loop_tags: list[str] = []
        while k < n and lines[k].startswith("_"):
            loop_tags.append(lines[k].split()[0].lower())
            k += 1
        count = 0
        while k < n and not lines[k].startswith(("_", "loop_", "data_")):
            count += len(_TOKEN.findall(lines[k]))
            k += 1
        if set(loop_tags) & set(_SITE_COORDS):
            if count == 0:
                return "the atom-site loop has no rows (truncated file?)"
            if count % len(loop_tags):
                return (
                    f"the atom-site loop has {count} values for {len(loop_tags)} columns, a row is incomplete "
                    "(truncated file?)"
                )
    return None
