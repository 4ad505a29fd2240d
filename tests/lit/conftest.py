"""Shared fixtures of the CLI / DDP / resume / predict tests: real data subsets, tiny model, offline W&B."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sagnn_lightning.data.samples import sample_path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "../shared/data"

#: a tiny SA-GNN (every block type present, small widths) so that CLI tests take seconds
TINY_MODEL_YAML = """\
model:
  model:
    class_path: sagnn_lightning.models.SAGNN
    init_args:
      hidden_dim: 8
      dense_hidden: 16
      conv_hidden: [16]
      heads: 2
      num_blocks: 1
      num_gaussians: 20
      readout_hidden: [8]
      attention: last
      attention_backend: torch
trainer:
  accelerator: cpu
  devices: 1
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
"""


def write_sample_csv(path: Path, rows: int, start: int = 0) -> Path:
    """``rows`` real Materials Project perovskites (id, cif, band gap, formation energy) from the bundled sample."""
    frame = pd.read_csv(sample_path("mp_abx3_perovskites")).iloc[start : start + rows]
    frame[["material_id", "cif", "band_gap", "formation_energy_per_atom"]].to_csv(path, index=False)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (file closed afterwards)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def crystal_data_yaml(csv: Path, batch_size: int = 8, targets: str = "[band_gap]") -> str:
    return f"""\
data:
  class_path: sagnn_lightning.data.crystal.CrystalDataModule
  init_args:
    data_file: {csv}
    target_columns: {targets}
    val_fraction: 0.2
    test_fraction: 0.2
    batch_size: {batch_size}
    num_workers: 0
    progress: false
"""


@pytest.fixture()
def offline_env(tmp_path, monkeypatch) -> dict[str, str]:
    """W&B offline into tmp, graph cache into tmp, no API key; returns the env for subprocesses."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SAGNN_CACHE_DIR", str(tmp_path / "graph_cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # an in-process W&B run of an earlier test leaves its service address here; subprocesses must start their
    # own service, as a user's command does (a shared one still holds the run of a SIGKILLed process)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture()
def sample_run(tmp_path) -> dict[str, Path]:
    """A 48-crystal real-data CSV + its data YAML + the tiny model YAML, in tmp."""
    csv = write_sample_csv(tmp_path / "mp48.csv", 48)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(crystal_data_yaml(csv))
    tiny_yaml = tmp_path / "tiny.yaml"
    tiny_yaml.write_text(TINY_MODEL_YAML)
    return {"csv": csv, "data": data_yaml, "tiny": tiny_yaml, "root": tmp_path / "run"}


def quickstart_argv(run: dict[str, Path], *extra: str, root: Path | None = None, subcommand: str = "fit") -> list[str]:
    """The arguments of ``python recipes/quickstart.py`` (run from the repository root) on a test's data:
    ``[recipes/quickstart.py, subcommand, --config run["data"], --config run["tiny"], *extra,
    --trainer.default_root_dir=root]``.

    ``run`` is :func:`sample_run`'s dict (or any dict with a ``"data"`` YAML; without ``"tiny"`` the recipe's own
    model is used); ``root`` defaults to ``run["root"]``. ``extra`` stands between the config files and the run
    folder, in the order given: LightningCLI applies options left to right, so an ``extra`` overrides the config
    files, and a ``--config`` in ``extra`` overrides what comes before it. Prepend ``sys.executable`` to run it
    with ``subprocess`` (:func:`run_python` does that itself)."""
    configs = [arg for key in ("data", "tiny") if key in run for arg in ("--config", str(run[key]))]
    folder = run["root"] if root is None else root
    return ["recipes/quickstart.py", subcommand, *configs, *extra, f"--trainer.default_root_dir={folder}"]


def run_python(
    args: list[str], env: dict[str, str], timeout: float = 240, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root (output captured as text); fails the test with the output
    on error, unless ``check=False`` (a test of the exit status: the caller asserts on ``returncode``)."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"python {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def run_in_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``args`` with stdin/stdout/stderr on a pseudo-terminal (as in a user's shell: tqdm progress bars on);
    returns ``(exit status, output)``. A run still going after ``timeout`` s is killed (its whole process
    group) and fails the test, so a hang cannot stall the suite."""
    import fcntl
    import pty
    import select
    import signal
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column window, as a shell has
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                tail = b"".join(chunks)[-4000:].decode(errors="replace")
                pytest.fail(f"{' '.join(map(str, args))} still running after {timeout} s (hang?)\n{tail}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every process holding the terminal has exited
                    data = b""
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def wandb_run_bytes(root: Path, settle_s: float = 30.0) -> tuple[Path, bytes]:
    """The offline W&B run folder under ``root`` and the bytes of its ``.wandb`` record log.

    W&B's service process writes the log; on a loaded machine its last records can land a moment after
    ``run.finish()`` returned (seen once in a full suite beside a training job: the file held only its
    header). The file is read again until it stops growing for 1 s, for at most ``settle_s`` seconds."""
    import time

    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {root / 'wandb'}"
    logs = list(runs[-1].glob("run-*.wandb"))
    assert logs, f"no .wandb record file in {runs[-1]}"
    deadline, size, data = time.monotonic() + settle_s, -1, b""
    while time.monotonic() < deadline:
        data = logs[0].read_bytes()
        if len(data) == size and len(data) > 64:
            break
        size = len(data)
        time.sleep(1.0)
    return runs[-1], data
