"""``CrystalDataModule``: the user's own crystals (CSV/JSON table, CIF folder, or a bundled sample).

Split: one seeded permutation (``numpy.random.default_rng(split_seed)``) of all rows of the file;
the first ``round(test_fraction * n)`` rows are the test set, the next ``round(val_fraction * n)``
the validation set, the rest the training set. Splits depend only on the file's row ids and the
seed — not on graph settings or on rows skipped later, which are simply left out of their split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from sagnn_lightning.data.datamodule import GraphDataModule
from sagnn_lightning.data.fingerprint import fingerprint
from sagnn_lightning.data.matbench_format import matbench_default_ids
from sagnn_lightning.data.readers import read_data
from sagnn_lightning.data.samples import get_sample, is_sample_ref, resolve_preset, sample_path
from sagnn_lightning.data.table import InputNotFoundError, Table
from sagnn_lightning.data.tasks import TaskType
from sagnn_lightning.errors import UsageError, param


def random_split_ids(ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Seeded train/val/test split of ``ids`` (see module docstring); each split keeps file order."""
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise UsageError(
            f"need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1 "
            f"({param('data.val_fraction')}, {param('data.test_fraction')}), got {val_fraction}, {test_fraction}"
        )
    n = len(ids)
    n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
    label = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
    perm = np.random.default_rng(seed).permutation(n)
    label[perm[:n_test]] = 2
    label[perm[n_test : n_test + n_val]] = 1
    return {name: [i for i, lab in zip(ids, label) if lab == k] for k, name in enumerate(("train", "val", "test"))}


class UnknownSampleError(UsageError, KeyError):
    """``data_file="sample:<name>"`` names no bundled sample (a ``KeyError`` too, printed without quotes)."""

    __str__ = BaseException.__str__


