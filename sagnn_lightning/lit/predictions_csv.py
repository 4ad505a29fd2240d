"""The predictions CSV: ``id,prediction[,probability]`` (one column named after each target when there are
several), written row by row as predictions come and made visible atomically at the end."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from sagnn_lightning.errors import UsageError, param
from sagnn_lightning.files import atomic_write


@dataclass
class Predictions:
    """Predictions of a set of inputs (all of them, or one batch of a stream).

    Attributes:
        ids: predicted ids (input order).
        prediction: ``[n, T]`` real units (regression) or 0/1 labels (classification).
        probability: ``[n, T]`` (classification) or ``None``.
        target_names: ``T`` names.
        errors: ``(file or id, reason)`` of every input left out.
        extra: an ensemble's further columns, rows first: ``std``, ``std_raw``, ``lower_95``, ``upper_95``,
            ``probability_std`` ``[n, T]`` and ``members [n, K, T]``.
    """

    ids: list[str]
    prediction: torch.Tensor
    probability: torch.Tensor | None
    target_names: list[str]
    errors: list[tuple[str, str]] = field(default_factory=list)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def prediction_columns(target_names: Sequence[str], classification: bool) -> list[str]:
    """The CSV's value columns: ``prediction`` (one column named after each target when there are several, in
    the target's unit), then the matching ``probability`` columns for classification."""
    single = len(target_names) == 1
    pred = ["prediction"] if single else list(target_names)
    prob = (["probability"] if single else [f"probability_{n}" for n in target_names]) if classification else []
    return [*pred, *prob]


def extra_columns(target_names: Sequence[str], extra: Sequence[str], members: int = 0) -> list[str]:
    """An ensemble's further CSV columns: each ``extra`` output (``std``, ``lower_95``, ...; ``<target>_<name>``
    per target when there are several), then ``member_<j>`` (``member_<j>_<target>``) for ``members`` members."""
    single = len(target_names) == 1
    columns = [name if single else f"{t}_{name}" for name in extra for t in target_names[: 1 if single else None]]
    for j in range(members):
        columns += [f"member_{j}"] if single else [f"member_{j}_{t}" for t in target_names]
    return columns


def check_id_header(id_header: str) -> None:
    """The id column's name must be non-empty and differ from the value columns."""
    if not id_header.strip() or id_header in ("prediction", "probability"):
        raise UsageError(
            f"{param('id_header')} must be a non-empty name other than the prediction columns, got {id_header!r}"
        )


class PredictionsWriter(AbstractContextManager["PredictionsWriter"]):
    """Writes predictions to ``path`` as they come (:meth:`write`), into a temporary file beside it that replaces
    ``path`` when the ``with`` block ends cleanly (:func:`~sagnn_lightning.files.atomic_write`). An exception, or
    :meth:`discard`, leaves ``path`` as it was.

    Args:
        path: the CSV file.
        target_names: the model's target names.
        classification: whether probabilities are written too.
        id_header: name of the id column.
        extra: an ensemble's further outputs to write (``Predictions.extra`` keys, :func:`extra_columns`).
        members: write this many members' predictions (``Predictions.extra["members"]``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        target_names: Sequence[str],
        classification: bool,
        id_header: str = "id",
        extra: Sequence[str] = (),
        members: int = 0,
    ) -> None:
        check_id_header(id_header)
        self.path = Path(path).expanduser()
        self.classification = classification
        self.extra, self.members = list(extra), members
        self.header = [
            id_header,
            *prediction_columns(target_names, classification),
            *extra_columns(target_names, extra, members),
        ]
        if len(set(self.header)) < len(self.header):
            raise UsageError(
                f"{param('id_header')}={id_header!r} or a target name repeats a column name of {self.header}; "
                "choose another id header"
            )
        self.rows = 0
        self._discard = False
        self._context: AbstractContextManager[IO[Any]] | None = None
        self._writer: Any = None

    def __enter__(self) -> PredictionsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._context = atomic_write(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._context.__enter__())
        self._writer.writerow(self.header)
        return self

    def write(self, result: Predictions) -> None:
        """Append ``result``'s rows (regression values as ``repr`` floats: exact round trip)."""
        for k, sample_id in enumerate(result.ids):
            row: list[Any] = [sample_id]
            row += [int(v) if self.classification else repr(float(v)) for v in result.prediction[k].tolist()]
            if result.probability is not None:
                row += [repr(float(v)) for v in result.probability[k].tolist()]
            for name in self.extra:
                row += [repr(float(v)) for v in result.extra[name][k].tolist()]
            if self.members:
                row += [repr(float(v)) for v in result.extra["members"][k].reshape(-1).tolist()]
            self._writer.writerow(row)
        self.rows += len(result.ids)

    def discard(self) -> None:
        """Leave ``path`` untouched at the end of the ``with`` block (e.g. nothing was predicted)."""
        self._discard = True

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._context is not None
        if kind is None and self._discard:  # unwind atomic_write as on an error: it removes its temporary file
            discarded = _Discarded()
            self._context.__exit__(_Discarded, discarded, None)
            return None
        self._context.__exit__(kind, error, tb)
        return None


class _Discarded(Exception):
    """Thrown into ``atomic_write`` by :meth:`PredictionsWriter.discard`: leave the target as it was."""


def write_predictions_csv(path: str | os.PathLike, result: Predictions, id_header: str = "id") -> Path:
    """Write ``result`` as CSV (first column ``id_header``), atomically (temp file in the same folder +
    ``os.replace``; a new file gets the umask's permissions, a replaced one keeps its mode)."""
    with PredictionsWriter(path, result.target_names, result.probability is not None, id_header) as writer:
        writer.write(result)
    return writer.path


__all__ = [
    "Predictions",
    "PredictionsWriter",
    "check_id_header",
    "extra_columns",
    "prediction_columns",
    "write_predictions_csv",
]
