"""What a new user types first: ``--help`` lists every command, abbreviated options are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sagnn_lightning.__main__ import main as module_main
from sagnn_lightning.__main__ import run_name
from tests.lit.conftest import REPO


def test_help_lists_every_command(capsys):
    assert module_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "models", "attention-plots"):
        assert f"\n  {command} " in out, command


def test_an_abbreviated_lightning_option_is_refused(capsys):
    """argparse would take ``--trainer.max_epoch`` for ``--trainer.max_epochs``: a one-letter typo with another
    meaning. It is an error, in a recipe (as typed, in a subprocess) and in ``python -m sagnn_lightning``."""
    argv = ["fit", "--config", "recipes/quickstart.yaml", "--trainer.max_epoch=1", "--print_config"]
    proc = subprocess.run(
        [sys.executable, "recipes/quickstart.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: unrecognized arguments: --trainer.max_epoch=1" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(SystemExit) as info:
        module_main([argv[0], "--config", str(REPO / "recipes/quickstart.yaml"), *argv[3:]])
    assert info.value.code == 2
    assert "error: unrecognized arguments: --trainer.max_epoch=1" in capsys.readouterr().err


def test_generic_fit_names_its_run_dir_after_the_config():
    """The README's fine-tune and composition commands (``python -m sagnn_lightning fit --config X.yaml``) write to
    ``runs/finetune`` and ``runs/composition``, not both to ``runs/sagnn`` (the fine-tune command as typed, in a
    subprocess; the rule on every spelling of ``--config``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "sagnn_lightning", "fit", "--config", "recipes/finetune.yaml", "--print_config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "default_root_dir: runs/finetune\n" in proc.stdout
    assert run_name(["fit", "--config", "recipes/configs/composition.yaml"]) == "composition"
    assert run_name(["fit", "--config=a/b.yaml", "--config", "c/my.run.yml"]) == "my"  # the last one counts
    assert run_name(["fit", "--trainer.max_epochs=1"]) == "sagnn"
