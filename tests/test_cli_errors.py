"""User errors on the command line: one ``error: ...`` line naming the item and the CLI flag, exit status 2 for
a bad option and 1 otherwise, no traceback (``SAGNN_DEBUG=1`` shows it); the ``sagnn`` console script; and
``predict --ckpt best --run-dir`` when several runs share a folder.

Each kind of error (bad option, missing data, bad data rows, bad checkpoint, unreadable input, unwritable
output) has a case that runs the command as a user types it, in a subprocess with a timeout. Each of those
costs ~8 s of imports (20 s on a busy machine), so further variants of a kind run the same entry points in
this process (``recipe_main`` of a recipe, ``python -m sagnn_lightning``'s ``main``), which print and exit
exactly as the scripts do. Real data throughout: the bundled Materials Project sample, the fixture CIFs and,
where present, ``../shared/data``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
import torch
from pymatgen.core import Structure

from sagnn_lightning.__main__ import main as module_main
from sagnn_lightning.cli import recipe_main
from sagnn_lightning.cli.predict import FLAGS as PREDICT_FLAGS
from sagnn_lightning.data.cache import cache_key
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.errors import SAGNNError, UsageError
from sagnn_lightning.lit.checkpoints import resolve_checkpoint
from sagnn_lightning.lit.inference import predict_structures
from sagnn_lightning.lit.loading import load_module
from tests.lit.conftest import REPO, SHARED, TINY_MODEL_YAML, crystal_data_yaml, read_rows, write_sample_csv

RECIPES = REPO / "recipes"
INPUTS = REPO / "tests" / "fixtures" / "inputs"
MATBENCH = SHARED / "matbench"
TIMEOUT = 300  # s per command: seconds when idle, far more on a shared 2-core machine
#: the console script installed beside this interpreter (``pip install -e .``)
SAGNN_SCRIPT = shutil.which("sagnn", path=str(Path(sys.executable).parent))


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A real-data CSV (40 bundled MP perovskites), its data YAML, the tiny model YAML, an offline
    environment for subprocesses (W&B offline, graph cache in tmp, one thread) shared by the module."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    csv = write_sample_csv(tmp / "mp40.csv", 40)
    (tmp / "data.yaml").write_text(crystal_data_yaml(csv))
    (tmp / "tiny.yaml").write_text(TINY_MODEL_YAML)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "SAGNN_DEBUG")}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp / "wandb_home"),
        WANDB_CONFIG_DIR=str(tmp / "wandb_config"),
        WANDB_CACHE_DIR=str(tmp / "wandb_cache"),
        NETRC=str(tmp / "no_netrc"),
        SAGNN_CACHE_DIR=str(tmp / "graph_cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return {"tmp": tmp, "csv": csv, "data": tmp / "data.yaml", "tiny": tmp / "tiny.yaml", "env": env}


@pytest.fixture()
def same_env(work, monkeypatch) -> None:
    """This process gets the subprocesses' environment (offline W&B, graph cache in tmp) and folder."""
    for key in ("WANDB_API_KEY", "SAGNN_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in work["env"].items():
        if key != "PYTHONPATH" and os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(work["tmp"])


def run(cmd: list[str], work: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=work["tmp"], env=env or work["env"], capture_output=True, text=True, timeout=TIMEOUT)


class InProcess:
    """The result of an entry point called in this process, shaped like ``CompletedProcess``."""

    def __init__(self, func, capsys) -> None:
        try:
            result = func()
        except SystemExit as exc:  # recipe_main exits on a user error, as the script does
            result = exc.code
        self.returncode = result if isinstance(result, int) else 0
        captured = capsys.readouterr()
        self.stdout, self.stderr = captured.out, captured.err


QUICKSTART_CONFIGS = [RECIPES / "configs" / "sagnn.yaml", RECIPES / "quickstart.yaml"]


def quickstart_args(work: dict, *extra: str, sub: str = "fit") -> list[str]:
    """Arguments of ``recipes/quickstart.py``: the 40-crystal CSV, the tiny model, 1 epoch, no logger."""
    return [
        sub,
        "--config",
        str(work["data"]),
        "--config",
        str(work["tiny"]),
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={work['tmp'] / 'run_q'}",
        *extra,
    ]


def quickstart(work: dict, *extra: str, sub: str = "fit") -> list[str]:
    """The command line ``python recipes/quickstart.py ...`` (see :func:`quickstart_args`)."""
    return [sys.executable, str(RECIPES / "quickstart.py"), *quickstart_args(work, *extra, sub=sub)]


def quickstart_here(work: dict, capsys, *extra: str, sub: str = "fit") -> InProcess:
    """``recipes/quickstart.py``'s entry point, in this process (use with the ``same_env`` fixture)."""
    return InProcess(
        lambda: recipe_main("quickstart", QUICKSTART_CONFIGS, quickstart_args(work, *extra, sub=sub)), capsys
    )


def recipe_here(task: str, capsys, *args: str) -> InProcess:
    """``recipes/<task>.py``'s entry point with its default configs, in this process."""
    return InProcess(
        lambda: recipe_main(
            task, [RECIPES / "configs" / "sagnn.yaml", RECIPES / "configs" / f"{task}.yaml"], list(args)
        ),
        capsys,
    )


def module_here(capsys, *args: str) -> InProcess:
    """``python -m sagnn_lightning <args>``, in this process."""
    return InProcess(lambda: module_main(list(args)), capsys)


def predict_tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "sagnn_lightning", "predict", *args]


