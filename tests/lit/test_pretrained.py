"""Pretrained models shipped in the package (:mod:`sagnn_lightning.pretrained`): cards, checksums, predictions on
rows the models never trained on, the ``models`` and ``predict --model`` commands, and a fresh wheel install."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import sagnn_lightning
from sagnn_lightning import pretrained
from sagnn_lightning.lit.inference import predict_structures
from sagnn_lightning.lit.pretrained import training_datamodule
from sagnn_lightning.lit.registry import MODELS_DIR, PretrainedError, sha256_of
from tests.lit.conftest import REPO, SHARED, read_rows, run_python

FIXTURES = REPO / "tests" / "fixtures" / "pretrained"
NAMES = sorted(pretrained.available())


def _fixture(name: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / f"{name}_validation64.csv")


def test_the_three_models_ship_with_complete_cards():
    assert NAMES == ["matbench_jdft2d", "matbench_perovskites", "matbench_phonons"]
    for name in NAMES:
        card = pretrained.card(name)
        path = MODELS_DIR / card.file
        assert path.stat().st_size < 5 * 2**20, "a shipped model is a few MB at most"
        assert card.sha256 == sha256_of(path)
        assert card.per in ("atom", "cell") and card.unit and card.target and card.citation and card.licence
        model_args = card.config["model"]["model"]["init_args"]
        assert card.cutoff == model_args["cutoff"] == card.config["data"]["cutoff"]
        assert card.validation_mae > 0 and card.validation_rows > 0 and 1 <= card.best_epoch <= card.epochs
        assert card.package_version == sagnn_lightning.__version__
        assert "fit" in card.command and card.matbench
        assert "/" not in card.config["data"]["data_file"], "no local paths in a shipped card"


@pytest.mark.parametrize("name", NAMES)
def test_predictions_on_held_out_rows_agree_with_the_card(name):
    """64 rows of the model's own validation split (never trained on): the MAE must agree with the card's
    validation MAE within 4 standard errors, and beat predicting these rows' median."""
    card = pretrained.card(name)
    module = pretrained.load(name)
    assert not module.training
    rows = _fixture(name)
    result = predict_structures(module, rows.id.tolist(), rows.cif.tolist(), **pretrained.graph_settings(name))
    assert result.ids == rows.id.tolist() and not result.errors
    errors = np.abs(result.prediction[:, 0].double().numpy() - rows.target.to_numpy())
    mae, standard_error = errors.mean(), errors.std(ddof=1) / math.sqrt(len(errors))
    assert abs(mae - card.validation_mae) < 4 * standard_error, (mae, card.validation_mae, standard_error)
    assert mae < np.abs(rows.target - rows.target.median()).mean()


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_the_card_validation_mae_is_reproduced_on_the_whole_validation_split(name, tmp_path):
    """The run's DataModule, rebuilt from the card, names the validation rows; the shipped weights predict them
    (CIFs and targets from the task's CSV twin in ../shared/data) to the card's validation MAE."""
    card = pretrained.card(name)
    data_file = SHARED / "matbench" / card.config["data"]["data_file"]
    datamodule = training_datamodule(card.config["data"], data_file=str(data_file), cache_dir=str(tmp_path))
    val_ids = datamodule.split_ids["val"]
    target = datamodule.target_names[0]
    table = pd.read_csv(str(data_file).replace(".json.gz", ".csv.gz")).set_index("mbid").loc[val_ids]
    result = predict_structures(
        pretrained.load(name), val_ids, table.cif.tolist(), **pretrained.graph_settings(name), batch_size=256
    )
    assert result.ids == val_ids and len(val_ids) == card.validation_rows
    mae = float(np.abs(result.prediction[:, 0].double().numpy() - table[target].to_numpy()).mean())
    assert mae == pytest.approx(card.validation_mae, rel=1e-3)


