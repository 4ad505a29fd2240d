"""``python -m sagnn_lightning``: the CLI.

* ``python -m sagnn_lightning predict --ckpt C --input I --output O``: predictions on files → CSV
  (:mod:`sagnn_lightning.lit.predict`);
* anything else (``fit``/``validate``/``test``/``predict --config ... --ckpt_path ...``) goes to the
  LightningCLI (:func:`sagnn_lightning.cli.cli_main`).
"""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["predict"] and any(a == "--input" or a.startswith("--input=") for a in argv[1:]):
        from sagnn_lightning.lit.predict import predict_main

        return predict_main(argv[1:])
    from sagnn_lightning.cli import cli_main

    cli_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
