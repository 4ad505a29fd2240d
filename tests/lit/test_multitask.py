"""Several targets of the same crystals in one model: missing targets, per-target transforms and loss weights, the
checkpoint monitor, per-target predict columns, and the multitask recipe as typed (on ../shared's real table)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sagnn_lightning.data import collate_graphs
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.data.samples import sample_path
from sagnn_lightning.data.table import DataFormatError
from sagnn_lightning.data.targets import TargetTransformer, transform_array
from sagnn_lightning.lit.module import SAGNNModule
from tests.lit.conftest import REPO, run_python
from tests.lit.test_module import tiny_model

TARGETS = ["formation_energy_per_atom", "band_gap", "energy_above_hull"]
DIELECTRIC = REPO / "../shared/data/mp_phonon_dielectric/mp_phonon_dielectric.csv.gz"


def _table(tmp_path: Path, rows: int = 60, blank_third: bool = True) -> Path:
    """Real MP perovskites with three targets; a third of each target blanked (different rows per target)."""
    frame = pd.read_csv(sample_path("mp_abx3_perovskites")).head(rows).copy()
    if blank_third:
        for k, column in enumerate(TARGETS):
            frame.loc[frame.index % 3 == k, column] = np.nan
    path = tmp_path / "three.csv"
    frame.to_csv(path, index=False)
    return path


def _datamodule(path: Path, tmp_path: Path, **kwargs) -> CrystalDataModule:
    return CrystalDataModule(
        str(path), target_columns=TARGETS, cache_dir=str(tmp_path / "cache"), progress=False, batch_size=8, **kwargs
    )


def test_rows_lacking_targets_are_kept_counted_and_standardised_without_them(tmp_path, caplog):
    dm = _datamodule(_table(tmp_path), tmp_path, val_fraction=0.2, test_fraction=0.2)
    with caplog.at_level("WARNING"):
        table = dm.table
    assert len(table) == 60 and dm.skipped == []
    assert dm.missing_targets == {name: 20 for name in TARGETS}
    assert "rows lacking a target train on the targets they have" in caplog.text and "band_gap 20" in caplog.text
    train = table.targets[[table.ids.index(i) for i in dm.split_ids["train"]]]
    np.testing.assert_allclose(dm.target_mean, np.nanmean(train, axis=0))
    np.testing.assert_allclose(dm.target_std, np.nanstd(train, axis=0))


def test_a_row_without_any_target_is_invalid(tmp_path):
    path = _table(tmp_path, blank_third=False)
    frame = pd.read_csv(path)
    frame.loc[4, TARGETS] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(DataFormatError, match=frame.loc[4, "material_id"]):
        _ = _datamodule(path, tmp_path).table
    dm = _datamodule(path, tmp_path, on_error="skip")
    assert [s.sample_id for s in (dm.table, dm.skipped)[1]] == [frame.loc[4, "material_id"]]


def test_log_transform_statistics_and_invalid_values(tmp_path):
    path = _table(tmp_path, blank_third=False)
    dm = _datamodule(path, tmp_path, target_transforms=["none", "log", "none"], val_fraction=0.2)
    frame = pd.read_csv(path)
    positive = frame[frame["band_gap"] > 0]  # band gaps of 0 (metals) cannot be logged: invalid rows
    with pytest.raises(DataFormatError, match="its transform is log"):
        _ = dm.table
    dm = _datamodule(path, tmp_path, target_transforms=["none", "log", "none"], val_fraction=0.2, on_error="skip")
    assert len(dm.table) == len(positive)
    train = dm.table.targets[[dm.table.ids.index(i) for i in dm.split_ids["train"]]]
    np.testing.assert_allclose(dm.target_mean[1], np.log(train[:, 1]).mean())
    np.testing.assert_allclose(dm.target_std[0], train[:, 0].std())
    with pytest.raises(Exception, match="one per target"):
        _ = _datamodule(path, tmp_path, target_transforms=["log"]).transforms


def test_transformer_round_trip_and_no_nan_from_the_other_columns():
    transformer = TargetTransformer(["log", "none"])
    y = torch.tensor([[2.0, -500.0], [1e6, 800.0]])
    np.testing.assert_allclose(transformer.forward(y).numpy(), transform_array(y.numpy(), ["log", "none"]), rtol=1e-6)
    torch.testing.assert_close(transformer.inverse(transformer.forward(y)), y)
    z = torch.tensor([[0.5, 900.0]], requires_grad=True)  # exp(900) would overflow: never computed for column 1
    out = transformer.inverse(z)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


@pytest.fixture()
def batch():
    frame = pd.read_csv(sample_path("mp_abx3_perovskites")).head(12)
    from pymatgen.core import Structure

    from sagnn_lightning.data import structure_to_graph

    graphs = []
    for k, row in frame.iterrows():
        g = structure_to_graph(Structure.from_str(row["cif"], fmt="cif"), cutoff=5.0, name=row["material_id"])
        y = [row["formation_energy_per_atom"], row["band_gap"] + 0.5, np.nan if k % 2 else row["energy_above_hull"]]
        g.y = torch.tensor([y], dtype=torch.float32)
        g.sample_id = row["material_id"]
        graphs.append(g)
    return collate_graphs(graphs)


def _module(**kwargs) -> SAGNNModule:
    return SAGNNModule(
        tiny_model(3), target_mean=[-1.0, 0.3, 0.1], target_std=[0.5, 0.8, 0.2], target_names=TARGETS, **kwargs
    )


def test_predictions_are_in_the_targets_units_and_the_loss_is_on_the_transformed_values(batch):
    module = _module(target_transforms=["none", "log", "none"]).eval()
    raw = module.model(batch).detach()
    real = raw * module.target_std + module.target_mean
    expected = torch.stack([real[:, 0], real[:, 1].exp(), real[:, 2]], dim=1)
    torch.testing.assert_close(module(batch).detach(), expected)
    y = batch.y
    target = torch.stack([y[:, 0], y[:, 1].log(), y[:, 2]], dim=1)
    per = ((raw - (target - module.target_mean) / module.target_std).abs()).numpy()
    naive = np.nanmean(np.where(np.isnan(y.numpy()), np.nan, per))  # every labelled entry counts once
    assert float(module._loss(raw, y)) == pytest.approx(naive, rel=1e-5)


def test_loss_weights_weigh_the_targets(batch):
    plain, weighted = _module(), _module(loss_weights=[1.0, 0.0, 3.0])
    raw = plain.model(batch).detach()
    y = batch.y
    per = (raw - (y - plain.target_mean) / plain.target_std).abs().numpy()
    labelled = ~np.isnan(y.numpy())
    w = np.array([1.0, 0.0, 3.0]) * labelled
    expected = np.nansum(np.where(labelled, per, 0.0) * w) / w.sum()
    assert float(weighted._loss(raw, y)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(Exception, match="loss_weights"):
        _module(loss_weights=[0.0, 0.0, 0.0])


def test_several_targets_select_the_checkpoint_on_the_loss():
    assert _module().monitor == ("val/loss", "min")
    assert SAGNNModule(tiny_model(1)).monitor == ("val/mae", "min")


@pytest.mark.skipif(not DIELECTRIC.is_file(), reason=f"no {DIELECTRIC}")
def test_the_recipe_trains_and_predicts_one_column_per_target(tmp_path, offline_env):
    """``python recipes/mp_phonon_dielectric.py`` as typed (2 epochs, a tiny model), then ``predict``: columns
    ``id,eps_electronic,eps_total,last_phdos_peak`` in the targets' units."""
    data = pd.read_csv(DIELECTRIC).head(80)
    data.loc[data.index % 4 == 0, "eps_total"] = np.nan  # a quarter lacks eps_total
    csv = tmp_path / "dielectric80.csv"
    data.to_csv(csv, index=False)
    tiny = tmp_path / "tiny.yaml"
    from tests.lit.conftest import TINY_MODEL_YAML

    tiny.write_text(TINY_MODEL_YAML)
    run = tmp_path / "run"
    argv = ["recipes/mp_phonon_dielectric.py", "fit", "--config", str(tiny), f"--data.data_file={csv}"]
    argv += [
        "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={run}",
        "--data.num_workers=0",
        "--trainer.logger=false",
    ]
    proc = run_python(argv, offline_env)
    assert "eps_total 20" in proc.stderr  # the rows lacking it, counted over the whole table
    assert "best val/loss=" in proc.stdout  # several targets: the checkpoint is chosen on the loss
    out = tmp_path / "preds.csv"
    predict = ["-m", "sagnn_lightning", "predict", "--ckpt", "best", "--run-dir", str(run), "--input", str(csv)]
    run_python([*predict, "--output", str(out), "--id-column", "material_id"], offline_env)
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "eps_electronic", "eps_total", "last_phdos_peak"]
    assert (frame[["eps_electronic", "eps_total"]] > 0).all().all()  # log targets come back positive
    assert math.isfinite(frame["last_phdos_peak"].mean())
    assert (run / "parity_val.png").is_file()
