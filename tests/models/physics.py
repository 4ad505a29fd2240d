"""Reusable physics checks for crystal models (nequip/matgl style invariance mixin).

Use: subclass :class:`InvarianceTests` in a test module and implement ``make_model()`` returning a model
``model(batch) -> [B, T]``; every ``test_*`` method then runs on real structures in float64 to
``ATOL``/``RTOL``. The transformations are plain functions so other tests can reuse them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from torch import nn
from torch_geometric.data import Data

from sagnn_lightning.data import collate_graphs, structure_to_graph

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "model" / "structures.json.gz"
SHARED_DATA = REPO_ROOT / "../shared/data"
RTOL, ATOL = 1e-6, 1e-6


def load_fixture_structures() -> list[tuple[str, Structure]]:
    """The 10 real matbench structures of the model fixture (1–8 atoms; jdft2d and phonons): ``(mbid, Structure)``."""
    with gzip.open(FIXTURE, "rt") as fh:
        rows = json.load(fh)["data"]
    return [(mbid, Structure.from_dict(s)) for mbid, s, _, _ in rows]


def load_matbench(task: str, limit: int | None = None, max_sites: int | None = None) -> list[tuple[Structure, float]]:
    """``(Structure, target)`` rows of ``../shared/data/matbench/matbench_<task>.json.gz``; skips the test if absent."""
    path = SHARED_DATA / "matbench" / f"matbench_{task}.json.gz"
    if not path.exists():
        pytest.skip(f"real data not found at {path.resolve()} (needs the shared data folder beside the repo)")
    with gzip.open(path, "rt") as fh:
        rows = json.load(fh)["data"]
    out = []
    for s, y in rows:
        if max_sites is not None and len(s["sites"]) > max_sites:
            continue
        out.append((Structure.from_dict(s), float(y)))
        if limit is not None and len(out) == limit:
            break
    return out


def graph(structure: Structure, name: str = "structure") -> Data:
    return structure_to_graph(structure, cutoff=5.0, name=name)


def random_rotation(seed: int) -> torch.Tensor:
    """A random proper rotation ``[3, 3]`` (float64) from the QR of a Gaussian matrix."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotate(data: Data, rotation: torch.Tensor) -> Data:
    """Rigidly rotate positions and lattice vectors (rows): ``x → x Rᵀ``."""
    out = data.clone()
    out.pos = data.pos @ rotation.T
    out.lattice = data.lattice @ rotation.T
    return out


def translate(data: Data, shift: torch.Tensor) -> Data:
    """Shift every position by the same Cartesian vector ``[3]`` (Å)."""
    out = data.clone()
    out.pos = data.pos + shift
    return out


def permute_atoms(data: Data, seed: int) -> Data:
    """Relabel atoms by a random permutation and shuffle the edge order."""
    g = torch.Generator().manual_seed(seed)
    n, e = data.num_nodes, data.edge_index.shape[1]
    perm = torch.randperm(n, generator=g)  # new atom k is old atom perm[k]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    edge_perm = torch.randperm(e, generator=g)
    out = data.clone()
    out.atomic_numbers, out.pos = data.atomic_numbers[perm], data.pos[perm]
    out.edge_index = inv[data.edge_index][:, edge_perm]
    out.image_offsets = data.image_offsets[edge_perm]
    return out


def unwrap(structure: Structure, seed: int) -> Structure:
    """The same crystal with every site moved by a random whole lattice vector (positions outside the cell)."""
    rng = np.random.default_rng(seed)
    frac = structure.frac_coords + rng.integers(-2, 3, size=(len(structure), 3))
    return Structure(structure.lattice, structure.species, frac, to_unit_cell=False)


def supercell(structure: Structure, scaling=(2, 2, 2)) -> Structure:
    """``structure`` in the cell ``scaling`` (3 ints or a 3×3 integer matrix) × its lattice."""
    return structure.make_supercell(list(scaling), in_place=False)


def predict(model: nn.Module, graphs: list[Data]) -> torch.Tensor:
    with torch.no_grad():
        return model(collate_graphs(graphs))