def test_corrupt_weights_raise_the_checksum_error(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    name = NAMES[0]
    path = models / pretrained.card(name).file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for call in (lambda: pretrained.checkpoint_file(name, models), lambda: pretrained.load(name, models_dir=models)):
        with pytest.raises(PretrainedError, match="checksum mismatch") as info:
            call()
        assert "\n" not in str(info.value) and all(n in str(info.value) for n in NAMES)
    assert pretrained.checkpoint_file(NAMES[1], models)  # the others are intact


def test_an_unknown_name_lists_the_available_ones():
    with pytest.raises(PretrainedError, match="unknown pretrained model 'matbench_nope'") as info:
        pretrained.load("matbench_nope")
    assert all(n in str(info.value) for n in NAMES)


def test_models_command_lists_and_shows_cards(offline_env):
    listing = run_python(["-m", "sagnn_lightning", "models"], offline_env, timeout=120).stdout
    assert [line.split()[0] for line in listing.strip().splitlines()] == NAMES
    shown = run_python(["-m", "sagnn_lightning", "models", "matbench_phonons"], offline_env, timeout=120).stdout
    card = pretrained.card("matbench_phonons")
    assert card.sha256 in shown and card.command in shown and "cm^-1" in shown


def test_predict_with_an_unknown_model_is_one_line(offline_env):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagnn_lightning",
            "predict",
            "--model",
            "nope",
            "--input",
            "x.cif",
            "--output",
            "o.csv",
        ],
        cwd=REPO,
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: unknown pretrained model 'nope'")
    assert all(n in proc.stderr for n in NAMES)


@pytest.mark.slow
def test_predict_by_name_from_a_fresh_wheel_install_without_network(tmp_path, offline_env):
    """The wheel carries the models: installed alone into a folder and run from elsewhere, with every network
    request sent to a closed port, ``predict --model`` gives the same predictions as the package here."""
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("sagnn_lightning-*.whl"))
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=300)
    env = {
        **offline_env,
        "PYTHONPATH": str(site),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    env.pop("NO_PROXY", None)
    rows = _fixture("matbench_jdft2d").head(8)
    rows.to_csv(work / "crystals.csv", index=False)
    code = "import sagnn_lightning; print(sagnn_lightning.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    command = [sys.executable, "-m", "sagnn_lightning", "predict", "--model", "matbench_jdft2d"]
    command += ["--input", "crystals.csv", "--output", "out.csv"]
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = read_rows(work / "out.csv")
    here = predict_structures(
        pretrained.load("matbench_jdft2d"),
        rows.id.tolist(),
        rows.cif.tolist(),
        **pretrained.graph_settings("matbench_jdft2d"),
    )
    assert [r["id"] for r in got] == here.ids
    assert np.allclose([float(r["prediction"]) for r in got], here.prediction[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_one_member_of_a_shipped_ensemble_by_name(tmp_path, capsys):
    """``NAME/member_<j>``: one member as a single model (load, card, ``predict --model``, ``--attention``)."""
    from sagnn_lightning.__main__ import main
    from sagnn_lightning.lit.module import SAGNNModule

    ensemble, member = pretrained.load("matbench_perovskites"), pretrained.load("matbench_perovskites/member_1")
    assert isinstance(member, SAGNNModule) and len(ensemble) == 3
    rows = _fixture("matbench_perovskites").head(4)
    structures = rows.cif.tolist()
    np.testing.assert_allclose(member.predict(structures), ensemble.predict(structures).members[1], rtol=1e-6)
    card = pretrained.card("matbench_perovskites/member_1")
    assert card.validation_mae == pretrained.card("matbench_perovskites").extra["members"][1]["validation_mae"]
    assert "members" not in card.extra and "calibration" not in card.extra
    with pytest.raises(PretrainedError, match="member_0 to member_2"):
        pretrained.load("matbench_perovskites/member_3")
    inputs = tmp_path / "in.csv"
    rows[["id", "cif"]].to_csv(inputs, index=False)
    argv = ["predict", "--input", str(inputs), "--output", str(tmp_path / "p.csv"), "--attention", str(tmp_path / "a")]
    assert main([*argv, "--model", "matbench_perovskites/member_1"]) == 0
    assert (tmp_path / "a" / "index.json").is_file()
    assert main([*argv, "--model", "matbench_perovskites"]) == 2
    assert "--model NAME/member_<j>" in capsys.readouterr().err
