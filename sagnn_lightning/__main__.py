"""``python -m sagnn_lightning`` and the ``sagnn`` console script: the CLI.

* ``predict --ckpt C --input I --output O``: the one predict command, on files, folders, tables or a
  matbench task's official split → CSV (:mod:`sagnn_lightning.lit.predict`; ``--ckpt best --run-dir
  runs/<recipe>`` picks the best checkpoint of the latest run in that folder);
* ``fit``/``validate``/``test`` go to the LightningCLI (:func:`sagnn_lightning.cli.cli_main`).

:func:`main` returns the exit status: 0 on success; a user error prints one ``error: ...`` line on stderr
and gives 1 (2 for a bad option), without a traceback (``SAGNN_DEBUG=1`` shows it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from sagnn_lightning.cli import cli_main, exit_status

    if argv[:1] == ["predict"]:
        from sagnn_lightning.lit.predict import predict_main

        return exit_status(lambda: _predict(predict_main, argv[1:]))
    return exit_status(lambda: cli_main(argv, name="sagnn"))


#: LightningCLI options that the predict command does not take (a recipe's own ``predict`` does)
_LIGHTNING_OPTIONS = ("--config", "--ckpt_path", "--model.", "--data.", "--trainer.", "--predictions.")


def _predict(predict_main, args: list[str]) -> int:
    """The one predict command; LightningCLI's options get a one-line pointer to its flags instead."""
    from sagnn_lightning.errors import UsageError

    lightning = [a for a in args if a.startswith(_LIGHTNING_OPTIONS)]
    if lightning:
        raise UsageError(
            f"predict takes --ckpt, --input and --output, not LightningCLI options ({lightning[0].split('=')[0]}); "
            "e.g. --ckpt best --run-dir runs/<recipe> --input <file | folder | table | matbench_<task> --fold k> "
            "--output preds.csv (see --help)"
        )
    return predict_main(args)


if __name__ == "__main__":
    sys.exit(main())
