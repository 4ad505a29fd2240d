"""``python -m sagnn_lightning predict``: good + bad CIFs, tables, classification, atomic output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from pymatgen.core import Structure

from sagnn_lightning.__main__ import main as module_main
from sagnn_lightning.cli import cli_main
from sagnn_lightning.data import collate_graphs, structure_to_graph
from sagnn_lightning.lit.module import SAGNNModule
from tests.lit.conftest import REPO, TINY_MODEL_YAML, crystal_data_yaml, read_rows, write_sample_csv

INPUTS = REPO / "tests" / "fixtures" / "inputs"
BASE = REPO / "recipes" / "configs" / "sagnn.yaml"


def _train(tmp: Path, csv_path: Path, targets: str, extra: list[str]) -> Path:
    (tmp / "data.yaml").write_text(crystal_data_yaml(csv_path, targets=targets))
    (tmp / "tiny.yaml").write_text(TINY_MODEL_YAML)
    cli_main(
        [
            "fit",
            "--config",
            str(tmp / "data.yaml"),
            "--config",
            str(tmp / "tiny.yaml"),
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp / 'run'}",
            *extra,
        ],
        configs=[BASE],
    )
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def regression_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("reg")
    # a cutoff other than the default: predict must build graphs with the training settings
    return _train(
        tmp,
        write_sample_csv(tmp / "mp.csv", 32, start=100),
        "[band_gap]",
        ["--data.init_args.cutoff=4.5", "--data.init_args.cache_dir=" + str(tmp / "cache")],
    )


@pytest.fixture(scope="module")
def classification_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cls")
    frame = pd.read_csv(write_sample_csv(tmp / "all.csv", 400))
    frame["is_metal"] = (frame["band_gap"] <= 0).astype(int)  # real labels, balanced: 16 metals + 16 others
    frame = pd.concat([frame[frame.is_metal == 1].head(16), frame[frame.is_metal == 0].head(16)]).sort_index()
    frame.to_csv(tmp / "mp.csv", index=False)
    return _train(
        tmp,
        tmp / "mp.csv",
        "[is_metal]",
        ["--data.init_args.task_type=classification", "--data.init_args.cache_dir=" + str(tmp / "cache")],
    )


def _reference(ckpt: Path, files: list[Path], cutoff: float) -> dict[str, torch.Tensor]:
    """Independent path: pymatgen parses each CIF, graphs built one by one, the module called directly."""
    module = SAGNNModule.load_from_checkpoint(ckpt).eval()
    graphs = [structure_to_graph(Structure.from_file(f), cutoff=cutoff) for f in files]
    with torch.no_grad():
        out = module(collate_graphs(graphs))
    return {f.stem: out[k] for k, f in enumerate(files)}


def test_good_and_bad_cifs(regression_ckpt, tmp_path, capsys):
    # the CLI linked the data cutoff into the model's Gaussian basis
    hparams = torch.load(regression_ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["model"]["init_args"]["cutoff"] == 4.5
    folder = tmp_path / "cifs"
    shutil.copytree(INPUTS / "cifs", folder)
    bad = sorted((INPUTS / "bad").glob("*.cif"))
    for f in bad:
        shutil.copy(f, folder / f.name)
    out = tmp_path / "out" / "preds.csv"
    status = module_main(["predict", "--ckpt", str(regression_ckpt), "--input", str(folder), "--output", str(out)])
    captured = capsys.readouterr()
    assert status == 0
    for f in bad:  # each bad file is reported by name
        assert str(folder / f.name) in captured.err
    good = sorted(f for f in folder.glob("*.cif") if f.name not in {b.name for b in bad})
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [f.stem for f in good]
    assert set(rows[0]) == {"id", "prediction"}
    reference = _reference(regression_ckpt, good, cutoff=4.5)
    for r in rows:
        assert float(r["prediction"]) == pytest.approx(float(reference[r["id"]][0]), rel=1e-5, abs=1e-6)
    assert f"wrote {len(good)} predictions" in captured.out and f"({len(bad)} skipped)" in captured.out
    assert sorted(p.name for p in out.parent.iterdir()) == ["preds.csv"]  # no temporary file left


def test_table_and_matbench_json_inputs(regression_ckpt, tmp_path):
    out = tmp_path / "table.csv"
    assert (
        module_main(
            ["predict", "--ckpt", str(regression_ckpt), "--input", str(INPUTS / "mp_abx3_8.csv"), "--output", str(out)]
        )
        == 0
    )
    ids = [r["id"] for r in read_rows(out)]
    assert ids == list(pd.read_csv(INPUTS / "mp_abx3_8.csv")["material_id"])
    assert (
        module_main(
            ["predict", "--ckpt", str(regression_ckpt), "--input", str(INPUTS / "jdft2d_8.json"), "--output", str(out)]
        )
        == 0
    )
    assert [r["id"] for r in read_rows(out)][0] == "mb-jdft2d-001"
    assert (
        module_main(
            [
                "predict",
                "--ckpt",
                str(regression_ckpt),
                "--input",
                str(INPUTS / "jdft2d_8.json"),
                "--output",
                str(out),
                "--id-header",
                "mbid",
            ]
        )
        == 0
    )
    assert out.read_text().splitlines()[0] == "mbid,prediction"  # matbench's id column name, e.g.
    assert [r["mbid"] for r in read_rows(out)][0] == "mb-jdft2d-001"


def test_only_bad_inputs_leave_existing_output_untouched(regression_ckpt, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    out.write_text("previous results\n")
    status = module_main(
        ["predict", "--ckpt", str(regression_ckpt), "--input", str(INPUTS / "bad"), "--output", str(out)]
    )
    assert status == 1
    assert out.read_text() == "previous results\n"
    assert "nothing written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv"]


def test_classification_writes_label_and_probability(classification_ckpt, tmp_path):
    out = tmp_path / "cls.csv"
    files = sorted((INPUTS / "cifs").glob("*.cif"))
    assert (
        module_main(
            ["predict", "--ckpt", str(classification_ckpt), "--input", str(INPUTS / "cifs"), "--output", str(out)]
        )
        == 0
    )
    rows = read_rows(out)
    assert set(rows[0]) == {"id", "prediction", "probability"}
    logits = _reference(classification_ckpt, files, cutoff=5.0)
    for r in rows:
        prob = torch.sigmoid(logits[r["id"]][0]).item()
        assert float(r["probability"]) == pytest.approx(prob, rel=1e-5, abs=1e-7)
        assert int(r["prediction"]) == int(prob >= 0.5)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    status = module_main(
        [
            "predict",
            "--ckpt",
            str(tmp_path / "nope.ckpt"),
            "--input",
            str(INPUTS / "cifs"),
            "--output",
            str(tmp_path / "o.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2  # a bad option value; the message, not a traceback (tests/test_cli_errors.py)
    assert err.startswith("error: checkpoint ") and "does not exist (--ckpt)" in err and "Traceback" not in err


MATBENCH_DATA = REPO.parent / "shared" / "data" / "matbench"


@pytest.mark.skipif(not (MATBENCH_DATA / "matbench_jdft2d.json.gz").is_file(), reason="needs ../shared/data")
def test_input_a_matbench_task_split(regression_ckpt, tmp_path, capsys):
    """``--input matbench_jdft2d --fold 1``: the official fold-1 test rows in matbench's order, each predicted
    as its own structure (read here independently from the task file with pymatgen)."""
    import gzip
    import json

    from sagnn_lightning.data.matbench import official_fold

    out = tmp_path / "fold1.csv"
    argv = ["predict", "--ckpt", str(regression_ckpt), "--input", "matbench_jdft2d", "--fold", "1"]
    argv += ["--data-home", str(MATBENCH_DATA), "--output", str(out), "--id-header", "mbid"]
    assert module_main(argv) == 0
    rows = read_rows(out)
    _, test_ids = official_fold("matbench_jdft2d", 1)
    assert [r["mbid"] for r in rows] == test_ids and len(rows) == 127  # 636 rows: folds of 128, 127, 127, 127, 127
    with gzip.open(MATBENCH_DATA / "matbench_jdft2d.json.gz", "rt") as fh:
        table = json.load(fh)
    by_id = {f"mb-jdft2d-{i + 1:03d}": row[0] for i, row in zip(table["index"], table["data"])}
    module = SAGNNModule.load_from_checkpoint(regression_ckpt, map_location="cpu").eval()
    for row in rows[:: len(rows) // 4]:
        graph = structure_to_graph(Structure.from_dict(by_id[row["mbid"]]), cutoff=4.5)
        with torch.no_grad():
            expected = float(module(collate_graphs([graph]))[0, 0])
        assert float(row["prediction"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the training rows of the same fold, and a fold that does not exist
    train = tmp_path / "train.csv"
    argv = ["predict", "--ckpt", str(regression_ckpt), "--input", "jdft2d", "--split", "train", "--fold", "1"]
    assert module_main([*argv, "--data-home", str(MATBENCH_DATA), "--output", str(train)]) == 0
    assert [r["id"] for r in read_rows(train)] == official_fold("matbench_jdft2d", 1)[0]
    capsys.readouterr()
    bad = ["predict", "--ckpt", str(regression_ckpt), "--input", "matbench_jdft2d", "--fold", "7"]
    assert module_main([*bad, "--data-home", str(MATBENCH_DATA), "--output", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--fold" in err and "\n" not in err


def test_lightning_options_get_the_predict_flags(regression_ckpt, tmp_path, capsys):
    """One predict command: LightningCLI's options are answered with one line naming the command's flags."""
    status = module_main(["predict", f"--ckpt_path={regression_ckpt}", "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: predict takes --ckpt, --input and --output")
    assert "--ckpt_path" in err and "\n" not in err


def test_python_predict_equals_the_command_line(regression_ckpt, tmp_path):
    """``load_checkpoint(path).predict(items)`` (structures, CIF text, dicts) gives the CSV's numbers, with the graph
    settings read from the checkpoint (cutoff 4.5 Å here, not the default 5)."""
    from sagnn_lightning.lit import load_checkpoint

    out = tmp_path / "cli.csv"
    assert (
        module_main(["predict", "--ckpt", str(regression_ckpt), "--input", str(INPUTS / "cifs"), "--output", str(out)])
        == 0
    )
    by_id = {r["id"]: float(r["prediction"]) for r in read_rows(out)}
    files = sorted((INPUTS / "cifs").glob("*.cif"))
    model = load_checkpoint(regression_ckpt)
    assert model.graph_settings is not None and model.graph_settings["cutoff"] == 4.5
    structures = [Structure.from_file(f) for f in files]
    texts = [f.read_text() for f in files]
    for items in (structures, texts, [s.as_dict() for s in structures]):
        values = model.predict(items)
        assert values.shape == (len(files),)
        assert values == pytest.approx([by_id[f.stem] for f in files], rel=1e-5, abs=1e-6)
    default_cutoff = model.model.bond_expansion.stop
    assert default_cutoff == 4.5  # the network's basis and the graphs agree


def test_python_predict_reports_bad_items(regression_ckpt):
    from sagnn_lightning.data.graph import StructureError
    from sagnn_lightning.lit import load_checkpoint

    model = load_checkpoint(regression_ckpt)
    good = (INPUTS / "cifs").glob("*.cif").__next__().read_text()
    with pytest.raises(StructureError, match="^item 1: "):
        model.predict([good, "not a cif"])
    with pytest.warns(UserWarning, match="1 of 2 items could not be predicted"):
        values = model.predict([good, "not a cif"], on_error="nan")
    assert values.shape == (2,) and torch.isfinite(torch.tensor(values[0])) and torch.isnan(torch.tensor(values[1]))


def test_shipped_model_predicts_in_python_as_on_the_command_line(tmp_path):
    """``pretrained.load(name).predict(...)`` = ``predict --model name`` on the same CIFs."""
    from sagnn_lightning import pretrained

    out = tmp_path / "shipped.csv"
    assert (
        module_main(
            [
                "predict",
                "--model",
                "matbench_perovskites",
                "--input",
                str(INPUTS / "mp_abx3_8.csv"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = read_rows(out)
    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    model = pretrained.load("matbench_perovskites")  # a shipped ensemble: the mean and its calibrated σ
    result = model.predict(list(frame["cif"]))
    assert [r["id"] for r in rows] == list(frame["material_id"])
    assert result.prediction == pytest.approx([float(r["prediction"]) for r in rows], rel=1e-5, abs=1e-6)
    assert result.std == pytest.approx([float(r["std"]) for r in rows], rel=1e-4, abs=1e-6)


def test_streamed_csv_equals_one_chunk(regression_ckpt, tmp_path):
    """The predict command reads a CSV in chunks: tiny chunks and batches give the rows of one whole read."""
    from sagnn_lightning.data.readers import iter_inputs
    from sagnn_lightning.lit import load_checkpoint
    from sagnn_lightning.lit.inference import concat_predictions, iter_predictions, model_graph_settings

    csv = write_sample_csv(tmp_path / "mp.csv", 23, start=7)
    model = load_checkpoint(regression_ckpt)
    settings = model_graph_settings(model)
    whole = concat_predictions(
        iter_predictions(model, iter_inputs(csv, chunk_rows=1000), settings, 64), model.target_names, False
    )
    streamed = concat_predictions(
        iter_predictions(model, iter_inputs(csv, chunk_rows=4), settings, 3), model.target_names, False
    )
    assert streamed.ids == whole.ids == list(pd.read_csv(csv)["material_id"])
    assert torch.allclose(streamed.prediction, whole.prediction, rtol=1e-5, atol=1e-6)


def test_best_of_a_run_folder_says_which_checkpoint_it_took(regression_ckpt, tmp_path, capsys):
    run_dir = regression_ckpt.parent.parent
    out = tmp_path / "p.csv"
    argv = [
        "predict",
        "--ckpt",
        "best",
        "--run-dir",
        str(run_dir),
        "--input",
        str(INPUTS / "cifs"),
        "--output",
        str(out),
    ]
    assert module_main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("checkpoint: ") and "(the best checkpoint of the latest run in" in line
    assert str(run_dir / "checkpoints") in line and line.split()[1].endswith(".ckpt")


def test_a_typo_is_one_line_with_the_nearest_option(regression_ckpt, tmp_path, capsys):
    common = ["predict", "--ckpt", str(regression_ckpt), "--input", str(INPUTS / "cifs")]
    assert module_main([*common, "--outptu", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "error: unknown option --outptu; did you mean --output? (see python -m sagnn_lightning predict --help)"
    )
    # no prefix matching: an abbreviation is not the option it abbreviates
    assert module_main([*common, "--out", str(tmp_path / "o.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: unknown option --out;")


def test_an_element_beyond_the_embedding_is_one_item_not_a_crash(tmp_path, capsys):
    """Og (Z=118) is an element, but the shipped models embed Z <= 100: that crystal is skipped, the others
    predicted (the command), or NaN (Python, ``on_error="nan"``)."""
    from sagnn_lightning import pretrained

    frame = pd.read_csv(INPUTS / "mp_abx3_8.csv")
    og = Structure.from_str(frame["cif"][0], fmt="cif")
    og.replace_species({og.species[0]: "Og"})
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "og.cif").write_text(og.to(fmt="cif"))
    (folder / "good.cif").write_text(frame["cif"][1])
    out = tmp_path / "p.csv"
    assert (
        module_main(["predict", "--model", "matbench_perovskites", "--input", str(folder), "--output", str(out)]) == 0
    )
    assert [r["id"] for r in read_rows(out)] == ["good"]
    err = capsys.readouterr().err
    assert "Z=118 is beyond the model's max_atomic_number=100" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="1 of 2 items"):
        values = pretrained.load("matbench_perovskites").predict([og, frame["cif"][1]], on_error="nan").prediction
    assert torch.isnan(torch.tensor(values[0])) and torch.isfinite(torch.tensor(values[1]))
