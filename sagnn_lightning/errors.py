"""User-facing errors: the exceptions whose message is all a user needs to see.

The command-line entry points (recipes, ``python -m sagnn_lightning``, the ``sagnn`` script) print
``error: <message>`` for these, with no traceback, and exit with :attr:`SAGNNError.exit_code`
(``SAGNN_DEBUG=1`` shows the traceback). A message names the item (file, row, material id,
checkpoint) and the **CLI flag** that fixes it, e.g. ``--data.data_file``.
"""

from __future__ import annotations


class SAGNNError(Exception):
    """A problem with the user's data, files or environment (exit status 1)."""

    exit_code: int = 1


class UsageError(SAGNNError, ValueError):
    """A bad option value or combination of options (exit status 2, like argparse)."""

    exit_code = 2


__all__ = ["SAGNNError", "UsageError"]
