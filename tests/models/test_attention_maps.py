"""``model(batch, return_attention=True)`` on real crystals (float64): same prediction, rows sum to 1, atom
permutation permutes the maps, a supercell splits each weight over the copies of its atom, no crosstalk between the
crystals of a batch; the composition model's maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sagnn_lightning.data import collate_graphs
from sagnn_lightning.data.composition import composition_to_graph
from sagnn_lightning.models import SAGNN, CompositionSAGNN, megnet
from tests.models.physics import graph, load_fixture_structures, permute_atoms, supercell


@pytest.fixture(scope="module")
def structures():
    return load_fixture_structures()


@pytest.fixture(scope="module")
def graphs(structures):
    return [graph(s, mbid) for mbid, s in structures]


def _model(attention: str = "each", heads: int = 4) -> SAGNN:
    torch.manual_seed(0)
    return SAGNN(attention=attention, heads=heads, num_blocks=2, attention_backend="torch").double().eval()


@pytest.mark.parametrize("attention", ["each", "last"])
def test_prediction_unchanged_and_rows_sum_to_one(graphs, attention):
    model = _model(attention)
    batch = collate_graphs(graphs)
    with torch.no_grad():
        plain = model(batch)
        out, maps = model(batch, return_attention=True)
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    assert list(maps) == [f"attention_layers.{k}" for k in range(2 if attention == "each" else 1)]
    for per_crystal in maps.values():
        assert [tuple(w.shape) for w in per_crystal] == [(4, g.num_nodes, g.num_nodes) for g in graphs]
        for w in per_crystal:
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2], dtype=w.dtype), rtol=0, atol=1e-12)
            assert (w >= 0).all()


def test_float32_prediction_unchanged(graphs):
    torch.manual_seed(0)
    model = SAGNN(attention="last", attention_backend="auto").eval()  # the kernel dispatch on the normal path
    batch = collate_graphs(graphs)
    with torch.no_grad():
        torch.testing.assert_close(model(batch, return_attention=True)[0], model(batch), rtol=1e-5, atol=1e-6)


def test_permuting_atoms_permutes_the_maps(graphs):
    """New atom ``k`` = old atom ``perm[k]``: ``A' = P A Pᵀ`` (``A'[k, l] = A[perm[k], perm[l]]``), per layer and head."""
    model = _model("each")
    k = 9  # the 7-atom crystal with three elements, among the others in a batch
    moved = permute_atoms(graphs[k], seed=3)
    perm = torch.cdist(moved.pos, graphs[k].pos).argmin(dim=1)  # recover the permutation from the positions
    assert sorted(perm.tolist()) == list(range(graphs[k].num_nodes)) and perm.tolist() != sorted(perm.tolist())
    with torch.no_grad():
        _, before = model(collate_graphs(graphs), return_attention=True)
        _, after = model(collate_graphs(graphs[:k] + [moved]), return_attention=True)
    for name in before:
        a, a_moved = before[name][k], after[name][k]
        p = torch.eye(len(perm), dtype=a.dtype)[perm]  # P[k, perm[k]] = 1
        torch.testing.assert_close(a_moved, p @ a @ p.T, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(a_moved, a)  # the test would notice an unpermuted map


def test_supercell_splits_each_weight_over_the_copies(structures):
    """In a 2×2×2 supercell every atom sees 8 copies of each atom of the cell with the same features, so its weights
    over the copies of atom ``q`` sum to its weight on ``q`` in the cell."""
    model = _model("each")
    _, cell = structures[9]  # 7 atoms, three elements → 56 atoms
    big = supercell(cell)
    # the cell's atom under each supercell atom, by fractional position in the cell's lattice (periodic distance)
    frac_big = big.cart_coords @ np.linalg.inv(cell.lattice.matrix)
    delta = frac_big[:, None, :] - cell.frac_coords[None, :, :]
    distance = np.abs(delta - np.round(delta)).max(axis=-1)
    assert (distance.min(axis=1) < 1e-6).all()
    origin = torch.as_tensor(distance.argmin(axis=1))
    assert torch.bincount(origin).tolist() == [8] * len(cell)
    with torch.no_grad():
        _, small_maps = model(collate_graphs([graph(cell)]), return_attention=True)
        _, big_maps = model(collate_graphs([graph(big)]), return_attention=True)
    to_cell = torch.eye(len(cell), dtype=torch.float64)[origin]  # [8n, n]: supercell atom → its cell atom
    for name in small_maps:
        a_cell, a_big = small_maps[name][0], big_maps[name][0]  # [H, n, n], [H, 8n, 8n]
        summed = a_big @ to_cell  # weight of each supercell query on all copies of each cell atom
        torch.testing.assert_close(summed, a_cell[:, origin, :], rtol=1e-9, atol=1e-12)
        assert not torch.allclose(a_cell, torch.full_like(a_cell, 1 / len(cell)))  # not trivially uniform


def test_batched_maps_equal_one_by_one(graphs):
    model = _model("each")
    with torch.no_grad():
        _, batched = model(collate_graphs(graphs), return_attention=True)
        for b in (0, 4, 9):  # the 1-atom crystal, and two beside smaller and larger ones
            _, alone = model(collate_graphs([graphs[b]]), return_attention=True)
            for name in batched:
                torch.testing.assert_close(batched[name][b], alone[name][0], rtol=1e-10, atol=1e-13)


def test_model_without_attention_gives_no_maps(graphs):
    model = megnet(num_blocks=1).double().eval()
    with torch.no_grad():
        out, maps = model(collate_graphs(graphs[:2]), return_attention=True)
    assert maps == {} and out.shape == (2, 1)


def test_composition_maps():
    torch.manual_seed(0)
    model = CompositionSAGNN(element_features="learned", hidden_dim=16, heads=4, attention="each", num_blocks=2)
    model = model.double().eval()
    formulas = ["Fe2O3", "NaCl", "Fe0.7Ni0.2Co0.1", "Si", "BaTiO3"]
    batch = collate_graphs([composition_to_graph(f) for f in formulas])
    with torch.no_grad():
        plain = model(batch)
        out, maps = model(batch, return_attention=True)
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    sizes = [2, 2, 3, 1, 3]
    for per_crystal in maps.values():
        assert [tuple(w.shape) for w in per_crystal] == [(4, n, n) for n in sizes]
        for w in per_crystal:
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2], dtype=w.dtype), rtol=0, atol=1e-12)
    # the fraction is a key weight: a dopant at 1e-6 of the formula gets (almost) no attention
    with torch.no_grad():
        _, doped = model(collate_graphs([composition_to_graph({"Fe": 1.0, "Ni": 1e-6})]), return_attention=True)
    for per_crystal in doped.values():
        assert per_crystal[0][:, :, 1].max() < 1e-4  # elements are ordered by Z: Fe (26), Ni (28)
