"""The table every reader returns, the errors of data files, and the checks the readers share.

A :class:`Table` holds sample ids, *raw* structure inputs (pymatgen ``Structure.as_dict()`` dicts, CIF text or
``Structure`` objects — parsed later by the graph cache, which names the sample id on failure), targets
``[n, T]`` (float64) and target names. Readers: :mod:`sagnn_lightning.data.readers` (tables, CIF folders,
prediction inputs) and :mod:`sagnn_lightning.data.matbench_format` (matbench's layout and ids).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sagnn_lightning.errors import SAGNNError, UsageError, param

ID_PROP_FILE = "id_prop.csv"
CIF_SUFFIXES: tuple[str, ...] = (".cif",)

OnError = Literal["raise", "skip"]


class DataFormatError(SAGNNError, ValueError):
    """A data file that cannot be read as crystal data; the message names the file and the fix (exit status 1)."""


class InputNotFoundError(UsageError, FileNotFoundError):
    """A file or folder named by an option does not exist; the message names the option (exit status 2)."""


#: the options that choose a table column: DataModule (``--data.*``) / ``python -m sagnn_lightning predict``
COLUMN_FLAGS: dict[str, str] = {
    "target": f"{param('data.target_columns')}=[<name>, ...]",
    "structure": f"{param('data.structure_column')}=<name>",
    "id": f"{param('data.id_column')}=<name>",
    "composition": f"{param('data.composition_column')}=<name>",
}


@dataclass
class Table:
    """Rows of crystal data read from one source.

    Attributes:
        ids: ``n`` unique sample ids (str).
        structures: ``n`` raw structure inputs (Structure dict, CIF text or ``Structure``), or ``None``
            when only ids/targets were loaded (from a DataModule's row index).
        targets: ``[n, T]`` float64 array (NaN allowed here; DataModules check it).
        target_names: ``T`` column names.
        source: the file or folder read.
    """

    ids: list[str]
    structures: list[Any] | None
    targets: np.ndarray
    target_names: list[str]
    source: Path
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray | Sequence[int]) -> Table:
        rows = np.asarray(rows, dtype=np.int64)
        return Table(
            ids=[self.ids[r] for r in rows],
            structures=None if self.structures is None else [self.structures[r] for r in rows],
            targets=self.targets[rows],
            target_names=list(self.target_names),
            source=self.source,
            extra=dict(self.extra),
        )


def open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def base_suffix(path: Path) -> str:
    """``data.csv.gz`` → ``.csv``; ``data.json`` → ``.json``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def read_split_json(path: Path) -> dict:
    try:
        with open_text(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError, EOFError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not a readable JSON file ({err}); re-download or re-create it.") from err
    return doc


def check_columns(path: Path, columns: Sequence[str], wanted: Sequence[str], role: str, fix: str | None = None) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        fix = fix if fix is not None else f"Choose the column with {COLUMN_FLAGS[role]}."
        raise DataFormatError(
            f"{path}: {role} column(s) {missing} not found; available columns: {list(columns)}. {fix}"
        )


def targets_array(path: Path, frame: pd.DataFrame, target_columns: Sequence[str]) -> np.ndarray:
    out = np.empty((len(frame), len(target_columns)), dtype=np.float64)
    for k, col in enumerate(target_columns):
        values = frame[col]
        if values.dtype == bool or values.dtype == object and values.map(lambda v: isinstance(v, bool)).all():
            values = values.astype(float)
        try:
            out[:, k] = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as err:
            bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
            raise DataFormatError(
                f"{path}: target column {col!r} is not numeric (row {row}: {values.iloc[row]!r}); "
                "targets must be numbers (or booleans for classification)."
            ) from err
    return out


def check_unique(path: Path, ids: Sequence[str]) -> None:
    seen: set[str] = set()
    dups = []
    for i in ids:
        if i in seen:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DataFormatError(
            f"{path}: duplicate sample ids {dups[:5]} ({len(dups)} in all); ids must be unique "
            f"(choose the id column with {param('data.id_column')})."
        )


def check_not_empty(path: Path, n: int) -> None:
    if n == 0:
        raise DataFormatError(f"{path}: the dataset is empty (no rows); add crystals or point to the right file.")


__all__ = ["DataFormatError", "InputNotFoundError", "Table"]
