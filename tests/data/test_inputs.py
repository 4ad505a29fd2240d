"""One path from a raw structure input to a graph: ``fit`` (the graph cache) and ``predict`` build the same graph."""

from __future__ import annotations

import json

import pandas as pd
import torch
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.data.graph import GraphSettings
from sagnn_lightning.data.inputs import item_to_graph
from sagnn_lightning.data.parsers import parse_simple_cif
from sagnn_lightning.data.readers import read_inputs
from sagnn_lightning.data.samples import sample_path

FIELDS = ("atomic_numbers", "pos", "lattice", "edge_index", "image_offsets", "state")


def _real_rows() -> pd.DataFrame:
    """Real MP perovskites as P1 CIF text (the fast reader's path), and four of them re-written as symmetrised
    CIFs (space-group operations: pymatgen's path) and as ``Structure.as_dict()`` JSON (the dict reader)."""
    mp = pd.read_csv(sample_path("mp_abx3_perovskites")).head(16)
    frame = pd.DataFrame({"id": mp.material_id, "cif": mp.cif, "y": mp.band_gap})
    extra = []
    for sid, cif in zip(mp.material_id[:4], mp.cif[:4]):
        structure = Structure.from_str(cif, fmt="cif")
        symmetric = str(CifWriter(structure, symprec=0.01))
        assert parse_simple_cif(symmetric) is None  # not P1: pymatgen parses it
        extra += [(f"{sid}-sym", symmetric), (f"{sid}-dict", json.dumps(structure.as_dict()))]
    return pd.concat([frame, pd.DataFrame({"id": [i for i, _ in extra], "cif": [c for _, c in extra], "y": 0.0})])


def test_a_crystal_gives_the_same_graph_in_fit_and_in_predict(tmp_path):
    frame = _real_rows()
    path = tmp_path / "crystals.csv"
    frame.to_csv(path, index=False)
    cutoff = 4.5
    datamodule = CrystalDataModule(
        str(path),
        target_columns=["y"],
        val_fraction=0.0,
        test_fraction=0.0,
        cutoff=cutoff,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    cached = datamodule.graph_dataset()  # what fit trains on: built into the cache, read back from disk
    by_id = {sid: k for k, sid in enumerate(cached.sample_ids)}
    inputs = read_inputs(path)  # what predict reads
    assert inputs.ids == list(frame.id) and not inputs.errors
    settings = GraphSettings(cutoff=cutoff)
    for sid, item in zip(inputs.ids, inputs.items):
        fit_graph, predict_graph = cached[by_id[sid]], item_to_graph(item, settings, name=sid)
        assert fit_graph.num_nodes == predict_graph.num_nodes
        for key in FIELDS:
            a, b = fit_graph[key], predict_graph[key]
            assert a.dtype == b.dtype and torch.equal(a.reshape(b.shape), b), (sid, key)
