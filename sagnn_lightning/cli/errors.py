"""User errors on the command line: which exceptions are the user's (one ``error: ...`` line, no traceback) and
which are bugs (the traceback), and the parameters' names in the command line's terms (its flags)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities.exceptions import MisconfigurationException

from sagnn_lightning.errors import SAGNNError, UsageError, lightning_flag

#: how a command line names a library parameter (see :meth:`sagnn_lightning.errors.SAGNNError.render`)
FlagNames = Callable[[str], str] | Mapping[str, str]

#: the package's source folder: a ``ValueError`` raised in it is a validation message, not a bug
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception it was raised from or during (``__cause__``/``__context__``), outer first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


def _raised_in_package(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` in this package's code (its innermost frame is ours)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def instantiation_error(err: BaseException) -> SAGNNError | None:
    """The user error behind an exception raised while the CLI builds the objects, or ``None`` (a bug).

    jsonargparse reports a constructor's exception wrapped in a type-union error; the constructor's own
    exception is in the chain. A :class:`SAGNNError` there is returned as is; a ``ValueError`` raised by this
    package's validation code, or Lightning's ``MisconfigurationException`` (Trainer options), become a
    :class:`UsageError` with the same message.
    """
    chain = _chain(err)
    for item in chain:
        if isinstance(item, SAGNNError):
            return item
    for item in chain:
        if isinstance(item, MisconfigurationException) or (type(item) is ValueError and _raised_in_package(item)):
            usage = UsageError(str(item))
            usage.__cause__ = err
            return usage
    return None


def user_error(err: BaseException) -> SAGNNError | None:
    """The message-only error behind ``err`` (a :class:`SAGNNError` in its chain, or an ``OSError`` on a named
    path such as an unwritable folder), or ``None`` when ``err`` is a bug that needs its traceback."""
    chain = _chain(err)
    for item in chain:
        if isinstance(item, SAGNNError):
            return item
    if isinstance(err, OSError) and err.filename:
        return SAGNNError(f"{err.filename}: {err.strerror or err}")
    return None


def process_rank() -> int:
    """This process's global rank in a multi-process run (0 without one): Lightning's, else the launcher's
    environment (``RANK``, ``LOCAL_RANK`` on one node)."""
    from pytorch_lightning.utilities import rank_zero_only

    rank = getattr(rank_zero_only, "rank", None)
    if rank is not None:
        return int(rank)
    for key in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def exit_status(func: Callable[[], Any], flags: FlagNames = lightning_flag) -> int:
    """Call ``func()`` the way a command-line entry point does; returns the exit status.

    An int result is the status, anything else means 0. A user error (:func:`user_error`) prints one line
    ``error: <message>`` on stderr, its parameters named as ``flags`` says (the LightningCLI's ``--data.x`` by
    default), once per run: by the process of rank 0 only in a multi-process run. It gives its
    :attr:`~SAGNNError.exit_code` (1, or 2 for bad options); with ``SAGNN_DEBUG=1`` the traceback is printed too.
    Any other exception propagates with its traceback.
    """
    try:
        result = func()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        user = user_error(err)
        if user is None:
            raise
        if process_rank() == 0:
            if os.environ.get("SAGNN_DEBUG", "").strip() not in ("", "0"):
                traceback.print_exception(err)
            sys.stdout.flush()
            print(f"error: {user.render(flags)}", file=sys.stderr, flush=True)
        return user.exit_code
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


__all__ = ["FlagNames", "exit_status", "instantiation_error", "process_rank", "user_error"]
