"""Batching: ptr, batch, offset edge_index, max_num_atoms; bond lengths in a batch equal per-graph ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from torch.utils.data import DataLoader

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.cache import load_or_build_graphs
from sagnn_lightning.data.graph import GraphSettings, structure_to_graph
from sagnn_lightning.nn.geometry import bond_lengths

FIXTURE = Path(__file__).resolve().parents[2] / "tests/fixtures/graph/structures.json.gz"


@pytest.fixture(scope="module")
def fixture() -> dict:
    with gzip.open(FIXTURE, "rt") as f:
        return json.load(f)


def check_batch(graphs, batch) -> None:
    sizes = [g.num_nodes for g in graphs]
    assert batch.num_graphs == len(graphs)
    assert batch.ptr.tolist() == np.concatenate([[0], np.cumsum(sizes)]).tolist()
    assert batch.batch.tolist() == [k for k, n in enumerate(sizes) for _ in range(n)]
    assert batch.max_num_atoms == max(sizes) and isinstance(batch.max_num_atoms, int)
    assert batch.lattice.shape == (len(graphs), 3, 3) and batch.state.shape == (len(graphs), 2)
    e0 = 0
    for k, g in enumerate(graphs):
        e1 = e0 + g.edge_index.shape[1]
        assert torch.equal(batch.edge_index[:, e0:e1] - batch.ptr[k], g.edge_index)
        assert torch.equal(batch.image_offsets[e0:e1], g.image_offsets)
        e0 = e1
    assert e0 == batch.edge_index.shape[1]
    per_graph = torch.cat([bond_lengths(g.pos, g.lattice, g.edge_index, g.image_offsets) for g in graphs])
    batched = bond_lengths(batch.pos, batch.lattice, batch.edge_index, batch.image_offsets, batch.batch)
    assert torch.allclose(batched, per_graph, rtol=0, atol=1e-12)


def test_collate_structure_graphs(fixture) -> None:
    graphs = [structure_to_graph(Structure.from_dict(d)) for d in fixture["structures"]]
    check_batch(graphs, collate_graphs(graphs))
    check_batch(graphs[:1], collate_graphs(graphs[:1]))  # a batch of one (the 1-atom jdft2d cell first)
    with pytest.raises(ValueError):
        collate_graphs([])


def test_dataloader_over_cached_graphs(fixture, tmp_path) -> None:
    ids = fixture["ids"]
    targets = np.array(fixture["targets"])[:, None]
    ds = load_or_build_graphs(tmp_path, "fp", ids, fixture["structures"], targets, GraphSettings(), progress=False)
    loader = DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate_graphs)
    seen = []
    for k, batch in enumerate(loader):
        graphs = [ds[i] for i in range(5 * k, min(5 * k + 5, len(ds)))]
        check_batch(graphs, batch)
        assert batch.y.shape == (len(graphs), 1) and batch.y.dtype == torch.float32
        seen += list(batch.sample_id)
    assert seen == ids