def user_error(proc: subprocess.CompletedProcess | InProcess, status: int, *fragments: str) -> str:
    """Assert a user error: exit ``status``, no traceback, one ``error:`` line (the last one on stderr)
    holding every fragment; returns that line."""
    shown = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    assert proc.returncode == status, shown
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, shown
    assert "Namespace(" not in proc.stderr, shown  # no jsonargparse union dump
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, shown
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0], shown
    for fragment in fragments:
        assert fragment in errors[0], shown
    return errors[0]


def csv_variant(work: dict, name: str, edit) -> Path:
    """A copy of the real-data CSV changed by ``edit(frame)``."""
    frame = pd.read_csv(work["csv"])
    edit(frame)
    path = work["tmp"] / name
    frame.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------- options and data


def test_unknown_matbench_task(work):
    proc = run(
        [
            sys.executable,
            str(RECIPES / "matbench_jdft2d.py"),
            "fit",
            "--data.task=matbench_nonexistent",
            "--trainer.logger=false",
        ],
        work,
    )
    line = user_error(
        proc,
        2,
        "unknown matbench task 'matbench_nonexistent'",
        "--data.task",
        "matbench_jdft2d",
        "matbench_perovskites",
    )
    assert len(line) < 400


@pytest.mark.parametrize(
    "option, fragments",
    [
        ("--data.on_error=bogus", ["on_error must be 'raise' or 'skip'", "--data.on_error", "'bogus'"]),
        ("--data.val_fraction=0.95", ["--data.val_fraction", "--data.test_fraction", "0.95"]),
    ],
)
def test_bad_datamodule_option_reports_the_constructor_message(work, same_env, capsys, option, fragments):
    user_error(quickstart_here(work, capsys, option), 2, *fragments)


def test_lr_multiplier_of_no_parameters_names_the_flag(work, same_env, capsys):
    user_error(
        quickstart_here(work, capsys, "--model.lr_multipliers={attention: 0.1}"),
        2,
        "--model.lr_multipliers",
        "'attention' names no parameters",
        "attention_layers",
    )


def test_parser_errors_are_the_error_line_without_the_usage_block(work):
    proc = run(quickstart(work, "--model.loss=bogus"), work)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "usage:" not in proc.stderr and len(proc.stderr.splitlines()) <= 4, proc.stderr[-3000:]
    assert 'error: Parser key "model.loss"' in proc.stderr and "'l1', 'mse'" in proc.stderr
    assert "--help" in proc.stderr  # the tip line says where the options are listed


def test_model_option_that_does_not_fit_names_the_cli_flags(work, same_env, capsys):
    user_error(
        quickstart_here(work, capsys, "--model.model.init_args.heads=3"),
        2,
        "heads=3 must divide hidden_dim=",
        "--model.model.heads",
        "--model.model.hidden_dim",
        "[1, 2, 4, 8]",
    )


def test_matbench_missing_data_file(work):
    missing = work["tmp"] / "nowhere" / "matbench_jdft2d.json.gz"
    proc = run(
        [
            sys.executable,
            str(RECIPES / "matbench_jdft2d.py"),
            "fit",
            f"--data.data_file={missing}",
            "--trainer.logger=false",
        ],
        work,
    )
    user_error(proc, 2, str(missing), "--data.data_file")


