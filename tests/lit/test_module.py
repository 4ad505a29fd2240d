"""SAGNNModule: real-unit predictions, losses, metrics vs naive references, predict_step, checkpoints."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure
from torch.utils.data import DataLoader

from sagnn_lightning.data import collate_graphs, structure_to_graph
from sagnn_lightning.data.samples import sample_path
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.models import SAGNN
from tests.lit.helpers import quiet_trainer

NUM = 40  # real Materials Project perovskites from the bundled sample


def tiny_model(num_targets: int = 1, **kwargs) -> SAGNN:
    torch.manual_seed(0)
    return SAGNN(
        num_targets=num_targets,
        hidden_dim=8,
        dense_hidden=16,
        conv_hidden=(16,),
        heads=2,
        num_blocks=1,
        num_gaussians=20,
        readout_hidden=(8,),
        attention_backend="torch",
        **kwargs,
    )


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.read_csv(sample_path("mp_abx3_perovskites")).head(NUM)


@pytest.fixture(scope="module")
def graphs(rows):
    out = []
    for _, row in rows.iterrows():
        g = structure_to_graph(Structure.from_str(row["cif"], fmt="cif"), cutoff=5.0, name=row["material_id"])
        g.y = torch.tensor([[row["band_gap"], row["formation_energy_per_atom"]]], dtype=torch.float32)
        g.sample_id = row["material_id"]
        out.append(g)
    return out


def with_targets(graphs, columns):
    """Copies of ``graphs`` keeping target columns ``columns`` of (band_gap, formation energy)."""
    out = []
    for g in graphs:
        h = g.clone()
        h.y = g.y[:, columns]
        out.append(h)
    return out


def loader(graphs, batch_size=16):
    return DataLoader(graphs, batch_size=batch_size, shuffle=False, collate_fn=collate_graphs)


def test_forward_returns_real_units(graphs):
    model = tiny_model()
    module = SAGNNModule(model, target_mean=[2.5], target_std=[4.0])
    batch = collate_graphs(with_targets(graphs[:8], [0]))
    with torch.no_grad():
        torch.testing.assert_close(module(batch), model(batch) * 4.0 + 2.5)
        out = module.predict_step(batch, 0)
    assert out["sample_id"] == [g.sample_id for g in graphs[:8]]
    torch.testing.assert_close(out["prediction"], model(batch) * 4.0 + 2.5)
    assert "probability" not in out


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_loss_is_computed_on_standardised_targets(graphs, loss):
    model = tiny_model()
    module = SAGNNModule(model, target_mean=[0.4], target_std=[1.1], loss=loss)
    batch = collate_graphs(with_targets(graphs[:8], [0]))
    raw = model(batch)
    z = (batch.y - 0.4) / 1.1
    expected = (raw - z).abs().mean() if loss == "l1" else ((raw - z) ** 2).mean()
    torch.testing.assert_close(module._loss(raw, batch.y), expected)


def test_nan_targets_are_left_out_of_the_loss(graphs):
    module = SAGNNModule(tiny_model(2), target_mean=[0.0, 0.0], target_std=[1.0, 2.0])
    raw = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([[0.0, float("nan")], [1.0, 4.0]])
    # finite entries only: |1-0|, |3-1|, |4-2| → mean 5/3
    torch.testing.assert_close(module._loss(raw, y), torch.tensor(5.0 / 3.0))


def test_unknown_loss_and_task_type_raise():
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        SAGNNModule(tiny_model(), loss="huber")
    with pytest.raises(ValueError, match="task_type"):
        SAGNNModule(tiny_model(), task_type="ranking")
    with pytest.raises(ValueError, match="target_mean has 2 values"):
        SAGNNModule(tiny_model(), target_mean=[0.0, 1.0])
    with pytest.raises(ValueError, match="target_std must be > 0"):
        SAGNNModule(tiny_model(), target_std=[0.0])


def test_validation_metrics_match_numpy(graphs):
    """MAE / RMSE / R² logged per epoch equal the formulas over all validation predictions (real units)."""
    data = with_targets(graphs, [0])
    module = SAGNNModule(tiny_model(), target_mean=[0.4], target_std=[1.1])
    metrics = quiet_trainer().validate(module, dataloaders=loader(data, batch_size=7), verbose=False)[0]
    with torch.no_grad():
        pred = torch.cat([module(b) for b in loader(data)]).numpy()[:, 0].astype(np.float64)
    y = np.array([g.y[0, 0].item() for g in data])
    mae = np.abs(pred - y).mean()
    rmse = math.sqrt(((pred - y) ** 2).mean())
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert metrics["val/mae"] == pytest.approx(mae, rel=1e-4)
    assert metrics["val/rmse"] == pytest.approx(rmse, rel=1e-4)
    assert metrics["val/r2"] == pytest.approx(r2, rel=1e-4, abs=1e-4)
    # the loss is the batch-size weighted mean of the per-batch L1 on standardised targets
    assert metrics["val/loss"] == pytest.approx(np.abs((pred - y) / 1.1).mean(), rel=1e-4)


def test_multitarget_metrics_per_target_and_mean(graphs):
    data = with_targets(graphs, [0, 1])
    module = SAGNNModule(
        tiny_model(2), target_mean=[0.4, -1.0], target_std=[1.1, 0.7], target_names=["band_gap", "e_form"]
    )
    metrics = quiet_trainer().validate(module, dataloaders=loader(data), verbose=False)[0]
    with torch.no_grad():
        pred = torch.cat([module(b) for b in loader(data)]).numpy().astype(np.float64)
    y = torch.cat([g.y for g in data]).numpy().astype(np.float64)
    per_target = np.abs(pred - y).mean(axis=0)
    assert metrics["val/mae_band_gap"] == pytest.approx(per_target[0], rel=1e-4)
    assert metrics["val/mae_e_form"] == pytest.approx(per_target[1], rel=1e-4)
    assert metrics["val/mae"] == pytest.approx(per_target.mean(), rel=1e-4)


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann–Whitney AUROC: P(score of a positive > score of a negative), ties count 1/2."""
    pos, neg = score[y == 1], score[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def test_classification_bce_auroc_accuracy(graphs):
    """Binary labels = band gap > 0 (metal or not), as in matbench_mp_is_metal."""
    data = with_targets(graphs, [0])
    for g in data:
        g.y = (g.y > 0).float()
    labels = np.array([g.y.item() for g in data])
    assert 0 < labels.sum() < len(labels), "the fixture must hold both classes"
    model = tiny_model()
    module = SAGNNModule(model, task_type="classification", target_mean=[5.0], target_std=[3.0])
    metrics = quiet_trainer().validate(module, dataloaders=loader(data), verbose=False)[0]
    with torch.no_grad():
        logits = torch.cat([model(b) for b in loader(data)])[:, 0]
        module_out = torch.cat([module(b) for b in loader(data)])[:, 0]
    torch.testing.assert_close(module_out, logits)  # classification outputs are not de-standardised
    prob = torch.sigmoid(logits).numpy().astype(np.float64)
    bce = -(labels * np.log(prob) + (1 - labels) * np.log(1 - prob)).mean()
    assert metrics["val/loss"] == pytest.approx(bce, rel=1e-4)
    assert metrics["val/auroc"] == pytest.approx(_auroc(labels, prob), abs=1e-6)
    assert metrics["val/accuracy"] == pytest.approx(((prob >= 0.5) == labels).mean(), abs=1e-6)
    out = module.predict_step(collate_graphs(data[:5]), 0)
    torch.testing.assert_close(out["probability"][:, 0], torch.from_numpy(prob[:5]).float())
    assert out["prediction"].dtype == torch.long
    assert torch.equal(out["prediction"][:, 0], (out["probability"][:, 0] >= 0.5).long())


def test_configure_optimizers_default_and_plateau():
    module = SAGNNModule(tiny_model())
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    module = SAGNNModule(
        tiny_model(),
        optimizer=partial(torch.optim.AdamW, lr=3e-4),
        scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW) and config["optimizer"].defaults["lr"] == 3e-4
    assert config["lr_scheduler"]["monitor"] == "val/loss"


def test_training_reduces_loss_and_checkpoint_roundtrip(graphs, tmp_path):
    data = with_targets(graphs, [0])
    y = torch.cat([g.y for g in data])
    module = SAGNNModule(
        tiny_model(),
        target_mean=[y.mean().item()],
        target_std=[y.std().item()],
        optimizer=partial(torch.optim.Adam, lr=3e-3),
    )
    before = quiet_trainer().validate(module, dataloaders=loader(data), verbose=False)[0]["val/loss"]
    trainer = quiet_trainer(max_epochs=15, default_root_dir=tmp_path, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=loader(data, 8), val_dataloaders=loader(data))
    after = quiet_trainer().validate(module, dataloaders=loader(data), verbose=False)[0]["val/loss"]
    assert after < 0.8 * before
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    # built in Python: the network is passed again; statistics and names come from the checkpoint
    restored = SAGNNModule.load_from_checkpoint(path, model=tiny_model())
    batch = collate_graphs(data[:6])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(batch), module(batch))
    assert restored.target_names == ["target"] and restored.task_type == "regression"
