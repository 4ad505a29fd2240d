"""Readers for crystal data on disk: matbench-layout JSON, CSV/JSON tables, CIF folders.

Every reader returns a :class:`Table`: sample ids, *raw* structure inputs (pymatgen
``Structure.as_dict()`` dicts, CIF text or ``Structure`` objects — parsed later by the graph
cache, which names the sample id on failure), targets ``[n, T]`` (float64) and target names.

Supported layouts
-----------------
* **matbench layout** (``*.json(.gz)``, pandas ``orient="split"``):
  ``{"index": [...], "columns": ["structure", <target>], "data": [[<Structure dict>, <target>], ...]}``.
  :func:`read_matbench_json` names row ``i`` ``mb-<task without matbench_>-<i+1 zero padded>``.
* **table** (``*.csv``, ``*.csv.gz``, ``*.json``, ``*.json.gz``): one row per crystal, a structure
  column holding CIF text or a structure dict (or its JSON text), an optional id column, target
  columns by name. JSON may be a list of records, a dict of columns or pandas ``orient="split"``.
* **CIF folder** (CGCNN convention): ``<folder>/id_prop.csv`` without a header, rows
  ``id,target[,target...]``, and one ``<folder>/<id>.cif`` per row.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from sagnn_lightning.data.graph import StructureError, check_structure
from sagnn_lightning.data.parsers import describe_cif_problem
from sagnn_lightning.data.tasks import MATBENCH_TASKS
from sagnn_lightning.errors import SAGNNError, UsageError

#: structure columns tried in this order when none is given
STRUCTURE_COLUMN_CANDIDATES: tuple[str, ...] = ("structure", "cif", "structure_dict", "atoms")
#: id columns tried in this order when none is given
ID_COLUMN_CANDIDATES: tuple[str, ...] = ("material_id", "mbid", "sample_id", "id", "name")
ID_PROP_FILE = "id_prop.csv"
CIF_SUFFIXES: tuple[str, ...] = (".cif",)

OnError = Literal["raise", "skip"]


class DataFormatError(SAGNNError, ValueError):
    """A data file that cannot be read as crystal data; the message names the file and the fix (exit status 1)."""


class InputNotFoundError(UsageError, FileNotFoundError):
    """A file or folder named by an option does not exist; the message names the option (exit status 2)."""


#: the options that choose a table column: DataModule (``--data.*``) / ``python -m sagnn_lightning predict``
COLUMN_FLAGS: dict[str, str] = {
    "target": "--data.target_columns=[<name>, ...]",
    "structure": "--data.structure_column=<name> (predict: --structure-column <name>)",
    "id": "--data.id_column=<name> (predict: --id-column <name>)",
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


# --------------------------------------------------------------------------- helpers


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def base_suffix(path: Path) -> str:
    """``data.csv.gz`` → ``.csv``; ``data.json`` → ``.json``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def fingerprint(path: str | Path, **extra: Any) -> str:
    """sha256 over the bytes of a data file (streamed) plus ``extra`` (e.g. column names).

    For a CIF folder: ``id_prop.csv`` and every ``*.cif`` (name + bytes, sorted by name).
    """
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            if f.name != ID_PROP_FILE and f.suffix.lower() not in CIF_SUFFIXES:
                continue
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _as_structure_input(value: Any) -> Any:
    """Normalise one table cell: JSON text of a dict → dict; CIF text / dict / Structure kept."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value
    return value


def parse_structure(value: Any, name: str = "structure") -> Structure:
    """Parse one raw input (``Structure``, dict, CIF text, JSON text of a dict) and check it.

    Raises:
        StructureError: unparsable, empty, disordered or zero-volume structure (message names ``name``).
    """
    value = _as_structure_input(value)
    try:
        if isinstance(value, Structure):
            structure = value
        elif isinstance(value, dict):
            structure = Structure.from_dict(value)
        elif isinstance(value, str):
            if not value.strip():
                raise ValueError("empty CIF text")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pymatgen warns on every odd CIF; errors are reported below
                structure = Structure.from_str(value, fmt="cif")
        else:
            raise TypeError(f"expected CIF text or a structure dict, got {type(value).__name__}")
    except StructureError:
        raise
    except Exception as err:  # pymatgen raises many types for bad CIFs
        problem = describe_cif_problem(value) if isinstance(value, str) else None
        raise StructureError(
            f"{name}: could not parse the structure: {problem or f'{type(err).__name__}: {err}'}. "
            "Fix or remove this entry (CIF text or a pymatgen Structure.as_dict() is expected)."
        ) from err
    check_structure(structure, name)
    return structure


def _check_columns(
    path: Path, columns: Sequence[str], wanted: Sequence[str], role: str, fix: str | None = None
) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        fix = fix if fix is not None else f"Choose the column with {COLUMN_FLAGS[role]}."
        raise DataFormatError(
            f"{path}: {role} column(s) {missing} not found; available columns: {list(columns)}. {fix}"
        )


def _pick_column(
    path: Path, columns: Sequence[str], given: str | None, candidates: Sequence[str], role: str, required: bool
) -> str | None:
    if given is not None:
        _check_columns(path, columns, [given], role)
        return given
    for c in candidates:
        if c in columns:
            return c
    if required:
        raise DataFormatError(
            f"{path}: no {role} column found (tried {list(candidates)}); available columns: "
            f"{list(columns)}. Choose it with {COLUMN_FLAGS[role]}."
        )
    return None


def _targets_array(path: Path, frame: pd.DataFrame, target_columns: Sequence[str]) -> np.ndarray:
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


def _check_unique(path: Path, ids: Sequence[str]) -> None:
    seen: set[str] = set()
    dups = []
    for i in ids:
        if i in seen:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DataFormatError(
            f"{path}: duplicate sample ids {dups[:5]} ({len(dups)} in all); ids must be unique "
            "(choose the id column with --data.id_column)."
        )


def _check_not_empty(path: Path, n: int) -> None:
    if n == 0:
        raise DataFormatError(f"{path}: the dataset is empty (no rows); add crystals or point to the right file.")


# --------------------------------------------------------------------------- matbench layout


def matbench_id_prefix(task: str) -> str:
    """``matbench_jdft2d`` → ``mb-jdft2d`` (matbench's MPContribs-style id prefix)."""
    return task.replace("matbench", "mb").replace("_", "-")


def matbench_ids(task: str, index: Sequence[int], n_samples: int) -> list[str]:
    """Ids ``mb-<task>-<i+1>``, zero padded to the digit count of ``n_samples`` (matbench's rule)."""
    # exactly matbench.data_ops.load's expression: math.log(1000, 10) < 3, so log10 would differ at powers of ten
    width = math.floor(math.log(n_samples, 10)) + 1  # noqa: FURB163
    prefix = matbench_id_prefix(task)
    return [f"{prefix}-{int(i) + 1:0{width}d}" for i in index]


def _read_split_json(path: Path) -> dict:
    try:
        with _open_text(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError, EOFError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not a readable JSON file ({err}); re-download or re-create it.") from err
    return doc


def read_matbench_json(
    path: str | Path, task: str, n_samples: int, target: str, input_column: str = "structure"
) -> Table:
    """Read a matbench-layout ``*.json(.gz)`` (pandas ``orient="split"``).

    Args:
        path: the file.
        task: matbench task name (``matbench_jdft2d``), used for the ids.
        n_samples: rows in the *full* task (sets the id zero padding).
        target: target column name.
        input_column: structure column (``"structure"`` for structure tasks).

    Returns:
        :class:`Table` with ids ``mb-...`` from the file's ``index``, Structure dicts, targets ``[n, 1]``.
    """
    path = Path(path)
    doc = _read_split_json(path)
    if not (isinstance(doc, dict) and {"index", "columns", "data"} <= set(doc)):
        raise DataFormatError(
            f"{path}: not in matbench layout (expected a JSON object with 'index', 'columns', 'data' — "
            "pandas orient='split'); use CrystalDataModule for other layouts."
        )
    columns = list(doc["columns"])
    fix = "Is this the file of another matbench task? Check --data.task / --data.data_file."
    _check_columns(path, columns, [input_column], "structure", fix)
    _check_columns(path, columns, [target], "target", fix)
    s_col, t_col = columns.index(input_column), columns.index(target)
    rows = doc["data"]
    _check_not_empty(path, len(rows))
    ids = matbench_ids(task, doc["index"], n_samples)
    _check_unique(path, ids)
    structures = [r[s_col] for r in rows]
    raw = pd.Series([r[t_col] for r in rows], dtype=object)
    targets = _targets_array(path, pd.DataFrame({target: raw}), [target])
    return Table(ids=ids, structures=structures, targets=targets, target_names=[target], source=path)


# --------------------------------------------------------------------------- tables


def _matbench_task_of(path: Path):
    """The matbench task a file is named after (``matbench_jdft2d.json.gz`` → its task), else ``None``."""
    for name in sorted(MATBENCH_TASKS, key=len, reverse=True):
        if path.name.startswith(name):
            return MATBENCH_TASKS[name]
    return None


def _default_ids(path: Path, frame: pd.DataFrame) -> list[str]:
    """Ids when no id column exists: matbench ids for a matbench-named file in orient='split'
    layout (its index is the official row number), else ``row-<index>``."""
    task = _matbench_task_of(path) if frame.attrs.get("orient") == "split" else None
    if task is not None:
        return matbench_ids(task.name, frame.index, task.n_samples)
    return [f"row-{i}" for i in frame.index]


def _read_frame(path: Path) -> pd.DataFrame:
    suffix = base_suffix(path)
    if suffix == ".csv":
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
            raise DataFormatError(f"{path}: not a readable CSV file ({err}).") from err
    if suffix == ".json":
        doc = _read_split_json(path)
        if isinstance(doc, dict) and {"index", "columns", "data"} <= set(doc):
            frame = pd.DataFrame(doc["data"], columns=doc["columns"], index=doc["index"])
            frame.attrs["orient"] = "split"
            return frame
        if isinstance(doc, list):
            return pd.DataFrame.from_records(doc)
        if isinstance(doc, dict) and all(isinstance(v, (list, dict)) for v in doc.values()):
            return pd.DataFrame(doc)
        raise DataFormatError(
            f"{path}: unsupported JSON layout; use a list of records, a dict of columns, or pandas orient='split'."
        )
    raise DataFormatError(
        f"{path}: unsupported file type {''.join(path.suffixes)!r}; use .csv, .json (optionally .gz) "
        f"or a folder of CIFs with {ID_PROP_FILE}."
    )


def read_table(
    path: str | Path,
    target_columns: Sequence[str] | None,
    id_column: str | None = None,
    structure_column: str | None = None,
) -> Table:
    """Read a CSV/JSON table with one crystal per row.

    Args:
        path: ``.csv``/``.json`` file, optionally gzipped.
        target_columns: target column names (required; the error lists the columns if missing).
        id_column: id column (default: first of :data:`ID_COLUMN_CANDIDATES` present, else ``row-<i>``).
        structure_column: column with CIF text or structure dicts (default: first of
            :data:`STRUCTURE_COLUMN_CANDIDATES` present).
    """
    path = Path(path)
    frame = _read_frame(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if not target_columns:
        raise DataFormatError(
            f"{path}: no target columns given; available columns: {columns}. Choose them with {COLUMN_FLAGS['target']}."
        )
    _check_columns(path, columns, target_columns, "target")
    s_col = _pick_column(path, columns, structure_column, STRUCTURE_COLUMN_CANDIDATES, "structure", True)
    i_col = _pick_column(path, columns, id_column, ID_COLUMN_CANDIDATES, "id", False)
    _check_not_empty(path, len(frame))
    ids = [str(v) for v in frame[i_col]] if i_col else _default_ids(path, frame)
    _check_unique(path, ids)
    structures = [_as_structure_input(v) for v in frame[s_col]]
    targets = _targets_array(path, frame, list(target_columns))
    return Table(
        ids=ids,
        structures=structures,
        targets=targets,
        target_names=list(target_columns),
        source=path,
        extra={"id_column": i_col, "structure_column": s_col},
    )


# --------------------------------------------------------------------------- CIF folders


def _read_id_prop(folder: Path) -> pd.DataFrame:
    id_prop = folder / ID_PROP_FILE
    if not id_prop.is_file():
        raise DataFormatError(
            f"{folder}: no {ID_PROP_FILE}; a CIF folder needs {ID_PROP_FILE} (no header, rows 'id,target[,...]') "
            "beside '<id>.cif' files (CGCNN convention)."
        )
    try:
        frame = pd.read_csv(id_prop, header=None, dtype={0: str})
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    return frame


def read_cif_folder(folder: str | Path, target_columns: Sequence[str] | None = None) -> Table:
    """Read a folder of CIFs + ``id_prop.csv`` (CGCNN: no header, ``id,target[,target...]``).

    Args:
        folder: the folder.
        target_columns: names for the target columns of ``id_prop.csv`` (default ``["target"]``
            for one column, ``["target_0", ...]`` for several).

    Returns:
        :class:`Table` whose structures are CIF texts read from ``<folder>/<id>.cif``.
    """
    folder = Path(folder)
    frame = _read_id_prop(folder)
    _check_not_empty(folder / ID_PROP_FILE, len(frame))
    n_targets = frame.shape[1] - 1
    if n_targets < 1:
        raise DataFormatError(f"{folder / ID_PROP_FILE}: rows need 'id,target'; found only one column.")
    if target_columns is None:
        target_columns = ["target"] if n_targets == 1 else [f"target_{k}" for k in range(n_targets)]
    if len(target_columns) != n_targets:
        raise DataFormatError(
            f"{folder / ID_PROP_FILE}: has {n_targets} target column(s) but target_columns={list(target_columns)}; "
            "give one name per column after the id (--data.target_columns=[<name>, ...])."
        )
    ids = [str(v).strip() for v in frame[0]]
    _check_unique(folder / ID_PROP_FILE, ids)
    missing = [i for i in ids if not (folder / f"{i}.cif").is_file()]
    if missing:
        raise DataFormatError(
            f"{folder}: {len(missing)} id(s) of {ID_PROP_FILE} have no CIF file, e.g. "
            f"{[str(folder / (m + '.cif')) for m in missing[:3]]}; add the files or remove the rows."
        )
    structures = [(folder / f"{i}.cif").read_text(encoding="utf-8", errors="replace") for i in ids]
    body = frame.iloc[:, 1:].copy()
    body.columns = list(target_columns)
    targets = _targets_array(folder / ID_PROP_FILE, body, list(target_columns))
    return Table(ids=ids, structures=structures, targets=targets, target_names=list(target_columns), source=folder)


def read_data(
    path: str | Path,
    target_columns: Sequence[str] | None = None,
    id_column: str | None = None,
    structure_column: str | None = None,
) -> Table:
    """Dispatch on the path: a folder → :func:`read_cif_folder`, else :func:`read_table`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(
            f"data file {path} does not exist; check --data.data_file (a CSV/JSON table, a "
            "folder of CIFs with id_prop.csv, or a bundled sample such as "
            "sample:mp_abx3_perovskites)."
        )
    if path.is_dir():
        return read_cif_folder(path, target_columns)
    return read_table(path, target_columns, id_column=id_column, structure_column=structure_column)


# --------------------------------------------------------------------------- prediction inputs


@dataclass
class StructureInputs:
    """Structures to predict on.

    Attributes:
        ids: ids of the structures that parsed (file stem, or the table's id column).
        structures: parsed, ordered ``Structure`` objects (same order as ``ids``).
        errors: ``(id or file, reason)`` for every input that could not be used.
    """

    ids: list[str]
    structures: list[Structure]
    errors: list[tuple[str, str]]


def _same(value: Any) -> Any:
    return value


def _cif_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CIF_SUFFIXES)


def read_structures(
    path: str | Path, on_error: OnError = "raise", structure_column: str | None = None, id_column: str | None = None
) -> StructureInputs:
    """Read structures for prediction (no targets needed).

    Args:
        path: a ``.cif`` file, a folder of ``*.cif`` files, a CSV/JSON table with a structure column
            (matbench layout included: ids ``mb-...`` when the file is named after its task), a JSON
            file holding one ``Structure.as_dict()``, or any file pymatgen reads (POSCAR, ``*.vasp``, ...).
        on_error: ``"raise"``: the first bad input raises :class:`StructureError` naming it;
            ``"skip"``: bad inputs are listed in ``errors`` and the rest is returned.
        structure_column, id_column: for tables (auto-detected as in :func:`read_table`).
    """
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(
            f"{path} does not exist; give --input a .cif file, a folder of CIFs or a CSV/JSON table."
        )

    items: list[tuple[str, Callable[[], Any]]] = []
    suffix = base_suffix(path)
    if path.is_dir():
        files = _cif_files(path)
        if not files:
            raise DataFormatError(
                f"{path}: no *.cif files in this folder; give --input a folder of CIFs, a "
                ".cif file or a CSV/JSON table."
            )
        items = [(str(f), partial(f.read_text, encoding="utf-8", errors="replace")) for f in files]
        names = [f.stem for f in files]
    elif path.suffix.lower() in CIF_SUFFIXES:
        items = [(str(path), lambda: path.read_text(encoding="utf-8", errors="replace"))]
        names = [path.stem]
    elif suffix in (".csv", ".json"):
        doc = _read_split_json(path) if suffix == ".json" else None
        if isinstance(doc, dict) and {"lattice", "sites"} <= set(doc):  # one Structure.as_dict()
            items, names = [(str(path), lambda: doc)], [path.name.split(".")[0]]
        else:
            frame = _read_frame(path)
            columns = [str(c) for c in frame.columns]
            frame.columns = columns
            _check_not_empty(path, len(frame))
            s_col = _pick_column(path, columns, structure_column, STRUCTURE_COLUMN_CANDIDATES, "structure", True)
            i_col = _pick_column(path, columns, id_column, ID_COLUMN_CANDIDATES, "id", False)
            names = [str(v) for v in frame[i_col]] if i_col else _default_ids(path, frame)
            items = [(n, partial(_same, v)) for n, v in zip(names, frame[s_col])]
    else:  # POSCAR, *.vasp, *.xsf, ...: whatever pymatgen reads

        def load_any() -> Structure:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return Structure.from_file(path)
            except Exception as err:
                raise StructureError(
                    f"{path}: could not read a structure ({type(err).__name__}: {err}); "
                    "use a .cif, a pymatgen-readable file, a folder of CIFs or a CSV/JSON table."
                ) from err

        items, names = [(str(path), load_any)], [path.name]

    ids, structures, errors = [], [], []
    for name, (label, load) in zip(names, items):
        try:
            structures.append(parse_structure(load(), name=label))
            ids.append(name)
        except StructureError as err:
            if on_error == "raise":
                raise
            errors.append((label, str(err)))
    return StructureInputs(ids=ids, structures=structures, errors=errors)
