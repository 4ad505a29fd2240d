"""User-facing errors: the exceptions whose message is all a user needs to see.

The command-line entry points (recipes, ``python -m sagnn_lightning``, the ``sagnn`` script) print
``error: <message>`` for these, with no traceback, and exit with :attr:`SAGNNError.exit_code`
(``SAGNN_DEBUG=1`` shows the traceback). A message names the item (file, row, material id, checkpoint) and the
**parameter** that fixes it, in the caller's terms: library code writes :func:`param` ``("data.data_file")`` where
the parameter goes; ``str(error)`` shows it as a Python caller passes it (``data_file``), and a command line
shows its own flag (:meth:`SAGNNError.render`: ``--data.data_file`` in the LightningCLI, ``--data-home`` in
``predict``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

#: marks a parameter name inside a message (a control character that no file name or formula contains)
_MARK = "\x1f"
_PARAM = re.compile(f"{_MARK}([^{_MARK}]+){_MARK}")


def param(qualified: str) -> str:
    """Placeholder for a parameter in an error message.

    ``qualified`` is ``"<owner>.<name>"`` as the LightningCLI nests it (``"model.init_from"``, ``"data.cutoff"``)
    or a bare name (``"ckpt"``). A Python caller reads the bare name (``init_from``); each command line maps it
    to its flag (:meth:`SAGNNError.render`).
    """
    return f"{_MARK}{qualified}{_MARK}"


def python_name(qualified: str) -> str:
    """``"model.init_from"`` → ``"init_from"``: how a Python caller passes the parameter."""
    return qualified.rsplit(".", 1)[-1]


def lightning_flag(qualified: str) -> str:
    """``"model.init_from"`` → ``"--model.init_from"``: the LightningCLI's flag of a parameter."""
    return f"--{qualified}"


def flag_parameter(arg: str) -> str | None:
    """The inverse of :func:`lightning_flag` for one command-line token: ``"--model.model.init_args.attention=each"``
    → ``"model.model.attention"`` (``init_args`` levels dropped, so both spellings of a flag agree); ``None`` for a
    value or a ``--config`` file."""
    if not arg.startswith("--") or arg.startswith("--config"):
        return None
    return ".".join(part for part in arg[2:].split("=", 1)[0].split(".") if part != "init_args")


def render_params(text: str, flag: Callable[[str], str] | Mapping[str, str] = python_name) -> str:
    """``text`` with each :func:`param` placeholder replaced by ``flag(qualified)`` (or ``flag[qualified]``,
    falling back to the Python name for parameters the mapping does not list)."""
    if isinstance(flag, Mapping):
        table = flag
        return _PARAM.sub(lambda m: table.get(m[1], python_name(m[1])), text)
    return _PARAM.sub(lambda m: flag(m[1]), text)


def raw_message(err: BaseException) -> str:
    """``err``'s message with its :func:`param` placeholders kept (to wrap it in another error or report it later,
    rendered for whoever reads it then); ``str(err)`` for other exceptions."""
    if isinstance(err, SAGNNError) and err.args and isinstance(err.args[0], str):
        return err.args[0]
    return str(err)


class SAGNNError(Exception):
    """A problem with the user's data, files or environment (exit status 1).

    ``str(error)`` names parameters as a Python caller passes them; :meth:`render` as a command line does.
    """

    exit_code: int = 1

    def __str__(self) -> str:
        return render_params(super().__str__())

    def render(self, flag: Callable[[str], str] | Mapping[str, str] = python_name) -> str:
        """The message with its parameters named by ``flag`` (see :func:`render_params`)."""
        return render_params(super().__str__(), flag)


class UsageError(SAGNNError, ValueError):
    """A bad option value or combination of options (exit status 2, like argparse)."""

    exit_code = 2


__all__ = [
    "SAGNNError",
    "UsageError",
    "flag_parameter",
    "lightning_flag",
    "param",
    "python_name",
    "raw_message",
    "render_params",
]
