"""argparse for the package's own commands (``predict``, ``models``, ``attention-plots``): no abbreviated options,
and one ``error:`` line (with the nearest known option for a typo) instead of argparse's usage block."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import NoReturn

from sagnn_lightning.errors import UsageError


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` whose errors raise :class:`UsageError` (printed as
    one line by :func:`~sagnn_lightning.cli.errors.exit_status`); :meth:`parse_command` reports an unknown option
    first, with the nearest known one, before any "required" complaint."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

    def known_options(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def parse_command(self, argv: Sequence[str]) -> argparse.Namespace:
        known = self.known_options()
        for token in argv:
            if token == "--":
                break
            option = token.split("=", 1)[0]
            if option.startswith("-") and len(option) > 1 and not _is_number(option) and option not in known:
                near = difflib.get_close_matches(option, known, n=1)
                hint = f"; did you mean {near[0]}?" if near else ""
                raise UsageError(f"unknown option {option}{hint} (see {self.prog} --help)")
        return self.parse_args(list(argv))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = ["CommandParser"]