class InvarianceTests:
    """Mixin: physics invariances on the real fixture structures, float64 to ``RTOL``/``ATOL``.

    Subclasses implement the classmethod ``make_model()`` (a float64 model in eval mode).
    """

    @classmethod
    def make_model(cls) -> nn.Module:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    # class-scoped fixtures are classmethods (pytest 9 deprecates instance-method ones)
    @pytest.fixture(scope="class")
    @classmethod
    def structures(cls) -> list[tuple[str, Structure]]:
        return load_fixture_structures()

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> nn.Module:
        return cls.make_model()

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, model, structures) -> tuple[list[Data], torch.Tensor]:
        graphs = [graph(s, mbid) for mbid, s in structures]
        return graphs, predict(model, graphs)

    def test_float64(self, model, reference) -> None:
        assert next(model.parameters()).dtype == torch.float64
        assert reference[1].dtype == torch.float64

    def test_rotation(self, model, reference) -> None:
        graphs, expected = reference
        moved = [rotate(g, random_rotation(k)) for k, g in enumerate(graphs)]
        torch.testing.assert_close(predict(model, moved), expected, rtol=RTOL, atol=ATOL)

    def test_reflection(self, model, reference) -> None:
        graphs, expected = reference
        mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
        torch.testing.assert_close(predict(model, [rotate(g, mirror) for g in graphs]), expected, rtol=RTOL, atol=ATOL)

    def test_translation(self, model, reference) -> None:
        graphs, expected = reference
        shift = torch.tensor([1.37, -4.2, 11.5], dtype=torch.float64)
        torch.testing.assert_close(
            predict(model, [translate(g, shift) for g in graphs]), expected, rtol=RTOL, atol=ATOL
        )

    def test_atom_order(self, model, reference) -> None:
        graphs, expected = reference
        moved = [permute_atoms(g, k) for k, g in enumerate(graphs)]
        torch.testing.assert_close(predict(model, moved), expected, rtol=RTOL, atol=ATOL)

    def test_unwrapped_positions(self, model, structures, reference) -> None:
        """Sites displaced by whole lattice vectors (outside the cell) = the wrapped crystal."""
        _, expected = reference
        moved = [graph(unwrap(s, k), mbid) for k, (mbid, s) in enumerate(structures)]
        assert any((g.pos.abs() > g.lattice[0].norm(dim=-1).max()).any() for g in moved), "nothing was unwrapped"
        torch.testing.assert_close(predict(model, moved), expected, rtol=RTOL, atol=ATOL)

    def test_supercell(self, model, structures, reference) -> None:
        """A 2×2×2 supercell gives the same (intensive) prediction as its cell."""
        _, expected = reference
        bigger = [graph(supercell(s), mbid) for mbid, s in structures]
        assert [g.num_nodes for g in bigger] == [8 * len(s) for _, s in structures]
        torch.testing.assert_close(predict(model, bigger), expected, rtol=RTOL, atol=ATOL)

    @pytest.mark.parametrize(
        "matrix",
        [[[1, 1, 0], [0, 1, 0], [0, 0, 1]], [[1, 1, 0], [0, 1, 0], [0, 0, 2]]],
        ids=["unimodular", "sheared-supercell"],
    )
    def test_other_cell_choice(self, model, structures, reference, matrix) -> None:
        """Other lattice vectors for the same crystal (same-size sheared cell, sheared supercell): same prediction."""
        _, expected = reference
        other = [supercell(s, matrix) for _, s in structures]
        assert all(not np.allclose(o.lattice.matrix[0], s.lattice.matrix[0]) for o, (_, s) in zip(other, structures))
        torch.testing.assert_close(
            predict(model, [graph(o, mbid) for o, (mbid, _) in zip(other, structures)]), expected, rtol=RTOL, atol=ATOL
        )

    def test_batched_equals_single(self, model, reference) -> None:
        graphs, expected = reference
        single = torch.cat([predict(model, [g]) for g in graphs])
        torch.testing.assert_close(single, expected, rtol=1e-10, atol=1e-10)

    def test_no_crosstalk(self, model, reference) -> None:
        """Perturbing one crystal (positions and an element) leaves every other crystal's output unchanged."""
        graphs, expected = reference
        k = 3
        changed = graphs[k].clone()
        changed.pos = changed.pos + 0.05 * torch.randn(
            changed.pos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        changed.atomic_numbers = changed.atomic_numbers.clone()
        changed.atomic_numbers[0] = 6 if int(changed.atomic_numbers[0]) != 6 else 8
        out = predict(model, graphs[:k] + [changed] + graphs[k + 1 :])
        others = [b for b in range(len(graphs)) if b != k]
        torch.testing.assert_close(out[others], expected[others], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(out[k], expected[k], rtol=1e-6, atol=1e-6), "the perturbation did not reach the model"
