"""Graph cache: hits, misses, corruption, atomic writes, skip mode, parallel build, memory map."""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from sagnn_lightning.data import cache as cache_mod
from sagnn_lightning.data.cache import (
    CACHE_FORMAT_VERSION,
    GraphDataset,
    SkippedItem,
    cache_key,
    default_cache_dir,
    load_or_build_graphs,
)
from sagnn_lightning.data.graph import GraphSettings, StructureError, structure_to_graph

FIXTURE = Path(__file__).resolve().parents[2] / "tests/fixtures/graph/structures.json.gz"
SETTINGS = GraphSettings(cutoff=5.0)
#: Å: how closely the fast dict/CIF readers promise to agree with pymatgen (sagnn_lightning/data/parsers.py).
#: Positions are the same formula evaluated by different numpy calls: the last bit moves with the numpy/BLAS
#: build (1.8e-15 Å with numpy 2.4.6 / pymatgen 2026.10.24), so graphs from different paths are never
#: compared bit for bit.
POS_ATOL = 1e-10


def fixture() -> dict:
    with gzip.open(FIXTURE, "rt") as f:
        return json.load(f)


def inputs(n: int | None = None):
    d = fixture()
    ids, dicts = d["ids"][:n], d["structures"][:n]
    targets = np.array(d["targets"][:n], dtype=np.float64)[:, None]
    return ids, dicts, targets


class Counter:
    """A structures callable that records whether the cache needed the structures."""

    def __init__(self, structures) -> None:
        self.structures, self.calls = structures, 0

    def __call__(self):
        self.calls += 1
        return self.structures


