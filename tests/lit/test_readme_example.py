"""The README's Python example (SAGNN + MatbenchDataModule + Trainer) runs as written."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MATBENCH = (REPO / "../shared/data/matbench").resolve()


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## In Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## In Python'"
    return match.group(1)


@pytest.mark.skipif(not (MATBENCH / "matbench_jdft2d.json.gz").is_file(), reason=f"no matbench data at {MATBENCH}")
def test_readme_python_example_runs(offline_env, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_python_example())
    env = {**offline_env, "MATMINER_DATA": str(MATBENCH), "OMP_NUM_THREADS": "1", "SAGNN_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    mae = float(re.search(r"'test/mae': ([0-9.eE+-]+)", proc.stdout).group(1))
    assert math.isfinite(mae) and mae > 0
