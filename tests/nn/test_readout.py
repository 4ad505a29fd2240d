"""Set2Set vs torch_geometric's Set2Set (same weights), copy invariance, and the MEGNet readout layout."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn.aggr import Set2Set as PyGSet2Set

from sagnn_lightning.nn.readout import MEGNetReadout, Set2Set, paired_set2set


def segments(sizes, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.randn(int(sum(sizes)), dim, generator=g, dtype=torch.float64), index


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_matches_pyg_set2set(steps):
    torch.manual_seed(0)
    ours = Set2Set(6, steps).double()
    ref = PyGSet2Set(6, steps).double()
    ref.lstm.load_state_dict(ours.lstm.state_dict())
    x, index = segments([1, 4, 7, 2], 6)
    out = ours(x, index, 4)
    assert out.shape == (4, 12)
    torch.testing.assert_close(out, ref(x, index, dim_size=4), rtol=1e-12, atol=1e-12)


def test_unsorted_index():
    torch.manual_seed(0)
    s2s = Set2Set(5, 2).double()
    x, index = segments([3, 5, 2], 5)
    perm = torch.randperm(x.shape[0])
    torch.testing.assert_close(s2s(x[perm], index[perm], 3), s2s(x, index, 3), rtol=1e-12, atol=1e-12)


def test_identical_copies_pool_like_one():
    """Repeating every member of a set m times leaves the pooled vector unchanged (why supercells are intensive)."""
    torch.manual_seed(0)
    s2s = Set2Set(5, 3).double()
    x, index = segments([3, 4], 5)
    copies = 8
    torch.testing.assert_close(
        s2s(x.repeat(copies, 1), index.repeat(copies), 2), s2s(x, index, 2), rtol=1e-12, atol=1e-12
    )


def test_gradcheck():
    torch.manual_seed(0)
    s2s = Set2Set(3, 2).double()
    x, index = segments([2, 3], 3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: s2s(t, index, 2), (x,))


def test_megnet_readout_layout():
    torch.manual_seed(0)
    readout = MEGNetReadout(4).double()
    atoms, batch = segments([2, 3], 4, seed=1)
    edges, edge_batch = segments([5, 7], 4, seed=2)
    state = torch.randn(2, 4, dtype=torch.float64)
    out = readout(atoms, edges, state, batch, edge_batch, 2)
    assert out.shape == (2, readout.out_channels) == (2, 20)
    torch.testing.assert_close(out[:, :8], readout.atom_set2set(atoms, batch, 2))
    torch.testing.assert_close(out[:, 8:16], readout.edge_set2set(edges, edge_batch, 2))
    torch.testing.assert_close(out[:, 16:], state)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_paired_set2set_equals_two_calls(steps):
    """The readout's one-pass pair (batched LSTM step, one packed softmax) against each Set2Set on its own set:
    values and gradients of the features and of both Set2Sets' weights; gradcheck in float64 (finite differences)."""
    torch.manual_seed(steps)
    atoms, bonds = Set2Set(6, steps).double(), Set2Set(6, steps).double()
    xa, ia = segments([1, 4, 7, 2], 6, seed=1)
    xb, ib = segments([5, 9, 3, 11], 6, seed=2)
    perm = torch.randperm(xb.shape[0])  # the bond index need not be sorted
    xb, ib = xb[perm], ib[perm]

    def run(pair: bool):
        for p in [*atoms.parameters(), *bonds.parameters()]:
            p.grad = None
        a, b = xa.clone().requires_grad_(True), xb.clone().requires_grad_(True)
        out = (
            paired_set2set(atoms, bonds, a, ia, b, ib, 4) if pair else torch.cat([atoms(a, ia, 4), bonds(b, ib, 4)], -1)
        )
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        weights = [*atoms.parameters(), *bonds.parameters()]  # one step: the LSTM weights only meet zeros
        return [out.detach(), a.grad, b.grad, *(torch.zeros_like(p) if p.grad is None else p.grad for p in weights)]

    for paired, separate in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(paired, separate, rtol=1e-10, atol=1e-10)
    a, b = xa[:6].clone().requires_grad_(True), xb[:9].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: paired_set2set(atoms, bonds, a, ia[:6], b, ib[:9], 4), (a, b))


def test_readout_pairs_only_single_layer_set2sets():
    """Two-layer LSTMs take the two separate calls (and give the same layout)."""
    torch.manual_seed(0)
    readout = MEGNetReadout(4, processing_steps=2, num_layers=2).double()
    xa, ia = segments([2, 3], 4, seed=3)
    xb, ib = segments([4, 6], 4, seed=4)
    state = torch.randn(2, 4, dtype=torch.float64)
    expected = torch.cat([readout.atom_set2set(xa, ia, 2), readout.edge_set2set(xb, ib, 2), state], -1)
    torch.testing.assert_close(readout(xa, xb, state, ia, ib, 2), expected)