def files(folder: Path) -> list[str]:
    """Names in ``folder`` except the build lock files (``.<key>.graphs.lock``, empty, kept by filelock)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def build(tmp_path, structures, ids, targets, settings=SETTINGS, **kw) -> GraphDataset:
    return load_or_build_graphs(tmp_path, "fp-test", ids, structures, targets, settings, progress=False, **kw)


def assert_same_graph(a, b, *, exact: bool = False) -> None:
    """The same graph: dtypes and atomic numbers equal, the same edge set (i, j, periodic image) exactly,
    ``pos``/``lattice``/``state`` within ``POS_ATOL`` Å.

    Edges are compared as a set: they are sorted by bond length, so equally long bonds (symmetric crystals)
    come in an order set by last-bit noise. ``exact=True`` asserts every field bit for bit, in order: only
    for the same bytes read back twice (a cache hit, a pickled dataset), where any difference is a cache bug.
    """
    for key in ("atomic_numbers", "pos", "lattice", "edge_index", "image_offsets", "state"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        if exact or key == "atomic_numbers":
            assert torch.equal(x, y), key
        elif x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=0, atol=POS_ATOL, msg=lambda m, key=key: f"{key}: {m}")
    if not exact:
        assert edge_set(a) == edge_set(b)


def edge_set(g) -> set[tuple[int, ...]]:
    return {(i, j, *img) for (i, j), img in zip(g.edge_index.T.tolist(), g.image_offsets.tolist())}


def test_dataset_items_equal_structure_to_graph(tmp_path) -> None:
    ids, dicts, targets = inputs()
    ds = build(tmp_path, dicts, ids, targets)
    assert len(ds) == len(ids) and ds.sample_ids == ids
    # the float64 targets written are read back: the same bytes, so exactly equal
    assert np.array_equal(ds.targets, targets) and ds.skipped == [] and ds.settings == SETTINGS
    for k, d in enumerate(dicts):
        s = Structure.from_dict(d)
        item = ds[k]
        assert_same_graph(item, structure_to_graph(s, cutoff=5.0))  # fast dict reader vs pymatgen: POS_ATOL
        assert item.y.dtype == torch.float32 and item.y.shape == (1, 1)
        assert item.y.item() == pytest.approx(targets[k, 0], rel=1e-6)
        assert item.sample_id == ids[k]
    assert ds.num_atoms.tolist() == [len(d["sites"]) for d in dicts]
    assert ds[-1].sample_id == ids[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.header["arrays"]["image_offsets"]["dtype"] == "|i1"  # compact storage
    assert ds.header["arrays"]["edge_index"]["dtype"] == "<i4"


def test_cif_and_structure_inputs_give_same_graphs(tmp_path) -> None:
    cifs = fixture()["cifs"]
    ids = list(cifs)
    targets = np.array([[v["band_gap"]] for v in cifs.values()])
    from_text = build(tmp_path, [v["cif"] for v in cifs.values()], ids, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(v["cif"], fmt="cif") for v in cifs.values()]
    from_pymatgen = load_or_build_graphs(tmp_path, "fp-other", ids, structures, targets, SETTINGS, progress=False)
    for a, b in zip(from_text, from_pymatgen):
        # the fast CIF path keeps file order, pymatgen sorts atoms: match atoms by (Z, sorted bond lengths)
        assert_same_up_to_atom_order(a, b, atol=10 * POS_ATOL)


def assert_same_up_to_atom_order(a, b, atol: float) -> None:
    """Each atom of ``a`` pairs with a distinct atom of ``b`` of the same element whose sorted bond lengths
    agree within ``atol`` Å (positions within ``POS_ATOL`` move a bond length by at most ``2 * POS_ATOL``)."""
    from sagnn_lightning.nn.geometry import bond_lengths

    def atoms(g):
        d = bond_lengths(g.pos, g.lattice, g.edge_index, g.image_offsets).numpy()
        src = g.edge_index[0].numpy()
        return [(int(z), np.sort(d[src == k])) for k, z in enumerate(g.atomic_numbers.tolist())]

    left, right = atoms(a), atoms(b)
    assert len(left) == len(right)
    free = list(range(len(right)))
    for k, (z, d) in enumerate(left):
        match = next(
            (
                j
                for j in free
                if right[j][0] == z and right[j][1].shape == d.shape and np.allclose(right[j][1], d, rtol=0, atol=atol)
            ),
            None,
        )
        assert match is not None, f"{a.sample_id}: atom {k} (Z={z}) has no counterpart"
        free.remove(match)


def test_second_load_is_a_hit(tmp_path) -> None:
    ids, dicts, targets = inputs()
    first = Counter(dicts)
    ds1 = build(tmp_path, first, ids, targets)
    assert first.calls == 1
    mtime = ds1.path.stat().st_mtime_ns
    second = Counter(dicts)
    ds2 = build(tmp_path, second, ids, targets)
    assert second.calls == 0, "a cache hit must not touch the structures"
    assert ds2.path == ds1.path and ds2.path.stat().st_mtime_ns == mtime
    assert_same_graph(ds1[3], ds2[3], exact=True)  # the same file read twice


def test_changed_cutoff_or_fingerprint_is_a_miss(tmp_path) -> None:
    ids, dicts, targets = inputs(6)
    build(tmp_path, dicts, ids, targets)
    again = Counter(dicts)
    ds = build(tmp_path, again, ids, targets, settings=GraphSettings(cutoff=4.0))
    assert again.calls == 1 and ds.settings.cutoff == 4.0
    other = Counter(dicts)
    load_or_build_graphs(tmp_path, "another-fingerprint", ids, other, targets, SETTINGS, progress=False)
    assert other.calls == 1
    assert len(list(tmp_path.glob("*.graphs"))) == 3


def test_cache_key_depends_on_everything(monkeypatch) -> None:
    base = cache_key("fp", SETTINGS)
    assert len(base) == 64 and base == cache_key("fp", GraphSettings(cutoff=5.0))
    assert cache_key("fp2", SETTINGS) != base
    assert cache_key("fp", GraphSettings(cutoff=5.0, max_neighbors=12)) != base
    assert cache_key("fp", GraphSettings(state=(1.0, 0.0))) != base
    monkeypatch.setattr(cache_mod, "CACHE_FORMAT_VERSION", CACHE_FORMAT_VERSION + "x")
    assert cache_key("fp", SETTINGS) != base


@pytest.mark.parametrize("damage", ["flip_data", "truncate", "garbage", "flip_header"])
def test_corrupted_cache_is_rebuilt(tmp_path, caplog, damage: str) -> None:
    ids, dicts, targets = inputs()
    path = build(tmp_path, dicts, ids, targets).path
    raw = bytearray(path.read_bytes())
    if damage == "flip_data":
        raw[len(raw) // 3] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(b"not a cache" * 10)
    else:
        raw[-60] ^= 0x01  # inside the JSON header
    path.write_bytes(bytes(raw))
    again = Counter(dicts)
    with caplog.at_level(logging.WARNING, logger="sagnn_lightning.data.cache"):
        ds = build(tmp_path, again, ids, targets)
    assert again.calls == 1
    assert "rebuilding graph cache" in caplog.text
    assert len(ds) == len(ids) and ds.sample_ids == ids
    assert_same_graph(ds[1], structure_to_graph(Structure.from_dict(dicts[1])))


def test_large_image_offsets_use_a_wider_type(tmp_path) -> None:
    # a 0.1 Å axis with a 13 Å cutoff reaches image 130 > int8
    s = Structure(Lattice.orthorhombic(0.1, 10.0, 10.0), ["H"], [[0, 0, 0]])
    ds = build(tmp_path, [s], ["thin"], np.zeros((1, 1)), settings=GraphSettings(cutoff=13.0))
    assert ds.header["arrays"]["image_offsets"]["dtype"] == "<i2"
    assert int(ds[0].image_offsets.abs().max()) == 130
    assert_same_graph(ds[0], structure_to_graph(s, cutoff=13.0))


def test_file_name_instead_of_cif_text_is_explained(tmp_path) -> None:
    with pytest.raises(StructureError, match="CIF text, not file names"):
        build(tmp_path, ["structures/mp-1.cif"], ["mp-1"], np.zeros((1, 1)))


def test_stale_targets_are_rebuilt(tmp_path) -> None:
    ids, dicts, targets = inputs(5)
    build(tmp_path, dicts, ids, targets)
    again = Counter(dicts)
    ds = build(tmp_path, again, ids, targets + 1.0)
    assert again.calls == 1 and np.array_equal(ds.targets, targets + 1.0)  # written bytes read back


def test_atomic_write_leaves_no_temporary_files(tmp_path) -> None:
    ids, dicts, targets = inputs(5)
    build(tmp_path, dicts, ids, targets)
    assert files(tmp_path) == [f"{cache_key('fp-test', SETTINGS)}.graphs"]
    # a failing build (bad structure, on_error="raise") leaves nothing behind either
    bad = dicts[:4] + ["this is not a CIF"]
    with pytest.raises(StructureError, match=r"sample mb-.*on_error=skip\.$"):
        build(tmp_path / "fail", bad, ids, targets)
    assert files(tmp_path / "fail") == []


def test_skip_mode_records_and_persists_skipped(tmp_path, caplog) -> None:
    ids, dicts, targets = inputs(6)
    disordered = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]]).as_dict()
    empty = Structure(Lattice.cubic(4), [], []).as_dict()
    items = [dicts[0], "garbage CIF", dicts[1], disordered, empty, dicts[2]]
    with caplog.at_level(logging.WARNING, logger="sagnn_lightning.data.cache"):
        ds = build(tmp_path, items, ids, targets, on_error="skip")
    assert [s.sample_id for s in ds.skipped] == [ids[1], ids[3], ids[4]]
    assert all(isinstance(s, SkippedItem) and s.reason for s in ds.skipped)
    assert "parse" in ds.skipped[0].reason and "partially occupied" in ds.skipped[1].reason
    assert "no sites" in ds.skipped[2].reason
    assert "skipped 3 of 6" in caplog.text and ids[3] in caplog.text
    assert ds.sample_ids == [ids[0], ids[2], ids[5]]
    assert np.array_equal(ds.targets, targets[[0, 2, 5]])  # written bytes read back
    again = Counter(items)
    reloaded = build(tmp_path, again, ids, targets, on_error="skip")
    assert again.calls == 0 and reloaded.skipped == ds.skipped
    with pytest.raises(StructureError, match=ids[1]):
        build(tmp_path / "raise", items, ids, targets, on_error="raise")


def test_parallel_build_equals_in_process(tmp_path) -> None:
    ids, dicts, targets = inputs()
    serial = build(tmp_path / "a", dicts, ids, targets)
    parallel = build(tmp_path / "b", dicts, ids, targets, num_workers=2, chunk_size=3)
    assert serial.path.name == parallel.path.name
    # the same code on the same inputs in this process and in forked workers (same numpy): bit for bit, so the
    # file does not depend on num_workers / chunk_size
    assert serial.path.read_bytes() == parallel.path.read_bytes()


def test_parallel_build_error_stops_and_cleans_up(tmp_path) -> None:
    ids, dicts, targets = inputs()
    bad = list(dicts)
    bad[5] = "not a CIF"
    with pytest.raises(StructureError, match=ids[5]):
        build(tmp_path, bad, ids, targets, num_workers=2, chunk_size=2)
    assert files(tmp_path) == []


def test_dataset_pickles_and_loads_in_workers(tmp_path) -> None:
    ids, dicts, targets = inputs(8)
    ds = build(tmp_path, dicts, ids, targets)
    ds[0]  # opens the map
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None
    assert_same_graph(clone[2], ds[2], exact=True)  # the same file through a new map
    assert len(pickle.dumps(ds)) < 20_000  # the map itself is not pickled


def test_release_pages_keeps_items_valid(tmp_path) -> None:
    ids, dicts, targets = inputs()
    path = build(tmp_path, dicts, ids, targets).path
    ds = GraphDataset(path, release_every=1)  # unmap after every item
    keep = [ds[k] for k in range(len(ds))]
    for k, d in enumerate(dicts):
        assert_same_graph(keep[k], structure_to_graph(Structure.from_dict(d)))
    assert np.array_equal(ds.targets, targets)  # written bytes read back


def test_file_replaced_after_open_is_refused(tmp_path) -> None:
    ids, dicts, targets = inputs(4)
    path = build(tmp_path, dicts, ids, targets).path
    stale = GraphDataset(path)  # header read, not yet mapped
    other = build(tmp_path / "other", dicts[:3], ids[:3], targets[:3]).path
    path.write_bytes(other.read_bytes())
    from sagnn_lightning.data.cache_format import CacheError

    with pytest.raises(CacheError, match="changed since it was opened"):
        stale[0]


def test_default_cache_dir_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAGNN_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    ids, dicts, targets = inputs(3)
    ds = load_or_build_graphs(None, "fp", ids, dicts, targets, SETTINGS, progress=False)
    assert ds.path.parent == tmp_path / "env-cache"
    monkeypatch.delenv("SAGNN_CACHE_DIR")
    assert "sagnn_lightning" in str(default_cache_dir())


def test_input_validation(tmp_path) -> None:
    ids, dicts, targets = inputs(3)
    with pytest.raises(ValueError, match="targets"):
        build(tmp_path, dicts, ids, targets[:2])
    with pytest.raises(ValueError, match="structures"):
        build(tmp_path, dicts[:2], ids, targets)
    with pytest.raises(ValueError, match="empty"):
        build(tmp_path, [], [], np.zeros((0, 1)))
    with pytest.raises(ValueError, match="on_error"):
        build(tmp_path, dicts, ids, targets, on_error="ignore")


def test_graph_dataset_lists_its_elements(tmp_path):
    """``GraphDataset.elements()``: the distinct atomic numbers of every graph, from the cache file."""
    from sagnn_lightning.data.crystal import CrystalDataModule

    dm = CrystalDataModule("sample:mp_abx3_perovskites", cache_dir=str(tmp_path), progress=False)
    graphs = dm.graph_dataset()
    expected = sorted({int(z) for k in range(len(graphs)) for z in graphs[k].atomic_numbers.tolist()})
    assert graphs.elements().tolist() == expected and len(expected) > 20