@pytest.mark.skipif(not MATBENCH.is_dir(), reason="needs ../shared/data/matbench")
def test_matbench_data_home_without_the_task_file(work, same_env, capsys):
    # the shared folder holds jdft2d and phonons, not dielectric
    assert not (MATBENCH / "matbench_dielectric.json.gz").exists()
    proc = recipe_here("matbench_dielectric", capsys, "fit", f"--data.data_home={MATBENCH}", "--trainer.logger=false")
    user_error(proc, 2, str(MATBENCH / "matbench_dielectric.json.gz"), "--data.data_home", "--data.data_file")


@pytest.mark.skipif(not (MATBENCH / "matbench_jdft2d.json.gz").is_file(), reason="needs ../shared/data/matbench")
def test_matbench_file_of_another_task(work, same_env, capsys):
    proc = recipe_here(
        "matbench_phonons",
        capsys,
        "fit",
        f"--data.data_file={MATBENCH / 'matbench_jdft2d.json.gz'}",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={work['tmp'] / 'run_phonons'}",
    )
    user_error(
        proc, 1, "matbench_jdft2d.json.gz", "'last phdos peak'", "exfoliation_en", "--data.task", "--data.data_file"
    )


def test_missing_data_file(work, same_env, capsys):
    proc = quickstart_here(work, capsys, f"--data.data_file={work['tmp'] / 'missing.csv'}")
    user_error(proc, 2, "missing.csv does not exist", "--data.data_file")


def test_nan_target_row(work, same_env, capsys):
    frame = pd.read_csv(work["csv"])
    bad_id = frame.loc[3, "material_id"]
    path = csv_variant(work, "nan.csv", lambda f: f.__setitem__("band_gap", f["band_gap"].where(f.index != 3)))
    user_error(
        quickstart_here(work, capsys, f"--data.data_file={path}"),
        1,
        f"{bad_id}: target band_gap is nan",
        "--data.on_error=skip",
    )


def test_truncated_cif_row(work):
    bad_id = pd.read_csv(work["csv"]).loc[5, "material_id"]
    truncated = (INPUTS / "bad" / "truncated.cif").read_text()
    path = csv_variant(work, "truncated.csv", lambda f: f.__setitem__("cif", f["cif"].where(f.index != 5, truncated)))
    line = user_error(
        run(quickstart(work, f"--data.data_file={path}"), work), 1, bad_id, "truncated file", "--data.on_error=skip"
    )
    assert "ZeroDivisionError" not in line


def test_table_without_structure_column(work, same_env, capsys):
    path = csv_variant(work, "nocol.csv", lambda f: f.rename(columns={"cif": "text"}, inplace=True))
    user_error(
        quickstart_here(work, capsys, f"--data.data_file={path}"),
        1,
        "no structure column",
        "'text'",
        "--data.structure_column",
    )


def _scaled_lattice(work: dict, factor: float, name: str) -> tuple[str, Path]:
    """The CSV with one real crystal whose lattice was scaled by ``factor``: x12 leaves every atom > 20 Å from the
    others (isolated), x100 is a lattice written in pm instead of Å."""
    frame = pd.read_csv(work["csv"])
    structure = Structure.from_str(frame.loc[7, "cif"], fmt="cif")
    wrong = Structure(structure.lattice.matrix * factor, structure.species, structure.frac_coords).to(fmt="cif")
    return frame.loc[7, "material_id"], csv_variant(
        work, name, lambda f: f.__setitem__("cif", f["cif"].where(f.index != 7, wrong))
    )


def test_a_lattice_in_pm_is_refused_before_the_neighbour_search(work, same_env, capsys):
    bad_id, path = _scaled_lattice(work, 100.0, "pm.csv")
    user_error(quickstart_here(work, capsys, f"--data.data_file={path}"), 1, bad_id, "lattice lengths")


def test_isolated_atom_names_an_option_that_exists(work, same_env, capsys):
    bad_id, path = _scaled_lattice(work, 12.0, "isolated.csv")
    user_error(
        quickstart_here(work, capsys, f"--data.data_file={path}"),
        1,
        bad_id,
        "no neighbour within 20.0 Å",
        "--data.max_isolated_radius",
    )
    # the option the message names exists and does what it says: the same data now trains
    proc = quickstart_here(work, capsys, f"--data.data_file={path}", "--data.max_isolated_radius=1000")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr


def test_max_isolated_radius_is_part_of_the_graph_cache_key(tmp_path):
    def module(radius):
        return CrystalDataModule("sample:mp_abx3_perovskites", cache_dir=str(tmp_path), max_isolated_radius=radius)

    assert module(20.0).settings.max_isolated_radius == 20.0 and module(40.0).settings.max_isolated_radius == 40.0
    assert cache_key("f", module(20.0).settings) != cache_key("f", module(40.0).settings)
    assert cache_key("f", module(20.0).settings) == cache_key(
        "f", CrystalDataModule("sample:mp_abx3_perovskites", cache_dir=str(tmp_path)).settings
    )


