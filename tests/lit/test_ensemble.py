"""Ensembles as users type them: ``ensemble fit`` (resumable, calibrated on held-out rows), ``predict --ckpt
<ensemble folder>`` (``id,prediction,std,lower_95,upper_95[,member_<j>]``) and the Python API, against each
member's own checkpoint predicting alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from sagnn_lightning.__main__ import main
from sagnn_lightning.data.readers import InputItem
from sagnn_lightning.data.samples import sample_path
from sagnn_lightning.lit import load_checkpoint
from sagnn_lightning.lit.ensemble import Ensemble, load_ensemble
from tests.lit.conftest import quickstart_argv, run_python


def _fit(sample_run, folder, *flags: str) -> list[str]:
    training = ["python", *quickstart_argv(sample_run, "--trainer.max_epochs=2", "--trainer.logger=false")]
    training = [a for a in training if not a.startswith("--trainer.default_root_dir")]  # the ensemble sets it
    return ["-m", "sagnn_lightning", "ensemble", "fit", "--out", str(folder), *flags, "--", *training]


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    """One 2-member ensemble, trained as a user types it (shared by the tests below)."""
    from tests.lit.conftest import TINY_MODEL_YAML, crystal_data_yaml, write_sample_csv

    tmp = tmp_path_factory.mktemp("ensemble")
    csv = write_sample_csv(tmp / "mp48.csv", 48)
    (tmp / "data.yaml").write_text(crystal_data_yaml(csv))
    (tmp / "tiny.yaml").write_text(TINY_MODEL_YAML)
    run = {"csv": csv, "data": tmp / "data.yaml", "tiny": tmp / "tiny.yaml", "root": tmp / "unused"}
    env = dict(__import__("os").environ, SAGNN_CACHE_DIR=str(tmp / "cache"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    argv = _fit(run, tmp / "ens", "--members", "2", "--calibration-fraction", "0.25")
    first = run_python(argv, env)
    return {"dir": tmp / "ens", "run": run, "env": env, "argv": argv, "stdout": first.stdout, "csv": csv}


def test_fit_writes_a_manifest_with_members_and_calibration(ensemble_dir):
    manifest = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())
    assert [m["seed"] for m in manifest["members"]] == [0, 1]
    assert all((ensemble_dir["dir"] / m["checkpoint"]).is_file() for m in manifest["members"])
    assert manifest["training_command"][0] == "python" and "ensemble fit" in manifest["command"]
    held_out = pd.read_csv(ensemble_dir["dir"] / "calibration_predictions.csv")
    assert len(held_out) == manifest["calibration"]["n"] > 0
    scale = math.sqrt(np.mean(((held_out["target"] - held_out["prediction"]) / held_out["std_raw"]) ** 2))
    assert manifest["calibration"]["scale"] == pytest.approx(scale, rel=1e-6)
    members = held_out[["member_0", "member_1"]].to_numpy()
    np.testing.assert_allclose(held_out["std_raw"], np.abs(members[:, 0] - members[:, 1]) / math.sqrt(2), rtol=1e-6)
    assert "calibration on" in ensemble_dir["stdout"]


def test_predict_writes_the_mean_its_error_bar_and_each_member(ensemble_dir, tmp_path):
    out = tmp_path / "preds.csv"
    argv = ["predict", "--ckpt", str(ensemble_dir["dir"]), "--input", str(ensemble_dir["csv"]), "--output", str(out)]
    assert main([*argv, "--members"]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "prediction", "std", "lower_95", "upper_95", "member_0", "member_1"]
    members = frame[["member_0", "member_1"]].to_numpy()
    np.testing.assert_allclose(frame["prediction"], members.mean(axis=1), rtol=1e-5, atol=1e-6)
    scale = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())["calibration"]["scale"]
    np.testing.assert_allclose(frame["std"], scale * members.std(axis=1, ddof=1), rtol=1e-4, atol=1e-6)
    manifest = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())
    structures = pd.read_csv(ensemble_dir["csv"])["cif"].tolist()
    for j, member in enumerate(manifest["members"]):  # each column is that member's checkpoint predicting alone
        alone = load_checkpoint(ensemble_dir["dir"] / member["checkpoint"]).predict(structures)
        np.testing.assert_allclose(frame[f"member_{j}"], alone, rtol=1e-5, atol=1e-6)
    in_python = load_ensemble(ensemble_dir["dir"]).predict(structures)
    np.testing.assert_allclose(in_python.prediction, frame["prediction"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_python.std, frame["std"], rtol=1e-4, atol=1e-6)
    assert in_python.members.shape == (2, len(structures))
    assert main(argv) == 0 and "member_0" not in pd.read_csv(out).columns  # without --members


def test_identical_members_give_zero_spread(ensemble_dir):
    manifest = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())
    member = load_checkpoint(ensemble_dir["dir"] / manifest["members"][0]["checkpoint"])
    structures = pd.read_csv(ensemble_dir["csv"])["cif"].tolist()[:8]
    twice = Ensemble([member, member]).predict(structures)
    assert np.all(twice.std == 0) and np.all(twice.std_raw == 0)
    np.testing.assert_allclose(twice.prediction, member.predict(structures), rtol=1e-6)
    assert twice.lower_95 is None  # no calibration: no interval


def test_rerun_finishes_what_is_missing_and_refuses_other_settings(ensemble_dir):
    folder = ensemble_dir["dir"]
    manifest = json.loads((folder / "ensemble.json").read_text())
    manifest["members"][1]["checkpoint"] = None  # as if the command had been killed before member 2 was recorded
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    again = run_python(ensemble_dir["argv"], ensemble_dir["env"])
    assert "member 1/2: trained" in again.stdout and "member 2/2: training" in again.stdout
    assert json.loads((folder / "ensemble.json").read_text())["members"][1]["checkpoint"]
    log = (folder / "member_1" / "train.log").read_text()
    assert "Restoring states from the checkpoint" in log or "resum" in log.lower()
    argv = [a if a != "2" else "3" for a in ensemble_dir["argv"]]
    refused = run_python(argv, ensemble_dir["env"], check=False)
    assert refused.returncode == 2 and "trained otherwise" in refused.stderr and "Traceback" not in refused.stderr


def test_bad_options_name_the_flag(tmp_path):
    assert main(["ensemble", "fit", "--out", str(tmp_path / "e"), "--members", "1", "--", "python", "x.py"]) == 2
    assert main(["ensemble", "fit", "--out", str(tmp_path / "e"), "--members", "2"]) == 2


def test_members_must_share_their_task(ensemble_dir):
    manifest = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())
    member = load_checkpoint(ensemble_dir["dir"] / manifest["members"][0]["checkpoint"])
    other = load_checkpoint(ensemble_dir["dir"] / manifest["members"][1]["checkpoint"])
    other.graph_settings = {**(other.graph_settings or {}), "cutoff": 9.0}
    with pytest.raises(Exception, match="graph settings"):
        Ensemble([member, other])
    assert torch.is_tensor(next(member.parameters()))


def test_a_shipped_ensemble_loads_by_name_and_predicts_like_its_folder(ensemble_dir, tmp_path, monkeypatch):
    """``scripts/export_pretrained.py --ensemble DIR``: the members slimmed, one card with the calibration; then
    ``pretrained.load(name)`` and ``predict --model name`` give the folder's predictions and error bars."""
    import yaml

    from sagnn_lightning.lit import pretrained, registry
    from tests.scripts import load_script

    info = {
        "summary": "test ensemble; validation MAE {validation_mae:.3f} eV",
        "target": "band gap",
        "unit": "eV",
        "per": "cell",
        "training_data": "48 MP perovskites",
        "citation": "-",
        "licence": "-",
        "trainer": {"max_epochs": 2},
        "command": "python -m sagnn_lightning ensemble fit ...",
    }
    cards = tmp_path / "cards.yaml"
    cards.write_text(yaml.safe_dump({"tiny_ensemble": info}))
    models = tmp_path / "models"
    script = load_script("scripts/export_pretrained.py")
    argv = ["--ensemble", str(ensemble_dir["dir"]), "--name", "tiny_ensemble", "--cards", str(cards)]
    assert script.main([*argv, "--out", str(models)]) == 0
    card = registry.card("tiny_ensemble", models)
    assert len(card.extra["members"]) == 2 and card.extra["calibration"]["n"] > 0
    assert "ensemble: 2 members" in card.render()
    shipped = pretrained.load("tiny_ensemble", models_dir=models)
    assert isinstance(shipped, Ensemble) and shipped.calibration is not None
    structures = pd.read_csv(ensemble_dir["csv"])["cif"].tolist()[:6]
    here, there = shipped.predict(structures), load_ensemble(ensemble_dir["dir"]).predict(structures)
    np.testing.assert_allclose(here.prediction, there.prediction, rtol=1e-6)
    np.testing.assert_allclose(here.std, there.std, rtol=1e-6)
    monkeypatch.setattr(registry, "MODELS_DIR", models)
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", "tiny_ensemble", "--input", str(ensemble_dir["csv"]), "--output", str(out)]) == 0
    assert list(pd.read_csv(out).columns) == ["id", "prediction", "std", "lower_95", "upper_95"]
    (models / card.extra["members"][1]["file"]).write_bytes(b"damaged")
    with pytest.raises(registry.PretrainedError, match="checksum mismatch"):
        pretrained.load("tiny_ensemble", models_dir=models)


