"""What a new user types first: ``--help`` lists every command, abbreviated options are refused."""

from __future__ import annotations

import subprocess
import sys

from sagnn_lightning.__main__ import main as module_main
from tests.lit.conftest import REPO


def test_help_lists_every_command(capsys):
    assert module_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "models", "attention-plots"):
        assert f"\n  {command} " in out, command


def test_an_abbreviated_lightning_option_is_refused(tmp_path):
    """argparse would take ``--trainer.max_epoch`` for ``--trainer.max_epochs``: a one-letter typo with another
    meaning. It is an error, in the recipes and in ``python -m sagnn_lightning``."""
    for command in (["recipes/quickstart.py"], ["-m", "sagnn_lightning"]):
        proc = subprocess.run(
            [sys.executable, *command, "fit", "--config", "recipes/quickstart.yaml", "--trainer.max_epoch=1"]
            + ["--print_config"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "error: unrecognized arguments: --trainer.max_epoch=1" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_generic_fit_names_its_run_dir_after_the_config(tmp_path):
    """The README's fine-tune and composition commands (``python -m sagnn_lightning fit --config X.yaml``) write to
    ``runs/finetune`` and ``runs/composition``, not both to ``runs/sagnn``."""
    for config, expected in (
        ("recipes/finetune.yaml", "runs/finetune"),
        ("recipes/configs/composition.yaml", "runs/composition"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sagnn_lightning", "fit", "--config", config, "--print_config"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"default_root_dir: {expected}\n" in proc.stdout, config
