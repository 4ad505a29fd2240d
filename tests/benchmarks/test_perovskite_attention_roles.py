"""benchmarks/perovskite_attention_roles.py: site labels from the geometry, and the per-site attention it reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perovskite_attention_roles.py"


def _load():
    spec = importlib.util.spec_from_file_location("perovskite_attention_roles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sites_come_from_the_geometry_wherever_the_origin_is(tmp_path, capsys) -> None:
    roles = _load()
    lattice = np.eye(3) * 3.9  # SrTiO3: Sr at the corner (A), Ti at the centre (B), O at the face centres
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    elements = np.array(["Sr", "Ti", "O", "O", "O"])
    assert roles.site_roles(elements, frac, lattice) == ["A", "B", "X", "X", "X"]
    shifted = (frac + 0.5) % 1.0  # the origin on Ti: Ti at the corner is still the octahedral site
    assert roles.site_roles(elements, shifted, lattice) == ["A", "B", "X", "X", "X"]
    assert roles.site_roles(np.array(["Sr", "Ti", "O", "O", "Ti"]), frac, lattice) is None

    # an export where every query attends only to the B atom: B gets 5x uniform, A and X nothing
    attention = np.zeros((1, 2, 5, 5))
    attention[..., 1] = 1.0
    np.savez(tmp_path / "c.npz", attention=attention, elements=elements, frac_coords=shifted, lattice=lattice)
    index = {"layers": ["attention_layers.0"], "crystals": {"c": {"file": "c.npz"}}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert roles.main([str(tmp_path), "--out", str(tmp_path / "roles.csv")]) == 0
    assert "| B | 5.00 | 5.00 | 5.00 |" in capsys.readouterr().out
    assert "A,mean,0.000000,1" in (tmp_path / "roles.csv").read_text()