def test_a_classification_ensemble_averages_probabilities(tmp_path):
    """Classification members: the mean probability, its spread and the label of the mean; the CSV columns."""
    from sagnn_lightning.lit.inference import iter_predictions, model_graph_settings
    from sagnn_lightning.lit.module import SAGNNModule
    from sagnn_lightning.lit.predictions_csv import PredictionsWriter
    from tests.lit.test_module import tiny_model

    members = []
    for seed in (0, 1, 2):
        model = tiny_model(1)  # seeded: the same weights each time, so make each member its own
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
        members.append(SAGNNModule(model, task_type="classification").eval())
    ensemble = Ensemble(members)
    frame = pd.read_csv(sample_path("mp_abx3_perovskites"))
    structures = frame["cif"].tolist()[:6]
    result = ensemble.predict(structures)
    alone = np.stack([m.predict(structures) for m in members])  # each member's probability of class 1
    np.testing.assert_allclose(result.probability, alone.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(result.probability_std, alone.std(axis=0, ddof=1), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(result.prediction, (alone.mean(axis=0) >= 0.5).astype(float))
    assert result.std is None and result.probability_std.max() > 1e-4  # three different members
    items = [InputItem(str(k), str(k), s) for k, s in enumerate(structures)]
    out = tmp_path / "p.csv"
    with PredictionsWriter(out, ensemble.target_names, True, extra=["probability_std"], members=3) as writer:
        for part in iter_predictions(ensemble, items, model_graph_settings(ensemble)):
            writer.write(part)
    written = pd.read_csv(out)
    assert list(written.columns) == [
        "id",
        "prediction",
        "probability",
        "probability_std",
        *(f"member_{j}" for j in range(3)),
    ]
    np.testing.assert_allclose(written["probability"], result.probability, rtol=1e-5)


def _assemble(folder, checkpoints, *flags: str) -> int:
    return main(["ensemble", "assemble", "--out", str(folder), "--ckpt", *map(str, checkpoints), *flags])


def _member_checkpoints(ensemble_dir) -> list:
    manifest = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())
    return [ensemble_dir["dir"] / m["checkpoint"] for m in manifest["members"]]


def test_assemble_on_the_calibration_rows_equals_fit(ensemble_dir, tmp_path):
    """The members of ``ensemble fit``, assembled from their checkpoints: the same calibration and predictions."""
    fitted = json.loads((ensemble_dir["dir"] / "ensemble.json").read_text())
    assert _assemble(tmp_path / "asm", _member_checkpoints(ensemble_dir), "--calibrate-on", "calibration") == 0
    manifest = json.loads((tmp_path / "asm" / "ensemble.json").read_text())
    assert manifest["calibrated_on"] == "calibration" and manifest["split"] == "assembled"
    assert [m["seed"] for m in manifest["members"]] == [0, 1]  # from each run's config.yaml
    assert all(m["monitor"] and m["best_score"] > 0 for m in manifest["members"])
    assert manifest["calibration"]["scale"] == pytest.approx(fitted["calibration"]["scale"], rel=1e-9)
    for level, multiplier in fitted["calibration"]["conformal"].items():  # None: too few rows for the level
        ours = manifest["calibration"]["conformal"][level]
        assert ours is None if multiplier is None else ours == pytest.approx(multiplier, rel=1e-9)
    structures = pd.read_csv(ensemble_dir["csv"])["cif"].tolist()[:6]
    here, there = (
        load_ensemble(tmp_path / "asm").predict(structures),
        load_ensemble(ensemble_dir["dir"]).predict(structures),
    )
    np.testing.assert_allclose(here.prediction, there.prediction, rtol=1e-6)
    np.testing.assert_allclose(here.std, there.std, rtol=1e-6)
    np.testing.assert_allclose(here.upper_95, there.upper_95, rtol=1e-6)


def test_assemble_on_the_validation_rows_scales_by_their_errors(ensemble_dir, tmp_path):
    """``--calibrate-on validation``: the scale is sqrt(mean(z²)) of the shared validation rows, computed here from
    each member predicting those crystals alone."""
    from sagnn_lightning.lit.pretrained import training_datamodule

    checkpoints = _member_checkpoints(ensemble_dir)
    assert _assemble(tmp_path / "asm", checkpoints) == 0
    manifest = json.loads((tmp_path / "asm" / "ensemble.json").read_text())
    settings = torch.load(checkpoints[0], map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]
    datamodule = training_datamodule(settings, progress=False, num_workers=0)
    datamodule.setup("validate")
    ids = [str(i) for batch in datamodule.val_dataloader() for i in batch.sample_id]
    frame = pd.read_csv(ensemble_dir["csv"]).set_index("material_id")
    structures = frame.loc[ids, "cif"].tolist()
    alone = np.stack([load_checkpoint(c).predict(structures) for c in checkpoints])
    truth = frame.loc[ids, "band_gap"].to_numpy(dtype=float)
    z = (truth - alone.mean(axis=0)) / alone.std(axis=0, ddof=1)
    assert manifest["calibration"]["n"] == len(ids) > 0
    assert manifest["calibration"]["scale"] == pytest.approx(math.sqrt(np.mean(z**2)), rel=1e-4)
    assert manifest["calibration_metrics"]["held_out_rows"] == "validation"


def test_assemble_refuses_members_that_held_out_other_rows(ensemble_dir, tmp_path, capsys):
    first, second = _member_checkpoints(ensemble_dir)
    state = torch.load(second, map_location="cpu", weights_only=False)
    state["datamodule_hyper_parameters"]["split_seed"] = 7
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    assert _assemble(tmp_path / "asm", [first, other]) == 2
    err = capsys.readouterr().err
    assert "--ckpt" in err and "split_seed: 0 vs 7" in err and "--calibrate-on" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _assemble(tmp_path / "raw", [first, other], "--calibrate-on", "none") == 0  # raw spread: allowed
    assert load_ensemble(tmp_path / "raw").calibration is None
    assert _assemble(tmp_path / "raw", [first, other], "--calibrate-on", "none") == 2  # never overwrites one
    assert _assemble(tmp_path / "one", [first]) == 2 and "two" in capsys.readouterr().err


def test_assemble_with_a_floor_fits_both_and_predicts_with_them(ensemble_dir, tmp_path):
    """``--calibration-floor``: the manifest holds scale and floor as fit on the held-out rows' errors and spreads
    (recomputed here with the library's fit on the written ``calibration_predictions.csv``), and predictions carry
    ``std = sqrt((s·σ)² + f²)``."""
    from sagnn_lightning.uncertainty import fit_scale_and_floor

    assert _assemble(tmp_path / "asm", _member_checkpoints(ensemble_dir), "--calibration-floor") == 0
    manifest = json.loads((tmp_path / "asm" / "ensemble.json").read_text())
    assert "--calibration-floor" in manifest["command"] and "floor" in manifest["calibration"]["method"]
    rows = pd.read_csv(tmp_path / "asm" / "calibration_predictions.csv")
    scale, floor = fit_scale_and_floor(rows["target"] - rows["prediction"], rows["std_raw"])
    assert manifest["calibration"]["scale"] == pytest.approx(scale, rel=1e-6)
    assert manifest["calibration"]["floor"] == pytest.approx(floor, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(rows["std"], np.hypot(scale * rows["std_raw"], floor), rtol=1e-6)
    structures = pd.read_csv(ensemble_dir["csv"])["cif"].tolist()[:4]
    result = load_ensemble(tmp_path / "asm").predict(structures)
    np.testing.assert_allclose(result.std, np.hypot(scale * result.std_raw, floor), rtol=1e-5)


def test_fit_refuses_a_training_command_that_sets_what_each_member_gets(tmp_path, capsys):
    """The seed, run folder, calibration rows and inner fold are set per member, after the user's command: the same
    options in the command would be overridden silently, so ``ensemble fit`` refuses them in one line that names the
    option and the ensemble flag that sets it, before anything is written."""
    from sagnn_lightning.errors import UsageError, flag_parameter
    from sagnn_lightning.lit.ensemble_fit import _check, fit_ensemble

    assert flag_parameter("--model.model.init_args.attention=each") == "model.model.attention"
    assert flag_parameter("--model.model.attention") == "model.model.attention"
    assert flag_parameter("each") is None and flag_parameter("--config=my.yaml") is None
    out = tmp_path / "ens"
    command = ["python", "recipes/quickstart.py", "fit", "--seed_everything=3", "--data.init_args.val_fold", "1"]
    with pytest.raises(UsageError, match="seed_everything=3 .set per member from seed.*val_fold .set per member"):
        fit_ensemble(out, command, members=2, split="inner-folds")
    assert main(["ensemble", "fit", "--out", str(out), "--members", "2", "--split", "inner-folds", "--", *command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "from --seed" in err and "from --members" in err
    assert not out.exists()
    # the inner fold is the user's own with split="seeds", and other options pass: the check is not over-eager
    _check(2, "seeds", 0.1, 1, ["python", "x.py", "--data.val_fold=1", "--data.cutoff=8.0", "--config", "a.yaml"])
