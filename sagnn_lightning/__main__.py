"""``python -m sagnn_lightning`` and the ``sagnn`` console script: the CLI.

* ``fit``/``validate``/``test`` + LightningCLI options (``--config``, ``--model.*``, ``--data.*``,
  ``--trainer.*``) go to the LightningCLI (:func:`sagnn_lightning.cli.cli_main`);
* ``predict --ckpt C --input I --output O`` (or ``--model NAME``): the predict command, on files, folders, tables
  or a matbench task's official split → CSV (:mod:`sagnn_lightning.cli.predict`);
* ``ensemble fit --out DIR --members K -- <training command>``: an ensemble (:mod:`sagnn_lightning.cli.ensemble`);
* ``models [NAME ...]``: the pretrained models shipped with the package (:mod:`sagnn_lightning.cli.models`);
* ``attention-plots DIR``: heatmaps and the element-pair map of an attention export
  (:mod:`sagnn_lightning.lit.attention_plots`).

:func:`main` returns the exit status: 0 on success; a user error prints one ``error: ...`` line on stderr
and gives 1 (2 for a bad option), without a traceback (``SAGNN_DEBUG=1`` shows it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

USAGE = """usage: python -m sagnn_lightning <command> [options]   (also: sagnn <command> [options])

commands:
  fit             train (LightningCLI: --config FILE, --model.*, --data.*, --trainer.*; the default command)
  validate        validate a checkpoint (LightningCLI, --ckpt_path FILE)
  test            test a checkpoint (LightningCLI, --ckpt_path FILE)
  predict         predict with a checkpoint (--ckpt) or a shipped model (--model) on CIFs or tables -> CSV
  ensemble fit    train K members of a training command into an ensemble with calibrated error bars
  models          list the pretrained models shipped with the package, or print their cards
  attention-plots draw the attention maps written by predict --attention DIR

'python -m sagnn_lightning <command> --help' shows a command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        return 0
    from sagnn_lightning.cli import cli_main, exit_status

    if argv[:1] == ["models"]:
        from sagnn_lightning.cli.models import models_main

        return exit_status(lambda: models_main(argv[1:]))
    if argv[:1] == ["attention-plots"]:
        from sagnn_lightning.lit.attention_plots import attention_plots_main

        return exit_status(lambda: attention_plots_main(argv[1:]))
    if argv[:1] == ["ensemble"]:
        from sagnn_lightning.cli.ensemble import FLAGS as ENSEMBLE_FLAGS
        from sagnn_lightning.cli.ensemble import ensemble_main

        return exit_status(lambda: ensemble_main(argv[1:]), ENSEMBLE_FLAGS)
    if argv[:1] == ["predict"]:
        from sagnn_lightning.cli.predict import FLAGS, predict_main

        return exit_status(lambda: predict_main(argv[1:]), FLAGS)
    return exit_status(lambda: cli_main(argv, name=run_name(argv)))


def run_name(argv: Sequence[str]) -> str:
    """The name of a generic ``fit``'s default run dir ``runs/<name>``: the stem of the last ``--config`` file
    (``recipes/finetune.yaml`` → ``runs/finetune``), so that runs of different configs do not share a folder;
    ``sagnn`` without one."""
    name = "sagnn"
    for k, arg in enumerate(argv):
        if arg == "--config" and k + 1 < len(argv):
            name = Path(argv[k + 1]).name.split(".")[0] or name
        elif arg.startswith("--config="):
            name = Path(arg.split("=", 1)[1]).name.split(".")[0] or name
    return name


if __name__ == "__main__":
    sys.exit(main())
