"""``benchmarks/graph_options.py``: edges per atom against pymatgen's own neighbour count, and a table row per task
and option with a positive training rate (the rates themselves are measured, not tested)."""

from __future__ import annotations

import pandas as pd
from pymatgen.core import Structure

from sagnn_lightning.data.samples import sample_path
from tests.scripts import load_script

script = load_script("benchmarks/graph_options.py")


def test_edges_per_atom_match_pymatgen_and_every_option_trains(tmp_path, capsys):
    data = sample_path("mp_abx3_perovskites")
    out = tmp_path / "graph_options.csv"
    argv = ["--data", str(data), "--options", "5", "8:4", "--crystals", "6", "--batch-size", "3", "--rounds", "1"]
    assert script.main([*argv, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.option) == ["radius 5 Å", "4 nearest within 8 Å"]
    structures = [Structure.from_str(cif, fmt="cif") for cif in pd.read_csv(data).cif[:6]]
    atoms = sum(len(s) for s in structures)
    within_5 = sum(len(n) for s in structures for n in s.get_all_neighbors(5.0))
    assert table.edges_per_atom[0] == round(within_5 / atoms, 2)
    assert table.edges_per_atom[1] == 4.0  # every atom of these perovskites has >= 4 neighbours within 8 Å
    assert (table.train_crystals_per_s > 0).all() and table.train_ratio_to_first[0] == 1.0
    assert "| mp_abx3_perovskites | radius 5 Å |" in capsys.readouterr().out
