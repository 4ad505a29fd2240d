"""``python -m sagnn_lightning`` and the ``sagnn`` console script: the CLI.

* ``predict --ckpt C --input I --output O``: the one predict command, on files, folders, tables or a
  matbench task's official split → CSV (:mod:`sagnn_lightning.lit.predict`; ``--ckpt best --run-dir
  runs/<recipe>`` picks the best checkpoint of the latest run in that folder; ``--model NAME`` a pretrained model);
* ``models [NAME ...]``: the pretrained models shipped with the package, one line each, or their full cards
  (:mod:`sagnn_lightning.pretrained`);
* ``attention-plots DIR``: heatmaps and the element-pair map of an attention export (``predict --attention DIR``;
  :mod:`sagnn_lightning.lit.attention_plots`);
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

    if argv[:1] == ["models"]:
        from sagnn_lightning.lit.pretrained import models_main

        return exit_status(lambda: models_main(argv[1:]))
    if argv[:1] == ["attention-plots"]:
        from sagnn_lightning.lit.attention_plots import attention_plots_main

        return exit_status(lambda: attention_plots_main(argv[1:]))
    if argv[:1] == ["predict"]:
        from sagnn_lightning.lit.predict import predict_main

        return exit_status(lambda: predict_main(argv[1:]))
    return exit_status(lambda: cli_main(argv, name="sagnn"))


if __name__ == "__main__":
    sys.exit(main())
