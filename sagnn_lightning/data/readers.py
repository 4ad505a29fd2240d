"""Readers for crystal data on disk: CSV/JSON tables, CIF folders, and the inputs of ``predict``.

Each training reader returns a :class:`~sagnn_lightning.data.table.Table`; :func:`read_structures` returns
parsed structures for prediction. Layouts:

* **table** (``*.csv``, ``*.csv.gz``, ``*.json``, ``*.json.gz``): one row per crystal, a structure
  column holding CIF text or a structure dict (or its JSON text), an optional id column, target
  columns by name. JSON may be a list of records, a dict of columns or pandas ``orient="split"``.
* **CIF folder** (CGCNN convention): ``<folder>/id_prop.csv`` without a header, rows
  ``id,target[,target...]``, and one ``<folder>/<id>.cif`` per row.

Without an id column the rows are named ``row-<index>``; a caller that knows better ids for a file (matbench's,
:func:`~sagnn_lightning.data.matbench_format.matbench_default_ids`) passes ``default_ids``.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.core import Structure

from sagnn_lightning.data.graph import StructureError, check_structure
from sagnn_lightning.data.parsers import describe_cif_problem
from sagnn_lightning.data.table import (
    CIF_SUFFIXES,
    COLUMN_FLAGS,
    ID_PROP_FILE,
    DataFormatError,
    InputNotFoundError,
    OnError,
    Table,
    base_suffix,
    check_columns,
    check_not_empty,
    check_unique,
    open_text,
    read_split_json,
    targets_array,
)
from sagnn_lightning.errors import UsageError, param, raw_message

#: structure columns tried in this order when none is given
STRUCTURE_COLUMN_CANDIDATES: tuple[str, ...] = ("structure", "cif", "structure_dict", "atoms")
#: formula columns tried in this order when none is given (composition tables)
COMPOSITION_COLUMN_CANDIDATES: tuple[str, ...] = ("composition", "formula", "pretty_formula", "reduced_formula")
#: id columns tried in this order when none is given
ID_COLUMN_CANDIDATES: tuple[str, ...] = ("material_id", "mbid", "sample_id", "id", "name")

#: ``(file, frame) -> ids`` for a table without an id column
DefaultIds = Callable[[Path, pd.DataFrame], list[str]]


def row_ids(path: Path, frame: pd.DataFrame) -> list[str]:
    """``row-<index>``: the ids of a table without an id column (unless the caller passes ``default_ids``)."""
    return [f"row-{i}" for i in frame.index]


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


def _pick_column(
    path: Path, columns: Sequence[str], given: str | None, candidates: Sequence[str], role: str, required: bool
) -> str | None:
    if given is not None:
        check_columns(path, columns, [given], role)
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


def _input_column_and_ids(
    path: Path,
    frame: pd.DataFrame,
    input_column: str | None,
    candidates: Sequence[str],
    role: str,
    id_column: str | None,
    default_ids: DefaultIds | None,
) -> tuple[str, str | None, list[str]]:
    """``(input column, id column or None, row ids)``: the structures' or formulas' column (``input_column``, else
    the first of ``candidates``), the id column (``id_column``, else the first of :data:`ID_COLUMN_CANDIDATES`)
    and the ids (that column, else ``default_ids``/:func:`row_ids`); errors list the columns and the flag."""
    columns = list(frame.columns)
    s_col = _pick_column(path, columns, input_column, candidates, role, True)
    i_col = _pick_column(path, columns, id_column, ID_COLUMN_CANDIDATES, "id", False)
    ids = [str(v) for v in frame[i_col]] if i_col else (default_ids or row_ids)(path, frame)
    return str(s_col), i_col, ids


def _formula_cells(values: pd.Series) -> list[str]:
    """Formula cells as text; a missing cell (NaN) becomes "" and is reported, by row, by the graph builder."""
    return ["" if pd.isna(v) else str(v) for v in values]


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
        doc = read_split_json(path)
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
    default_ids: DefaultIds | None = None,
    input_type: str = "structure",
) -> Table:
    """Read a CSV/JSON table with one crystal (or, with ``input_type="composition"``, one formula) per row.

    Args:
        path: ``.csv``/``.json`` file, optionally gzipped.
        target_columns: target column names (required; the error lists the columns if missing).
        id_column: id column (default: first of :data:`ID_COLUMN_CANDIDATES` present, else ``row-<i>``).
        structure_column: column with CIF text or structure dicts (default: first of
            :data:`STRUCTURE_COLUMN_CANDIDATES` present).
        default_ids: ids when there is no id column (default :func:`row_ids`).
        input_type: ``"structure"`` (default) or ``"composition"``: ``structure_column`` then names the formula
            column (default: first of :data:`COMPOSITION_COLUMN_CANDIDATES` present); formulas are parsed later,
            by the graph cache, which names the row on failure.
    """
    path = Path(path)
    frame = _read_frame(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if not target_columns:
        raise DataFormatError(
            f"{path}: no target columns given; available columns: {columns}. Choose them with {COLUMN_FLAGS['target']}."
        )
    check_columns(path, columns, target_columns, "target")
    composition = input_type == "composition"
    s_col, i_col, ids = _input_column_and_ids(
        path,
        frame,
        structure_column,
        COMPOSITION_COLUMN_CANDIDATES if composition else STRUCTURE_COLUMN_CANDIDATES,
        "composition" if composition else "structure",
        id_column,
        default_ids,
    )
    check_not_empty(path, len(frame))
    check_unique(path, ids)
    structures = _formula_cells(frame[s_col]) if composition else [_as_structure_input(v) for v in frame[s_col]]
    targets = targets_array(path, frame, list(target_columns))
    return Table(
        ids=ids,
        structures=structures,
        targets=targets,
        target_names=list(target_columns),
        source=path,
        extra={"id_column": i_col, "structure_column": s_col},
    )


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
    check_not_empty(folder / ID_PROP_FILE, len(frame))
    n_targets = frame.shape[1] - 1
    if n_targets < 1:
        raise DataFormatError(f"{folder / ID_PROP_FILE}: rows need 'id,target'; found only one column.")
    if target_columns is None:
        target_columns = ["target"] if n_targets == 1 else [f"target_{k}" for k in range(n_targets)]
    if len(target_columns) != n_targets:
        raise DataFormatError(
            f"{folder / ID_PROP_FILE}: has {n_targets} target column(s) but target_columns={list(target_columns)}; "
            f"give one name per column after the id ({param('data.target_columns')}=[<name>, ...])."
        )
    ids = [str(v).strip() for v in frame[0]]
    check_unique(folder / ID_PROP_FILE, ids)
    missing = [i for i in ids if not (folder / f"{i}.cif").is_file()]
    if missing:
        raise DataFormatError(
            f"{folder}: {len(missing)} id(s) of {ID_PROP_FILE} have no CIF file, e.g. "
            f"{[str(folder / (m + '.cif')) for m in missing[:3]]}; add the files or remove the rows."
        )
    structures = [(folder / f"{i}.cif").read_text(encoding="utf-8", errors="replace") for i in ids]
    body = frame.iloc[:, 1:].copy()
    body.columns = list(target_columns)
    targets = targets_array(folder / ID_PROP_FILE, body, list(target_columns))
    return Table(ids=ids, structures=structures, targets=targets, target_names=list(target_columns), source=folder)


def read_data(
    path: str | Path,
    target_columns: Sequence[str] | None = None,
    id_column: str | None = None,
    structure_column: str | None = None,
    default_ids: DefaultIds | None = None,
    input_type: str = "structure",
) -> Table:
    """Dispatch on the path: a folder → :func:`read_cif_folder`, else :func:`read_table` (``default_ids``: ids
    of a table without an id column; ``input_type``: ``"structure"`` or ``"composition"``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(
            f"data file {path} does not exist; check {param('data.data_file')} (a CSV/JSON table, a "
            "folder of CIFs with id_prop.csv, or a bundled sample such as "
            "sample:mp_abx3_perovskites)."
        )
    if path.is_dir() and input_type == "structure":
        return read_cif_folder(path, target_columns)
    if path.is_dir():
        raise DataFormatError(
            f"{path}: a folder; compositions are read from a CSV/JSON table ({param('data.data_file')})."
        )
    return read_table(
        path,
        target_columns,
        id_column=id_column,
        structure_column=structure_column,
        default_ids=default_ids,
        input_type=input_type,
    )


@dataclass
class RawInputs:
    """Raw structure inputs to predict on (not parsed yet).

    Attributes:
        ids: one id per input (file stem, or the table's id column).
        items: the raw inputs (CIF text, ``Structure.as_dict()``, or a ``Structure`` for other file types).
        labels: what error messages name each input by (the file, or the id for table rows).
        errors: ``(file, reason)`` for every file that could not be read at all.
    """

    ids: list[str]
    items: list[Any]
    labels: list[str]
    errors: list[tuple[str, str]]


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


#: rows read at a time from a CSV table by :func:`iter_inputs`
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class InputItem:
    """One input of ``predict``, unparsed.

    Attributes:
        id: the output id (file stem, or the table's id column).
        label: what error messages name the input by (the file, or the id for table rows).
        item: the raw input (CIF text, ``Structure.as_dict()``, a ``Structure``, or a formula), ``None`` when the
            file could not be read at all.
        error: why the file could not be read (then ``item`` is ``None``).
    """

    id: str
    label: str
    item: Any = None
    error: str | None = None


def _table_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A CSV in chunks of ``chunk_rows`` rows (index continuing across chunks), a JSON table whole."""
    if base_suffix(path) != ".csv":
        yield _read_frame(path)
        return
    try:
        with pd.read_csv(path, chunksize=chunk_rows) as reader:
            yield from reader
    except pd.errors.EmptyDataError:
        return
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataFormatError(f"{path}: not a readable CSV file ({err}).") from err


def _table_items(
    path: Path,
    input_column: str | None,
    candidates: Sequence[str],
    role: str,
    id_column: str | None,
    default_ids: DefaultIds | None,
    chunk_rows: int,
) -> Iterator[InputItem]:
    rows = 0
    for frame in _table_chunks(path, chunk_rows):
        frame.columns = [str(c) for c in frame.columns]
        if len(frame) == 0:
            continue
        s_col, _, ids = _input_column_and_ids(path, frame, input_column, candidates, role, id_column, default_ids)
        values = _formula_cells(frame[s_col]) if role == "composition" else map(_as_structure_input, frame[s_col])
        rows += len(frame)
        yield from (InputItem(i, i, v) for i, v in zip(ids, values))
    check_not_empty(path, rows)


def _file_item(name: str, label: str, load: Callable[[], Any]) -> InputItem:
    try:
        return InputItem(name, label, _as_structure_input(load()))
    except StructureError as err:  # a file pymatgen cannot read at all
        return InputItem(name, label, None, raw_message(err))


def iter_inputs(
    path: str | Path,
    input_type: str = "structure",
    input_column: str | None = None,
    id_column: str | None = None,
    default_ids: DefaultIds | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[InputItem]:
    """The inputs of ``predict``, one at a time, unparsed: what
    :func:`~sagnn_lightning.data.inputs.item_to_graph_arrays` turns into graphs, as the graph cache does for
    training. Memory stays flat in the input's size: a CSV is read ``chunk_rows`` rows at a time, a folder one
    file at a time (a JSON table is read whole: JSON has no streaming layout here).

    Args:
        path: structures (``input_type="structure"``): a ``.cif`` file, a folder of ``*.cif`` files, a CSV/JSON
            table with a structure column (matbench layout included), a JSON file holding one
            ``Structure.as_dict()``, or any file pymatgen reads (POSCAR, ``*.vasp``, ...). Formulas
            (``input_type="composition"``): a CSV/JSON table with a formula column.
        input_type: ``"structure"`` or ``"composition"``.
        input_column: for tables: the structure (or formula) column (default: the first of
            :data:`STRUCTURE_COLUMN_CANDIDATES` / :data:`COMPOSITION_COLUMN_CANDIDATES`).
        id_column: for tables: the id column (auto-detected as in :func:`read_table`).
        default_ids: ids of a table without an id column (default :func:`row_ids`; ``predict`` passes
            matbench's rule, :func:`~sagnn_lightning.data.matbench_format.matbench_default_ids`).
        chunk_rows: rows per chunk of a CSV table.

    Raises:
        InputNotFoundError: ``path`` does not exist. DataFormatError: not a readable table, no structure (formula)
            column, an empty table or folder. A file that cannot be read as a structure is yielded with its
            ``error``, never raised.
    """
    path = Path(path).expanduser()
    composition = input_type == "composition"
    if not path.exists():
        what = (
            "a CSV/JSON table with a formula column"
            if composition
            else "a .cif file, a folder of CIFs or a CSV/JSON table"
        )
        raise InputNotFoundError(f"{path} does not exist; give {param('input')} {what}.")
    suffix = base_suffix(path)
    if composition:
        if path.is_dir() or suffix not in (".csv", ".json"):
            raise DataFormatError(
                f"{path}: a composition model predicts from a CSV/JSON table with a formula column "
                f"(one of {list(COMPOSITION_COLUMN_CANDIDATES)}, or {param('composition_column')}=<name>), not from "
                "structures."
            )
        yield from _table_items(
            path, input_column, COMPOSITION_COLUMN_CANDIDATES, "composition", id_column, default_ids, chunk_rows
        )
        return
    if path.is_dir():
        files = _cif_files(path)
        if not files:
            raise DataFormatError(
                f"{path}: no *.cif files in this folder; give {param('input')} a folder of CIFs, a "
                ".cif file or a CSV/JSON table."
            )
        for f in files:
            yield _file_item(f.stem, str(f), partial(f.read_text, encoding="utf-8", errors="replace"))
    elif path.suffix.lower() in CIF_SUFFIXES:
        yield _file_item(path.stem, str(path), partial(path.read_text, encoding="utf-8", errors="replace"))
    elif suffix in (".csv", ".json"):
        doc = read_split_json(path) if suffix == ".json" else None
        if isinstance(doc, dict) and {"lattice", "sites"} <= set(doc):  # one Structure.as_dict()
            yield _file_item(path.name.split(".")[0], str(path), partial(_same, doc))
        else:
            yield from _table_items(
                path, input_column, STRUCTURE_COLUMN_CANDIDATES, "structure", id_column, default_ids, chunk_rows
            )
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

        yield _file_item(path.name, str(path), load_any)


def count_inputs(path: str | Path) -> int | None:
    """How many inputs :func:`iter_inputs` will yield for ``path``, when a cheap pass tells (folders, single files,
    CSV rows; a CSV is scanned once with the ``csv`` module); ``None`` otherwise (for a progress bar's ETA)."""
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            return len(_cif_files(path))
        if base_suffix(path) == ".csv":
            with open_text(path) as fh:
                return max(sum(1 for _ in csv.reader(fh)) - 1, 0)
        if path.is_file() and base_suffix(path) != ".json":
            return 1
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _collect(items: Iterable[InputItem]) -> RawInputs:
    raw = RawInputs(ids=[], items=[], labels=[], errors=[])
    for entry in items:
        if entry.error is not None:
            raw.errors.append((entry.label, entry.error))
            continue
        raw.ids.append(entry.id)
        raw.items.append(entry.item)
        raw.labels.append(entry.label)
    return raw


def read_formulas(
    path: str | Path,
    composition_column: str | None = None,
    id_column: str | None = None,
    default_ids: DefaultIds | None = None,
) -> RawInputs:
    """Read the formulas of ``predict`` for a composition model (no targets needed), unparsed, all at once
    (:func:`iter_inputs` streams them).

    Args:
        path: a CSV/JSON table (matbench layout included) with a formula column.
        composition_column: the formula column (default: the first of :data:`COMPOSITION_COLUMN_CANDIDATES`).
        id_column: the id column (auto-detected as in :func:`read_table`).
        default_ids: ids of a table without an id column (default :func:`row_ids`).
    """
    return _collect(iter_inputs(path, "composition", composition_column, id_column, default_ids))


def read_inputs(
    path: str | Path,
    structure_column: str | None = None,
    id_column: str | None = None,
    default_ids: DefaultIds | None = None,
) -> RawInputs:
    """Read the raw structure inputs of ``predict`` (no targets needed), unparsed, all at once (:func:`iter_inputs`
    streams them; the arguments are the same).
    """
    return _collect(iter_inputs(path, "structure", structure_column, id_column, default_ids))


def read_structures(
    path: str | Path,
    on_error: OnError = "raise",
    structure_column: str | None = None,
    id_column: str | None = None,
    default_ids: DefaultIds | None = None,
) -> StructureInputs:
    """:func:`read_inputs`, each input parsed and checked with :func:`parse_structure`.

    Args:
        path: as in :func:`read_inputs`.
        structure_column: as in :func:`read_inputs`.
        id_column: as in :func:`read_inputs`.
        default_ids: as in :func:`read_inputs`.
        on_error: ``"raise"``: the first bad input raises :class:`StructureError` naming it;
            ``"skip"``: bad inputs are listed in ``errors`` and the rest is returned.
    """
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    raw = read_inputs(path, structure_column=structure_column, id_column=id_column, default_ids=default_ids)
    if raw.errors and on_error == "raise":
        raise StructureError(raw.errors[0][1])
    ids, structures, errors = [], [], list(raw.errors)
    for name, label, value in zip(raw.ids, raw.labels, raw.items):
        try:
            structures.append(parse_structure(value, name=label))
            ids.append(name)
        except StructureError as err:
            if on_error == "raise":
                raise
            errors.append((label, str(err)))
    return StructureInputs(ids=ids, structures=structures, errors=errors)
