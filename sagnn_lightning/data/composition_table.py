"""``CompositionDataModule``: the user's own formulas + targets (a CSV/JSON table), with a seeded split.

The rows go through the same machinery as :class:`~sagnn_lightning.data.crystal.CrystalDataModule` (row index,
graph cache, splits, loaders); only the graphs differ: element graphs of each formula
(:mod:`sagnn_lightning.data.composition`) instead of crystal graphs.
"""

from __future__ import annotations

from typing import Any

from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.data.fingerprint import fingerprint
from sagnn_lightning.data.matbench_format import matbench_default_ids
from sagnn_lightning.data.readers import read_data
from sagnn_lightning.data.table import Table


class CompositionDataModule(CrystalDataModule):
    """Chemical formulas + targets from a table, with a seeded train/val/test split.

    Args:
        data_file: a ``.csv``/``.json`` table (optionally ``.gz``) with one formula per row (``Fe2O3``,
            ``Ag(AuS)2``, ``Fe0.62C0.00095Mn0.00052``...), or a bundled sample ``"sample:<name>"`` whose table
            has a formula column.
        target_columns: target column names (required unless a sample gives defaults).
        target_units: unit of each target, for plot axes.
        id_column: id column (default: ``material_id``/``mbid``/``sample_id``/``id``/``name`` if present,
            else ``row-<i>``).
        composition_column: formula column (default: the first of ``composition``, ``formula``,
            ``pretty_formula``, ``reduced_formula`` present).
        task_type: ``"regression"`` or ``"classification"`` (targets 0/1 or booleans).
        val_fraction: share of the rows used for validation.
        test_fraction: share of the rows used for testing.
        split_seed: seed of the split and the training shuffle.
        batch_size: graphs per batch.
        num_workers: DataLoader workers.
        graph_workers: processes building graphs on a cache miss.
        cache_dir: graph cache folder.
        on_error: ``"raise"`` or ``"skip"`` bad rows (unparsable formula, unknown element, zero or negative
            amount: counted and listed in ``self.skipped``).
        progress: show progress bars while building graphs.
        static_shapes: pad every batch to one of at most this many fixed shapes (CUDA graphs,
            ``--model.compile=reduce-overhead``; :mod:`sagnn_lightning.data.padding`); ``None`` (default): no padding.
        calibration_fraction: share of the training rows held out from training and validation, the same for
            every member of an ensemble, to calibrate its uncertainty on (``calibration_dataloader``); 0: none.
        target_transforms: one per target, ``"none"`` or ``"log"`` (e.g. ``[log, log, none]``): the model learns
            the transformed values and predicts in the target's unit (:mod:`sagnn_lightning.data.targets`).
    """

    def __init__(
        self,
        data_file: str,
        target_columns: list[str] | None = None,
        target_units: list[str] | None = None,
        id_column: str | None = None,
        composition_column: str | None = None,
        task_type: str = "regression",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
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
            data_file=data_file,
            target_columns=target_columns,
            target_units=target_units,
            id_column=id_column,
            task_type=task_type,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            batch_size=batch_size,
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
        self.settings = CompositionSettings()
        self.structure_column = composition_column  # a sample's CIF column does not apply: pick the formula column
        self.composition_column = composition_column

    @classmethod
    def from_sample(cls, name: str = "mp_abx3_band_gap", **kwargs: Any) -> CompositionDataModule:
        """A bundled sample's formulas and targets (see :meth:`CrystalDataModule.from_sample`)."""
        return super().from_sample(name, **kwargs)  # type: ignore[return-value]

    def _read_table(self) -> Table:
        return read_data(
            self.path,
            self.target_columns,
            id_column=self.id_column,
            structure_column=self.composition_column,
            default_ids=matbench_default_ids,
            input_type="composition",
        )

    def _fingerprint(self) -> str:
        return fingerprint(
            self.path,
            kind="composition_table",
            targets=self.target_columns,
            id_column=self.id_column,
            composition_column=self.composition_column,
        )
