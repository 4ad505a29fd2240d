"""MEGNetBlock vs a naive per-edge / per-atom / per-graph loop, on a real batch of crystal graphs."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.data import collate_graphs
from sagnn_lightning.nn.dense import ShiftedSoftplus, mlp
from sagnn_lightning.nn.megnet_block import BlockSegments, MEGNetBlock
from tests.models.physics import graph, load_fixture_structures

DIM = 8


@pytest.fixture(scope="module")
def batch():
    structures = load_fixture_structures()[:4]
    return collate_graphs([graph(s, mbid) for mbid, s in structures])


def features(batch, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(batch.edge_index.shape[1], DIM, generator=g, dtype=torch.float64)
    v = torch.randn(batch.num_nodes, DIM, generator=g, dtype=torch.float64)
    u = torch.randn(batch.num_graphs, DIM, generator=g, dtype=torch.float64)
    return e, v, u


def run(block, batch, e, v, u):
    edge_batch = batch.batch[batch.edge_index[0]]
    return block(e, v, u, batch.edge_index, batch.batch, edge_batch, batch.num_graphs)


def naive_block(block: MEGNetBlock, batch, e0, v0, u0):
    e, v, u = block.edge_dense(e0), block.atom_dense(v0), block.state_dense(u0)
    src, dst = batch.edge_index.tolist()
    graph_of = batch.batch.tolist()
    e_new = torch.stack(
        [block.edge_update(torch.cat([v[i], v[j], e[k], u[graph_of[i]]])) for k, (i, j) in enumerate(zip(src, dst))]
    )
    v_new = []
    for a in range(v.shape[0]):
        mine = [k for k, i in enumerate(src) if i == a]
        agg = e_new[mine].mean(0) if mine else torch.zeros(DIM, dtype=e.dtype)
        v_new.append(block.atom_update(torch.cat([v[a], agg, u[graph_of[a]]])))
    v_new = torch.stack(v_new)
    u_new = []
    for b in range(u.shape[0]):
        edges = [k for k, i in enumerate(src) if graph_of[i] == b]
        atoms = [a for a, gb in enumerate(graph_of) if gb == b]
        u_new.append(block.state_update(torch.cat([u[b], e_new[edges].mean(0), v_new[atoms].mean(0)])))
    u_new = torch.stack(u_new)
    if block.residual:
        return e_new + e0, v_new + v0, u_new + u0
    return e_new, v_new, u_new


@pytest.mark.parametrize("dense_hidden", [None, (16,)])
@pytest.mark.parametrize("residual", [True, False])
def test_matches_naive_loops(batch, dense_hidden, residual):
    torch.manual_seed(0)
    block = MEGNetBlock(DIM, dense_hidden, (16, 16), residual=residual).double()
    e, v, u = features(batch)
    out = run(block, batch, e, v, u)
    with torch.no_grad():
        ref = naive_block(block, batch, e, v, u)
    for got, want in zip(out, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert [t.shape for t in out] == [e.shape, v.shape, u.shape]


def test_megnet_widths():
    block = MEGNetBlock()
    assert [m.in_features for m in block.edge_update if isinstance(m, torch.nn.Linear)] == [128, 64, 64]
    assert [m.out_features for m in block.atom_update if isinstance(m, torch.nn.Linear)] == [64, 64, 32]
    assert [m.out_features for m in block.state_dense if isinstance(m, torch.nn.Linear)] == [64, 32]
    assert isinstance(block.edge_update[-1], ShiftedSoftplus)
    assert isinstance(MEGNetBlock(dense_hidden=None).edge_dense, torch.nn.Identity)


def test_shifted_softplus_and_mlp():
    x = torch.linspace(-5, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(ShiftedSoftplus()(x), torch.log(0.5 * torch.exp(x) + 0.5))
    # softplus(0) = ln 2 by torch's float32 kernel minus Python's ln 2: equal to float32 rounding, not bit for bit
    assert ShiftedSoftplus()(torch.zeros(1)).item() == pytest.approx(0.0, abs=1e-6)
    assert not isinstance(mlp([3, 4, 2], activate_last=False)[-1], ShiftedSoftplus)
    with pytest.raises(ValueError, match="at least"):
        mlp([3])


def test_gradcheck():
    """float64 gradcheck on the two smallest fixture crystals (1 and 2 atoms, 30 bonds: keeps it cheap)."""
    structures = load_fixture_structures()
    small = collate_graphs([graph(s, mbid) for mbid, s in structures[:2]])
    torch.manual_seed(0)
    block = MEGNetBlock(DIM, (16,), (16,)).double()
    e, v, u = (t.requires_grad_(True) for t in features(small, 1))
    assert torch.autograd.gradcheck(lambda a, b, c: run(block, small, a, b, c), (e, v, u))


def test_block_segments_count_each_index_and_keep_the_bond_ends(batch):
    """The three divisors, counted in one scatter, equal counting each index alone (naive loops)."""
    segments = BlockSegments.of(batch.edge_index, batch.batch, batch.num_graphs, torch.float64)
    src, dst = batch.edge_index.tolist()
    graph_of = batch.batch.tolist()
    assert segments.centre.tolist() == src and segments.neighbour.tolist() == dst
    assert segments.edge_batch.tolist() == [graph_of[i] for i in src]
    per_atom = [max(1, src.count(a)) for a in range(batch.num_nodes)]
    per_graph_edges = [max(1, sum(graph_of[i] == b for i in src)) for b in range(batch.num_graphs)]
    per_graph_atoms = [max(1, graph_of.count(b)) for b in range(batch.num_graphs)]
    assert segments.edges_per_atom.squeeze(1).tolist() == per_atom
    assert segments.edges_per_graph.squeeze(1).tolist() == per_graph_edges
    assert segments.atoms_per_graph.squeeze(1).tolist() == per_graph_atoms
