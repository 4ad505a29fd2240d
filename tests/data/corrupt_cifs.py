"""Corrupted copies of real CIFs, as found by feeding them to ``fit`` and ``predict`` (issue 23 §7)."""

from __future__ import annotations

import re


def absurd_lattice(cif: str, length: str = "1e9") -> str:
    """``cif`` with ``_cell_length_a`` set to ``length`` Å (pymatgen's search once asked for 194 GB for this)."""
    text, count = re.subn(r"(?m)^(_cell_length_a\s+)\S+", rf"\g<1>{length}", cif)
    assert count == 1, "no _cell_length_a line"
    return text


def unknown_element(cif: str, symbol: str = "Xx") -> str:
    """``cif`` with the first atom-site row's ``_atom_site_type_symbol`` replaced by ``symbol``."""
    lines = cif.splitlines()
    first_tag = next(k for k, line in enumerate(lines) if line.strip().startswith("_atom_site_"))
    row = first_tag
    while lines[row].strip().startswith("_"):
        row += 1
    tags = [line.strip() for line in lines[first_tag:row]]
    values = lines[row].split()
    values[tags.index("_atom_site_type_symbol")] = symbol
    lines[row] = "  " + "  ".join(values)
    return "\n".join(lines) + "\n"
