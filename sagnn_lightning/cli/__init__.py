"""The command line: the LightningCLI of the recipes (:mod:`~sagnn_lightning.cli.lightning`), the package's own
commands (``predict``, ``models``), the checks made before a run, and the mapping of user errors to one line that
names the flag (:mod:`~sagnn_lightning.cli.errors`)."""

from sagnn_lightning.cli.errors import exit_status, user_error
from sagnn_lightning.cli.lightning import (
    SAGNNLightningCLI,
    build_argv,
    cli_main,
    quiet_upstream_warnings,
    recipe_main,
)

__all__ = [
    "SAGNNLightningCLI",
    "build_argv",
    "cli_main",
    "exit_status",
    "quiet_upstream_warnings",
    "recipe_main",
    "user_error",
]