# ----------------------------------------------------------------------------- checkpoints and outputs


@pytest.fixture(scope="module")
def garbage_ckpt(work) -> Path:
    path = work["tmp"] / "garbage.ckpt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def test_lightning_cli_garbage_checkpoint(work, garbage_ckpt):
    line = user_error(
        run(quickstart(work, f"--ckpt_path={garbage_ckpt}"), work),
        1,
        str(garbage_ckpt),
        "--ckpt_path",
        "not a PyTorch checkpoint",
    )
    assert "Unsupported operand" not in line


def test_lightning_cli_missing_checkpoint(work, same_env, capsys):
    user_error(
        quickstart_here(work, capsys, f"--ckpt_path={work['tmp'] / 'nope.ckpt'}"),
        2,
        "nope.ckpt does not exist",
        "--ckpt_path",
    )


def test_lightning_cli_unwritable_predictions_output(work, two_runs, same_env, capsys, monkeypatch):
    # a file where a folder is needed: unwritable for every user, root included; checked before any work
    out = work["csv"] / "predictions.csv"
    built = []
    monkeypatch.setattr(CrystalDataModule, "prepare_data", lambda self: built.append(self))
    proc = quickstart_here(
        work, capsys, f"--ckpt_path={two_runs['best'][1]}", f"--predictions.output={out}", sub="predict"
    )
    user_error(proc, 1, "--predictions.output", str(out), "is a file, not a folder")
    assert not built


def test_unwritable_run_dir(work, same_env, capsys):
    root = work["csv"] / "run"
    proc = quickstart_here(work, capsys, f"--trainer.default_root_dir={root}")
    user_error(proc, 1, "--trainer.default_root_dir", str(root))


def test_predict_garbage_checkpoint(work, garbage_ckpt, same_env, capsys):
    proc = module_here(
        capsys,
        "predict",
        "--ckpt",
        str(garbage_ckpt),
        "--input",
        str(INPUTS / "cifs"),
        "--output",
        str(work["tmp"] / "p.csv"),
    )
    user_error(proc, 1, str(garbage_ckpt), "--ckpt", "not a PyTorch checkpoint")


def test_predict_missing_checkpoint(work):
    proc = run(
        predict_tool(
            "--ckpt",
            str(work["tmp"] / "nope.ckpt"),
            "--input",
            str(INPUTS / "cifs"),
            "--output",
            str(work["tmp"] / "p.csv"),
        ),
        work,
    )
    user_error(proc, 2, "nope.ckpt does not exist", "--ckpt")


def test_predict_missing_input(work, two_runs, same_env, capsys):
    proc = module_here(
        capsys,
        "predict",
        "--ckpt",
        str(two_runs["best"][1]),
        "--input",
        str(work["tmp"] / "my_cifs"),
        "--output",
        str(work["tmp"] / "p.csv"),
    )
    user_error(proc, 2, "my_cifs does not exist", "--input")


def test_predict_unwritable_output_is_checked_first(work, two_runs):
    out = work["csv"] / "preds.csv"
    # the input is missing too: the output is reported, so it was checked before anything else
    proc = run(
        predict_tool("--ckpt", str(two_runs["best"][1]), "--input", str(work["tmp"] / "my_cifs"), "--output", str(out)),
        work,
    )
    user_error(proc, 1, "--output", str(out), "is a file, not a folder")


def test_predict_table_without_structure_column(work, two_runs):
    path = csv_variant(work, "predict_nocol.csv", lambda f: f.rename(columns={"cif": "text"}, inplace=True))
    proc = run(
        predict_tool("--ckpt", str(two_runs["best"][1]), "--input", str(path), "--output", str(work["tmp"] / "p.csv")),
        work,
    )
    user_error(proc, 1, "no structure column", "--structure-column")


def test_debug_shows_the_traceback(work, same_env, capsys, monkeypatch):
    monkeypatch.setenv("SAGNN_DEBUG", "1")
    proc = module_here(
        capsys,
        "predict",
        "--ckpt",
        str(work["tmp"] / "nope.ckpt"),
        "--input",
        str(INPUTS / "cifs"),
        "--output",
        str(work["tmp"] / "p.csv"),
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "InputNotFoundError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: checkpoint ")