class CrystalDataModule(GraphDataModule):
    """Crystals + targets from a file, with a seeded train/val/test split.

    Args:
        data_file: a ``.csv``/``.json`` table (optionally ``.gz``) with CIF text or structure dicts,
            a folder of CIFs + ``id_prop.csv`` (CGCNN), or a bundled sample ``"sample:<name>"``
            (e.g. ``"sample:mp_abx3_perovskites"``).
        target_units: unit of each target, for plot axes (e.g. ``[eV]``; a bundled sample knows its own).
        target_columns: target column names (tables: required unless a sample gives defaults;
            CIF folders: names for the ``id_prop.csv`` columns after the id, default ``["target"]``).
        id_column: id column (default: ``material_id``/``mbid``/``sample_id``/``id``/``name`` if present,
            else ``row-<i>``).
        structure_column: CIF/dict column (default ``structure``/``cif``/...).
        task_type: ``"regression"`` or ``"classification"`` (targets 0/1 or booleans).
        val_fraction: share of the rows used for validation.
        test_fraction: share of the rows used for testing.
        split_seed: seed of the split and the training shuffle.
        cutoff: neighbour cutoff (Å); this and the arguments below are as in
            :class:`~sagnn_lightning.data.matbench.MatbenchDataModule`.
        max_neighbors: optional cap per atom.
        max_isolated_radius: how far (Å) the nearest neighbours of an isolated atom are searched.
        batch_size: graphs per batch.
        num_workers: DataLoader workers.
        graph_workers: processes building graphs on a cache miss.
        cache_dir: graph cache folder.
        on_error: ``"raise"`` or ``"skip"`` bad rows.
        progress: show progress bars while building graphs.
        static_shapes: pad every batch to one of at most this many fixed shapes (CUDA graphs,
            ``--model.compile=reduce-overhead``; :mod:`sagnn_lightning.data.padding`); ``None`` (default): no padding.
        calibration_fraction: share of the training rows held out from training and validation, the same for
            every member of an ensemble, to calibrate its uncertainty on (``calibration_dataloader``); 0: none.
        target_transforms: one per target, ``"none"`` or ``"log"`` (e.g. ``[log, log, none]``): the model learns
            the transformed values and predicts in the target's unit (:mod:`sagnn_lightning.data.targets`).

    ``task_type`` and ``on_error`` are plain strings checked here (not ``Literal``), so that a wrong value is
    reported by the CLI as this class's one-line message rather than as a type-union dump.
    """

    def __init__(
        self,
        data_file: str,
        target_columns: list[str] | None = None,
        target_units: list[str] | None = None,
        id_column: str | None = None,
        structure_column: str | None = None,
        task_type: str = "regression",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        cutoff: float = 5.0,
        max_neighbors: int | None = None,
        max_isolated_radius: float = 20.0,
        batch_size: int = 128,
        num_workers: int = 0,
        graph_workers: int = 0,
        cache_dir: str | None = None,
        on_error: str = "raise",
        progress: bool = True,
        static_shapes: int | None = None,
        calibration_fraction: float = 0.0,
        target_transforms: list[str] | None = None,
    ) -> None:
        super().__init__(
            cutoff=cutoff,
            max_neighbors=max_neighbors,
            max_isolated_radius=max_isolated_radius,
            batch_size=batch_size,
            split_seed=split_seed,
            num_workers=num_workers,
            graph_workers=graph_workers,
            cache_dir=cache_dir,
            on_error=on_error,
            progress=progress,
            static_shapes=static_shapes,
            calibration_fraction=calibration_fraction,
            target_transforms=target_transforms,
        )
        self.save_hyperparameters()
        if task_type not in ("regression", "classification"):
            raise UsageError(
                f"task_type must be 'regression' or 'classification' ({param('data.task_type')}), got {task_type!r}"
            )
        random_split_ids([], val_fraction, test_fraction, split_seed)  # validates the fractions
        self._task_type = cast(TaskType, task_type)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.id_column, self.structure_column = id_column, structure_column
        self.target_columns = list(target_columns) if target_columns is not None else None
        self._target_units = list(target_units) if target_units is not None else None
        self._sample_units: dict[str, str] = {}
        if is_sample_ref(data_file):
            try:
                sample = get_sample(data_file)
            except KeyError as err:
                raise UnknownSampleError(f"{param('data.data_file')}={data_file}: {err.args[0]}") from None
            self.path = sample_path(data_file)
            self.id_column = id_column or sample.id_column
            self.structure_column = structure_column or sample.structure_column
            self.target_columns = self.target_columns or list(sample.target_columns)
            self._sample_units = dict(sample.units)
        else:
            self.path = Path(data_file).expanduser()
            if not self.path.exists():
                raise InputNotFoundError(
                    f"data file {self.path} does not exist; give {param('data.data_file')} a CSV/JSON table, a folder of "
                    "CIFs with id_prop.csv, or a bundled sample such as sample:mp_abx3_perovskites."
                )
        self.data_file = data_file

    @classmethod
    def from_sample(cls, name: str = "mp_abx3_band_gap", **kwargs: Any) -> CrystalDataModule:
        """A bundled sample by preset (``"mp_abx3_band_gap"``, ``"mp_abx3_formation_energy"``, ...) or
        sample name (``"mp_abx3_perovskites"``, default targets); ``kwargs`` go to ``__init__``."""
        data_file, targets = resolve_preset(name)
        kwargs.setdefault("target_columns", targets)
        return cls(data_file=data_file, **kwargs)

    @property
    def task_type(self) -> TaskType:  # type: ignore[override]
        return self._task_type

    @property
    def target_names(self) -> list[str]:
        if self.target_columns is not None:
            return list(self.target_columns)
        return list(self.table.target_names)

    @property
    def target_units(self) -> list[str | None]:
        """Unit of each target (plot axes): ``target_units`` if given, a bundled sample's own, else ``None``."""
        names = self.target_names
        if self._target_units is not None:
            if len(self._target_units) != len(names):
                raise UsageError(
                    f"{param('data.target_units')} has {len(self._target_units)} entries for the {len(names)} targets {names}"
                )
            return list(self._target_units)
        return [self._sample_units.get(name) for name in names]

    def _read_table(self) -> Table:
        return read_data(
            self.path,
            self.target_columns,
            id_column=self.id_column,
            structure_column=self.structure_column,
            default_ids=matbench_default_ids,  # a matbench-named file without an id column: matbench's ids
        )

    def _fingerprint(self) -> str:
        return fingerprint(
            self.path,
            kind="table",
            targets=self.target_columns,
            id_column=self.id_column,
            structure_column=self.structure_column,
        )

    def _split_size_hint(self) -> str:
        return (
            f"Add rows, or change {param('data.val_fraction')} / {param('data.test_fraction')} (now {self.val_fraction} / "
            f"{self.test_fraction} of {len(self.file_ids)} rows)."
        )

    def _split_fraction(self, split: str) -> float | None:
        return {"val": self.val_fraction, "test": self.test_fraction}.get(split)

    def _split_ids(self, table: Table) -> dict[str, list[str] | None]:
        # split every row of the file (skipped rows included) so that skipping never moves other rows
        splits = random_split_ids(self.file_ids, self.val_fraction, self.test_fraction, self.split_seed)
        if self.calibration_fraction:
            splits["train"], splits["calibration"] = self.carve_calibration(splits["train"])
        usable = set(table.ids)
        return {k: [i for i in v if i in usable] for k, v in splits.items()}
