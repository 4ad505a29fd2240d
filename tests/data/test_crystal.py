"""CrystalDataModule on the user's own files (CSV, JSON with dicts, CIF folder) and the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from sagnn_lightning.data.crystal import CrystalDataModule, random_split_ids
from sagnn_lightning.data.graph import structure_to_graph
from sagnn_lightning.data.samples import PRESETS, SAMPLES, sample_path

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ROOT / "tests/fixtures/inputs"
SHARED_SAMPLE = ROOT / "../shared/data/mp_abx3/mp_abx3_perovskites.csv.gz"


def all_ids(dm: CrystalDataModule) -> list[str]:
    return [i for split in ("train", "val", "test") for i in dm.split_ids[split]]


def check_graphs_against_pymatgen(
    dataset, structures: dict[str, Structure], targets: dict[str, np.ndarray], cutoff: float
) -> None:
    for k in range(len(dataset)):
        g = dataset[k]
        ref = structure_to_graph(structures[g.sample_id], cutoff=cutoff)
        assert g.num_nodes == ref.num_nodes and g.edge_index.shape == ref.edge_index.shape
        np.testing.assert_allclose(g.y.numpy()[0], targets[g.sample_id], rtol=1e-6)


def test_bundled_sample_loads_by_name(tmp_path):
    dm = CrystalDataModule.from_sample("mp_abx3_band_gap", cache_dir=str(tmp_path), progress=False, batch_size=256)
    frame = pd.read_csv(sample_path("mp_abx3_perovskites"))
    assert len(frame) == 1784
    assert dm.target_names == ["band_gap"] and dm.task_type == "regression"
    assert sorted(all_ids(dm)) == sorted(frame["material_id"])
    assert {k: len(v) for k, v in dm.split_ids.items()} == {"train": 1428, "val": 178, "test": 178}
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (1428, 178, 178)
    gaps = frame.set_index("material_id")["band_gap"]
    g = dm.test_dataset[0]
    assert g.num_nodes == 5 and g.y.item() == pytest.approx(gaps[g.sample_id], rel=1e-6, abs=1e-7)
    train_gaps = gaps[dm.split_ids["train"]].to_numpy()
    np.testing.assert_allclose(dm.target_mean, [train_gaps.mean()])
    np.testing.assert_allclose(dm.target_std, [train_gaps.std()])
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 256 and batch.y.shape == (256, 1)


def test_sample_reference_string_and_attribution(tmp_path):
    dm = CrystalDataModule(
        data_file="sample:mp_abx3_perovskites", target_columns=["formation_energy_per_atom"], cache_dir=str(tmp_path)
    )
    assert dm.id_column == "material_id" and dm.structure_column == "cif"
    assert dm.target_names == ["formation_energy_per_atom"]
    assert CrystalDataModule.from_sample("mp_abx3_perovskites", cache_dir=str(tmp_path)).target_names == ["band_gap"]
    attribution = (sample_path("mp_abx3_perovskites").parent / "ATTRIBUTION.md").read_text()
    assert "Materials Project" in attribution and "CC BY 4.0" in attribution and "OPTIMADE" in attribution
    assert set(PRESETS) and all(sample in SAMPLES for sample, _ in PRESETS.values())
    if SHARED_SAMPLE.exists():
        assert sample_path("mp_abx3_perovskites").read_bytes() == SHARED_SAMPLE.read_bytes()
    with pytest.raises(KeyError, match="bundled samples"):
        CrystalDataModule(data_file="sample:nope", cache_dir=str(tmp_path))


def test_csv_with_cif_strings(tmp_path):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    dm = CrystalDataModule(
        str(INPUTS / "mp_abx3_8.csv"),
        target_columns=["band_gap", "formation_energy_per_atom"],
        val_fraction=0.25,
        test_fraction=0.25,
        cache_dir=str(tmp_path),
        progress=False,
        cutoff=4.0,
    )
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (4, 2, 2)
    assert dm.num_targets == 2
    structures = {r.material_id: Structure.from_str(r.cif, fmt="cif") for r in frame.itertuples()}
    targets = {r.material_id: np.array([r.band_gap, r.formation_energy_per_atom]) for r in frame.itertuples()}
    for split in ("train", "val", "test"):
        check_graphs_against_pymatgen(getattr(dm, f"{split}_dataset"), structures, targets, cutoff=4.0)
    train = np.stack([targets[i] for i in dm.split_ids["train"]])
    np.testing.assert_allclose(dm.target_mean, train.mean(0))
    np.testing.assert_allclose(dm.target_std, train.std(0))


def test_json_with_structure_dicts(tmp_path):
    records = json.loads((INPUTS / "jdft2d_8.json").read_text())
    dm = CrystalDataModule(
        str(INPUTS / "jdft2d_8.json"),
        target_columns=["exfoliation_en"],
        id_column="id",
        val_fraction=0.125,
        test_fraction=0.125,
        cache_dir=str(tmp_path),
        progress=False,
    )
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (6, 1, 1)
    structures = {r["id"]: Structure.from_dict(r["structure"]) for r in records}
    targets = {r["id"]: np.array([r["exfoliation_en"]]) for r in records}
    check_graphs_against_pymatgen(dm.train_dataset, structures, targets, cutoff=5.0)


def test_cif_folder_with_id_prop(tmp_path):
    folder = INPUTS / "cifs"
    dm = CrystalDataModule(
        str(folder),
        target_columns=["band_gap", "e_form"],
        val_fraction=0.25,
        test_fraction=0.25,
        cache_dir=str(tmp_path),
        progress=False,
    )
    dm.setup()
    id_prop = pd.read_csv(folder / "id_prop.csv", header=None, names=["id", "band_gap", "e_form"])
    assert sorted(all_ids(dm)) == sorted(id_prop["id"])
    structures = {i: Structure.from_file(folder / f"{i}.cif") for i in id_prop["id"]}
    targets = {r.id: np.array([r.band_gap, r.e_form]) for r in id_prop.itertuples()}
    check_graphs_against_pymatgen(dm.test_dataset, structures, targets, cutoff=5.0)
    assert CrystalDataModule(str(folder), cache_dir=str(tmp_path)).target_names == ["target_0", "target_1"]


def test_seeded_splits_reproducible_and_disjoint(tmp_path):
    kw = dict(target_columns=["band_gap"], cache_dir=str(tmp_path))
    a = CrystalDataModule("sample:mp_abx3_perovskites", split_seed=3, **kw).split_ids
    b = CrystalDataModule("sample:mp_abx3_perovskites", split_seed=3, **kw).split_ids
    c = CrystalDataModule("sample:mp_abx3_perovskites", split_seed=4, **kw).split_ids
    assert a == b and a != c
    sets = [set(a[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 1784
    ids = [f"r{i}" for i in range(101)]
    split = random_split_ids(ids, 0.2, 0.1, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [71, 20, 10]


def test_skipping_a_row_does_not_move_other_rows(tmp_path):
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    frame.to_csv(tmp_path / "ok.csv", index=False)
    frame.loc[5, "band_gap"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    kw = dict(target_columns=["band_gap"], val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path))
    ok = CrystalDataModule(str(tmp_path / "ok.csv"), **kw).split_ids
    skipped = CrystalDataModule(str(tmp_path / "nan.csv"), on_error="skip", **kw).split_ids
    bad_id = frame.loc[5, "material_id"]
    assert skipped == {k: [i for i in v if i != bad_id] for k, v in ok.items()}


def test_jsonargparse_can_configure_it():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(CrystalDataModule, "data")
    cfg = parser.parse_args(
        ["--data.data_file=sample:mp_abx3_perovskites", "--data.target_columns=[band_gap]", "--data.cutoff=4.5"]
    )
    assert cfg.data.data_file == "sample:mp_abx3_perovskites" and cfg.data.target_columns == ["band_gap"]
    assert cfg.data.cutoff == 4.5


def test_lightning_trainer_drives_the_datamodule(tmp_path):
    import pytorch_lightning as pl
    import torch

    class Mean(pl.LightningModule):
        """Predicts a learnable constant: enough to run every DataModule hook through a Trainer."""

        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            assert batch.y.shape == (batch.num_graphs, 1) and batch.max_num_atoms >= 1
            return ((batch.y - self.c) ** 2).mean()

        def validation_step(self, batch, _):
            self.log("val_loss", ((batch.y - self.c) ** 2).mean(), batch_size=batch.num_graphs)

        def test_step(self, batch, _):
            self.log("test_loss", ((batch.y - self.c) ** 2).mean(), batch_size=batch.num_graphs)

        def predict_step(self, batch, _):
            return list(batch.sample_id)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = CrystalDataModule(
        str(INPUTS / "mp_abx3_8.csv"),
        target_columns=["band_gap"],
        val_fraction=0.25,
        test_fraction=0.25,
        batch_size=2,
        cache_dir=str(tmp_path),
        progress=False,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
    )
    trainer.fit(Mean(), datamodule=dm)
    trainer.test(Mean(), datamodule=dm, verbose=False)
    predicted = [i for batch in trainer.predict(Mean(), datamodule=dm) for i in batch]
    assert predicted == dm.split_ids["test"]
    assert dm.hparams.target_columns == ["band_gap"]


def test_row_index_reused_and_rebuilt_when_corrupt(tmp_path):
    kw = dict(target_columns=["band_gap"], cache_dir=str(tmp_path), val_fraction=0.25, test_fraction=0.25)
    first = CrystalDataModule(str(INPUTS / "mp_abx3_8.csv"), **kw)
    ids = first.split_ids
    rows = list((tmp_path / "rows").glob("*.npz"))
    assert len(rows) == 1 and first.table.structures is not None
    second = CrystalDataModule(str(INPUTS / "mp_abx3_8.csv"), **kw)
    assert second.split_ids == ids and second.table.structures is None  # ids/targets from the index
    rows[0].write_bytes(rows[0].read_bytes()[:50])  # truncated
    third = CrystalDataModule(str(INPUTS / "mp_abx3_8.csv"), **kw)
    assert third.split_ids == ids and third.table.structures is not None  # re-read from the file
    np.testing.assert_array_equal(third.table.targets, first.table.targets)  # the same parse of the same file