# --------------------------------------------------------------- the sagnn script, --ckpt best


def test_console_script_is_the_module_entry_point():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sagnn"] == "sagnn_lightning.__main__:main"


@pytest.fixture(scope="module")
def two_runs(work) -> dict:
    """Two ``sagnn fit`` runs (seeds 0 and 1) in the same run folder, with the installed console script."""
    if SAGNN_SCRIPT is None:
        pytest.skip("the sagnn console script is not installed beside this Python (pip install -e .)")
    root = work["tmp"] / "runs" / "quickstart"
    procs, best = [], []
    for seed in (0, 1):
        before = set((root / "checkpoints").glob("best-*.ckpt"))
        procs.append(
            run(
                [
                    SAGNN_SCRIPT,
                    "fit",
                    "--config",
                    str(work["data"]),
                    "--config",
                    str(work["tiny"]),
                    "--trainer.max_epochs=1",
                    "--trainer.logger=false",
                    f"--seed_everything={seed}",
                    f"--trainer.default_root_dir={root}",
                ],
                work,
            )
        )
        assert procs[-1].returncode == 0, procs[-1].stderr[-4000:]
        new = set((root / "checkpoints").glob("best-*.ckpt")) - before
        assert len(new) == 1, new
        best.append(new.pop())
    return {"root": root, "procs": procs, "best": best}


def test_sagnn_fit_exits_0_without_printing_the_cli_object(two_runs):
    for proc in two_runs["procs"]:
        assert proc.returncode == 0
        assert "SAGNNLightningCLI" not in proc.stdout and " object at 0x" not in proc.stdout
        assert "sagnn fit done" in proc.stdout


def _predictions(ckpt: Path, files: list[Path]) -> dict[str, float]:
    module, settings = load_module(ckpt)
    structures = [Structure.from_file(f) for f in files]
    result = predict_structures(module, [f.stem for f in files], structures, settings["cutoff"])
    return {i: float(v) for i, v in zip(result.ids, result.prediction[:, 0])}


def test_sagnn_predict_ckpt_best_picks_the_latest_run(work, two_runs):
    root, (first, second) = two_runs["root"], two_runs["best"]
    assert len(list((root / "checkpoints").glob("best-*.ckpt"))) == 2  # the README's old glob would be ambiguous
    out = work["tmp"] / "best.csv"
    proc = run(
        [
            SAGNN_SCRIPT,
            "predict",
            "--ckpt",
            "best",
            "--run-dir",
            str(root),
            "--input",
            str(INPUTS / "cifs"),
            "--output",
            str(out),
        ],
        work,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"checkpoint: {second}" in proc.stdout
    files = sorted((INPUTS / "cifs").glob("*.cif"))
    expected, other = _predictions(second, files), _predictions(first, files)
    rows = {r["id"]: float(r["prediction"]) for r in read_rows(out)}
    assert rows.keys() == expected.keys()
    for key, value in rows.items():
        assert value == pytest.approx(expected[key], rel=1e-5, abs=1e-6)
    assert any(abs(expected[k] - other[k]) > 1e-4 for k in expected)  # the two runs' models differ


def test_predict_ckpt_run_folder(work, two_runs, same_env, capsys):
    proc = module_here(
        capsys,
        "predict",
        "--ckpt",
        str(two_runs["root"]),
        "--input",
        str(INPUTS / "cifs" / "mp-1016872.cif"),
        "--output",
        str(work["tmp"] / "folder.csv"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"checkpoint: {two_runs['best'][1]}" in proc.stdout


def test_resolve_checkpoint_forms(two_runs, tmp_path):
    root, (first, second) = two_runs["root"], two_runs["best"]
    newest_last = max(root.glob("checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    assert resolve_checkpoint("best", root) == second
    assert resolve_checkpoint(str(root), None) == second
    assert resolve_checkpoint("best", root / "checkpoints") == second
    assert resolve_checkpoint("last", root) == newest_last
    assert resolve_checkpoint(str(first)) == first
    assert torch.load(newest_last, weights_only=True)["callbacks"]  # the best path is read from its state
    with pytest.raises(UsageError, match="ckpt=best needs run_dir=") as info:
        resolve_checkpoint("best", None)
    assert info.value.render(PREDICT_FLAGS).startswith("--ckpt=best needs --run-dir=")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_checkpoint("last", tmp_path / "no_run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAGNNError, match="no last"):
        resolve_checkpoint("last", tmp_path / "empty")
