"""matbench's file layout and sample ids, for the readers that meet matbench files.

* **matbench layout** (``*.json(.gz)``, pandas ``orient="split"``):
  ``{"index": [...], "columns": ["structure", <target>], "data": [[<Structure dict>, <target>], ...]}``.
  :func:`read_matbench_json` names row ``i`` ``mb-<task without matbench_>-<i+1 zero padded>``.
* :func:`matbench_default_ids` gives the generic readers (:mod:`sagnn_lightning.data.readers`) those ids for a
  table file named after a task, so that they need not know matbench themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sagnn_lightning.data.readers import row_ids
from sagnn_lightning.data.table import (
    DataFormatError,
    Table,
    check_columns,
    check_not_empty,
    check_unique,
    read_split_json,
    targets_array,
)
from sagnn_lightning.data.tasks import ALL_MATBENCH_TASKS, MatbenchTask
from sagnn_lightning.errors import param


def matbench_id_prefix(task: str) -> str:
    """``matbench_jdft2d`` → ``mb-jdft2d`` (matbench's MPContribs-style id prefix)."""
    return task.replace("matbench", "mb").replace("_", "-")


def matbench_ids(task: str, index: Sequence[int], n_samples: int) -> list[str]:
    """Ids ``mb-<task>-<i+1>``, zero padded to the digit count of ``n_samples`` (matbench's rule)."""
    # exactly matbench.data_ops.load's expression: math.log(1000, 10) < 3, so log10 would differ at powers of ten
    width = math.floor(math.log(n_samples, 10)) + 1  # noqa: FURB163
    prefix = matbench_id_prefix(task)
    return [f"{prefix}-{int(i) + 1:0{width}d}" for i in index]


def read_matbench_json(
    path: str | Path, task: str, n_samples: int, target: str, input_column: str = "structure"
) -> Table:
    """Read a matbench-layout ``*.json(.gz)`` (pandas ``orient="split"``).

    Args:
        path: the file.
        task: matbench task name (``matbench_jdft2d``), used for the ids.
        n_samples: rows in the *full* task (sets the id zero padding).
        target: target column name.
        input_column: input column: ``"structure"`` for structure tasks, ``"composition"`` for composition tasks.

    Returns:
        :class:`Table` with ids ``mb-...`` from the file's ``index``, Structure dicts (or formula strings),
        targets ``[n, 1]``.
    """
    path = Path(path)
    doc = read_split_json(path)
    if not (isinstance(doc, dict) and {"index", "columns", "data"} <= set(doc)):
        raise DataFormatError(
            f"{path}: not in matbench layout (expected a JSON object with 'index', 'columns', 'data' — "
            "pandas orient='split'); use CrystalDataModule for other layouts."
        )
    columns = list(doc["columns"])
    fix = f"Is this the file of another matbench task? Check {param('data.task')} / {param('data.data_file')}."
    check_columns(path, columns, [input_column], input_column, fix)
    check_columns(path, columns, [target], "target", fix)
    s_col, t_col = columns.index(input_column), columns.index(target)
    rows = doc["data"]
    check_not_empty(path, len(rows))
    ids = matbench_ids(task, doc["index"], n_samples)
    check_unique(path, ids)
    structures = [r[s_col] for r in rows]
    raw = pd.Series([r[t_col] for r in rows], dtype=object)
    targets = targets_array(path, pd.DataFrame({target: raw}), [target])
    return Table(ids=ids, structures=structures, targets=targets, target_names=[target], source=path)


def matbench_task_of(path: Path) -> MatbenchTask | None:
    """The matbench task a file is named after (``matbench_jdft2d.json.gz`` → its task), else ``None``."""
    for name in sorted(ALL_MATBENCH_TASKS, key=len, reverse=True):
        if path.name.startswith(name):
            return ALL_MATBENCH_TASKS[name]
    return None


def matbench_default_ids(path: Path, frame: pd.DataFrame) -> list[str]:
    """Ids when no id column exists: matbench ids for a matbench-named file in orient='split'
    layout (its index is the official row number), else the readers' own :func:`~sagnn_lightning.data.readers.row_ids`."""
    task = matbench_task_of(path) if frame.attrs.get("orient") == "split" else None
    if task is not None:
        return matbench_ids(task.name, frame.index, task.n_samples)
    return row_ids(path, frame)
