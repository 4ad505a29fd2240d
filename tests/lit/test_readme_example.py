"""The README's Python example (SAGNN + MatbenchDataModule + Trainer) runs as written, from the repository root:
offline (its ``data_home`` is ``../shared/data/matbench``; no ``$MATMINER_DATA``), writing only under ``runs/``."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sagnn_lightning.__main__ import main as module_main

REPO = Path(__file__).resolve().parents[2]
MATBENCH = (REPO / "../shared/data/matbench").resolve()


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## In Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## In Python'"
    return match.group(1)


def test_the_example_reads_the_shared_folder_and_writes_under_runs():
    code = readme_python_example()
    assert 'data_home="../shared/data/matbench"' in code
    run_dirs = re.findall(r'default_root_dir="([^"]+)"', code)
    assert len(run_dirs) == 1 and run_dirs[0].startswith("runs/")


@pytest.mark.skipif(not (MATBENCH / "matbench_jdft2d.json.gz").is_file(), reason=f"no matbench data at {MATBENCH}")
def test_readme_python_example_runs(offline_env, tmp_path):
    code = readme_python_example()
    run_dir = REPO / re.search(r'default_root_dir="([^"]+)"', code).group(1)
    if run_dir.exists():
        pytest.skip(f"{run_dir} exists already (this test writes it and removes it afterwards)")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {key: value for key, value in offline_env.items() if key != "MATMINER_DATA"}
    env["OMP_NUM_THREADS"] = "1"
    before = set(os.listdir(REPO))
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        mae = float(re.search(r"'test/mae': ([0-9.eE+-]+)", proc.stdout).group(1))
        assert math.isfinite(mae) and mae > 0
        assert list(run_dir.rglob("*.ckpt")), f"no checkpoint under {run_dir}"
        created = set(os.listdir(REPO)) - before - {"runs"}
        assert not created & {"checkpoints", "lightning_logs", "wandb"}, f"written in the cwd: {sorted(created)}"
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if "runs" not in before and (REPO / "runs").is_dir() and not any((REPO / "runs").iterdir()):
            (REPO / "runs").rmdir()  # made by this test and now empty


def test_readme_predict_in_python_runs_and_equals_the_command_line(tmp_path):
    """The README's Python predict block (under ``## Predict``) runs as written and prints what ``predict --model``
    writes for the same crystal."""
    section = (REPO / "README.md").read_text().split("## Predict", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## Predict'"
    code = match.group(1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = float(re.search(r"\[\s*([-0-9.eE+]+)\s*\]", proc.stdout).group(1))
    # the same crystal through the command line
    namespace: dict = {}
    exec(code.split("model = ")[0], namespace)  # builds ``srtio3`` only
    cif = tmp_path / "srtio3.cif"
    cif.write_text(namespace["srtio3"].to(fmt="cif"))
    out = tmp_path / "p.csv"
    # the command, in this process (its subprocess runs are tested in tests/lit/test_predict.py and tests/test_docs.py)
    argv = ["predict", "--model", "matbench_perovskites", "--input", str(cif), "--output", str(out)]
    assert module_main(argv) == 0
    value = float(out.read_text().splitlines()[1].split(",")[1])
    assert printed == pytest.approx(value, rel=1e-5, abs=1e-6)
