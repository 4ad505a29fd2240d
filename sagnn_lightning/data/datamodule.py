"""Shared machinery of the graph DataModules: target checks, cached graphs, splits, loaders, statistics.

Subclasses (:class:`~sagnn_lightning.data.matbench.MatbenchDataModule`,
:class:`~sagnn_lightning.data.crystal.CrystalDataModule`) only say how to read their rows, how to
fingerprint them and how to split them (by sample id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Subset

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.dataset import SkippedItem
from sagnn_lightning.data.graph import GraphSettings
from sagnn_lightning.data.padding import Capacity, choose_capacities, collate_padded
from sagnn_lightning.data.table import DataFormatError, OnError, Table
from sagnn_lightning.data.targets import check_transforms, invalid_for_transform, missing_counts, transform_array
from sagnn_lightning.data.tasks import TaskType
from sagnn_lightning.errors import UsageError, param
from sagnn_lightning.files import atomic_write, file_lock

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: second seed word of the calibration carve (its draw is independent of the validation and test draws)
CALIBRATION_STREAM = 7
ROWS_FORMAT = 1  # bump when readers change ids/targets of an unchanged file
_MAX_LISTED = 20
#: fewest crystals a split may have in fit / validate / test (R² and a standard deviation need two)
MIN_SPLIT_SIZE = 2


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Graph cache folder: ``cache_dir`` if given, else ``$SAGNN_CACHE_DIR``, else
    ``platformdirs.user_cache_dir("sagnn_lightning")/graphs`` (read when called, never at import)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from sagnn_lightning.data.cache import default_cache_dir

    return default_cache_dir()


def format_skipped(items: Sequence[Any], total: int) -> str:
    """``"skipped 3 of 636 rows: id (reason); ..."`` listing at most 20."""
    listed = "; ".join(f"{s.sample_id} ({_without_id(s.reason, s.sample_id)})" for s in items[:_MAX_LISTED])
    more = f"; ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"skipped {len(items)} of {total} rows: {listed}{more}"


def _without_id(reason: str, sample_id: str) -> str:
    """A graph builder's reason names the row first (``"<id>: ..."``); the listing names it already."""
    prefix = f"{sample_id}: "
    return reason[len(prefix) :].rstrip(".") if reason.startswith(prefix) else reason.rstrip(".")


def check_targets(
    table: Table, on_error: str, task_type: TaskType, transforms: Sequence[str] | None = None
) -> tuple[Table, list[SkippedItem]]:
    """Reject invalid targets, naming the row ids: inf, NaN (with one target; with several, a row may lack some
    of them but not all: :mod:`sagnn_lightning.data.targets`), values a target's ``transforms`` entry cannot take,
    and non-0/1 classification labels.

    Returns the table without bad rows and the list of skipped rows (``on_error="skip"``).
    """
    bad_rows: dict[int, str] = {}
    t = table.targets
    finite = np.isfinite(t)
    allowed = np.isnan(t) & (t.shape[1] > 1) & finite.any(axis=1, keepdims=True)  # some targets missing, not all
    for r in np.flatnonzero(~(finite | allowed).all(axis=1)):
        cols = [table.target_names[k] for k in np.flatnonzero(~(finite[r] | allowed[r]))]
        values = ", ".join(str(t[r, table.target_names.index(c)]) for c in cols)
        bad_rows[int(r)] = f"target {', '.join(cols)} is {values}"
    if transforms is not None:
        for r, k in zip(*np.nonzero(invalid_for_transform(t, transforms))):
            name = table.target_names[k]
            bad_rows.setdefault(int(r), f"target {name} is {t[r, k]}, but its transform is {transforms[k]} (needs > 0)")
    if task_type == "classification":
        for r in np.flatnonzero((finite & ~np.isin(t, (0.0, 1.0))).any(axis=1)):
            bad_rows.setdefault(int(r), f"classification target must be 0/1 or true/false, got {t[r].tolist()}")
    if not bad_rows:
        return table, []
    skipped = [SkippedItem(table.ids[r], reason) for r, reason in sorted(bad_rows.items())]
    if on_error != "skip":
        ids = [s.sample_id for s in skipped]
        raise DataFormatError(
            f"{table.source}: {len(skipped)} row(s) with invalid targets, e.g. "
            f"{'; '.join(f'{s.sample_id}: {s.reason}' for s in skipped[:5])} (ids: {ids[:_MAX_LISTED]}). "
            f"Fix or remove these rows, or leave them out with {param('data.on_error')}=skip."
        )
    keep = np.setdiff1d(np.arange(len(table)), np.fromiter(bad_rows, dtype=np.int64))
    return table.subset(keep), skipped


class GraphDataModule(pl.LightningDataModule, ABC):
    """Base class: rows → graph cache → id-based splits → loaders.

    Subclasses implement :meth:`_read_table` (rows, unchecked), :meth:`_fingerprint`,
    :meth:`_split_ids` (``{"train": ids, "val": ids, "test": ids | None}``) and ``task_type``.
    """

    task_type: TaskType

    def __init__(
        self,
        *,
        cutoff: float = 5.0,
        max_neighbors: int | None = None,
        max_isolated_radius: float = 20.0,
        batch_size: int = 128,
        split_seed: int = 0,
        num_workers: int = 0,
        graph_workers: int = 0,
        cache_dir: str | None = None,
        on_error: str = "raise",
        progress: bool = True,
        static_shapes: int | None = None,
        calibration_fraction: float = 0.0,
        target_transforms: list[str] | None = None,
    ) -> None:
        super().__init__()
        # as given (the CLI links it to the module, and Lightning requires equal hparams); resolved: ``transforms``
        self.target_transforms = list(target_transforms) if target_transforms is not None else None
        if not 0.0 <= calibration_fraction < 1.0:
            raise UsageError(
                f"calibration_fraction must be in [0, 1) ({param('data.calibration_fraction')}), got {calibration_fraction}"
            )
        self.calibration_fraction = calibration_fraction
        if static_shapes is not None and static_shapes < 1:
            raise UsageError(f"static_shapes must be >= 1 or null ({param('data.static_shapes')}), got {static_shapes}")
        self.static_shapes = static_shapes
        if on_error not in ("raise", "skip"):
            raise UsageError(f"on_error must be 'raise' or 'skip' ({param('data.on_error')}), got {on_error!r}")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1 ({param('data.batch_size')}), got {batch_size}")
        # every graph option is part of the graph cache key (GraphSettings; composition DataModules replace it
        # with CompositionSettings)
        self.settings: GraphSettings | CompositionSettings = GraphSettings(
            cutoff=cutoff, max_neighbors=max_neighbors, max_isolated_radius=max_isolated_radius
        )
        self.cutoff, self.max_neighbors, self.max_isolated_radius = cutoff, max_neighbors, max_isolated_radius
        self.batch_size = batch_size
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.graph_workers = graph_workers
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.on_error = on_error
        self.progress = progress
        self._table: Table | None = None
        self._fingerprint_value: str | None = None
        self.file_ids: list[str] = []
        self._ids: dict[str, list[str] | None] | None = None
        self._stats: tuple[list[float], list[float]] | None = None
        self._graphs: Any = None
        self.skipped: list[SkippedItem] = []  # rows left out in skip mode: (sample_id, reason)
        self.missing_targets: dict[str, int] = {}  # rows lacking each target (kept: they train the others)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.calibration_dataset: Dataset | None = None

    # ---------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _read_table(self) -> Table:
        """All rows of the data source (ids, raw structures, targets)."""

    @abstractmethod
    def _fingerprint(self) -> str:
        """Content fingerprint of the data source (keys the row index and the graph cache)."""

    @abstractmethod
    def _split_ids(self, table: Table) -> dict[str, list[str] | None]:
        """Ids of ``train``/``val``/``test`` (``None``: the source cannot provide that split)."""

    def _missing_split_message(self, split: str) -> str:
        return f"no {split} split"

    # ---------------------------------------------------------------- rows, splits, statistics
    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the data source (sha256 of the file bytes + column choices), memoized."""
        if self._fingerprint_value is None:
            self._fingerprint_value = self._fingerprint()
        return self._fingerprint_value

    @property
    def table(self) -> Table:
        """Checked rows (NaN/inf targets removed in skip mode); read once, lazily.

        Ids and targets are also kept in a small index beside the graph cache
        (``<cache_dir>/rows/v<format>-<fingerprint>.npz``), so a later run with cached graphs never parses the
        structures again (``table.structures`` is then ``None`` until a graph build needs them). The statistics
        that the CLI links into the model when it builds objects on every DDP rank (``target_mean``,
        ``target_std``, ``num_targets``) come from this index: one process reads the data, under a lock
        (:meth:`_load_rows`).
        """
        if self._table is None:
            table = self._load_rows()
            self.file_ids = list(table.ids)
            transforms = check_transforms(self.target_transforms, table.target_names)
            table, skipped = check_targets(table, self.on_error, self.task_type, transforms)
            if len(table) == 0:
                raise DataFormatError(f"{table.source}: no usable rows left; {format_skipped(skipped, len(skipped))}.")
            self._table, self.skipped = table, list(skipped)
            if skipped:
                log.warning("%s: %s", table.source, format_skipped(skipped, len(table) + len(skipped)))
            self.missing_targets = missing_counts(table.targets, table.target_names)
            if self.missing_targets:
                counts = ", ".join(f"{name} {n}" for name, n in self.missing_targets.items())
                log.warning(
                    "%s: rows lacking a target train on the targets they have (rows without: %s, of %d)",
                    table.source,
                    counts,
                    len(table),
                )
        return self._table

    def _rows_path(self) -> Path:
        return self.cache_dir / "rows" / f"v{ROWS_FORMAT}-{self.fingerprint}.npz"

    def _load_rows(self) -> Table:
        """Ids and targets from the row index, or the data file (parsed once, under a lock) on a miss.

        The index is replaced atomically, so reading an existing one needs no lock. On a miss, one process
        parses the data and writes the index while holding ``<cache_dir>/rows/.<index name>.lock``; others
        that need the rows at the same time (DDP ranks instantiating the CLI) wait, then read the index.
        """
        path = self._rows_path()
        table, _ = self._read_rows_index(path)
        if table is not None:
            return table
        with contextlib.ExitStack() as stack:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(file_lock(path.parent / f".{path.name}.lock", f"reading the rows for {path}"))
            except OSError as err:  # a read-only cache folder only costs a re-parse next time
                log.warning("cannot write the row index %s (%s); reading the data without it", path, err)
                return self._read_table()
            table, problem = self._read_rows_index(path)  # written by another process while we waited?
            if table is not None:
                return table
            if problem:
                log.warning("%s: %s; re-reading the data", path, problem)
            log.info("reading the data rows (ids, targets) into %s", path)
            table = self._read_table()
            try:
                meta = {"target_names": table.target_names, "source": str(table.source), "extra": table.extra}
                with atomic_write(path, "wb") as fh:  # umask respected; a rewritten index keeps its mode
                    np.savez(
                        fh, ids=np.array(table.ids, dtype=str), targets=table.targets, meta=np.array(json.dumps(meta))
                    )
            except OSError as err:  # a read-only cache dir only costs a re-parse next time
                log.warning("could not write row index %s (%s)", path, err)
        return table

    @staticmethod
    def _read_rows_index(path: Path) -> tuple[Table | None, str | None]:
        """``(table without structures, None)`` from the index at ``path``, else ``(None, why not)``."""
        if not path.is_file():
            return None, None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                ids, targets = z["ids"].tolist(), np.array(z["targets"], dtype=np.float64)
            names, source, extra = list(meta["target_names"]), Path(meta["source"]), meta["extra"]
        except Exception as err:  # truncated / foreign file: re-read the data
            return None, f"unreadable row index ({err})"
        if targets.shape != (len(ids), len(names)):
            return None, "inconsistent row index"
        return Table(ids=ids, structures=None, targets=targets, target_names=names, source=source, extra=extra), None

    def _structures_for(self, table: Table) -> list[Any]:
        """Raw structure inputs of ``table``'s rows, re-reading the source if only the index was loaded."""
        if table.structures is not None:
            return table.structures
        raw = self._read_table()
        if raw.structures is None:
            raise RuntimeError(f"{raw.source}: the reader returned no structures")
        position = {sid: k for k, sid in enumerate(raw.ids)}
        return [raw.structures[position[i]] for i in table.ids]

    @property
    def split_ids(self) -> dict[str, list[str] | None]:
        """Sample ids of each split (before structure errors are skipped); ``test`` may be ``None``."""
        if self._ids is None:
            ids = self._split_ids(self.table)
            if not ids["train"]:
                raise DataFormatError(
                    f"{self.table.source}: the training split is empty; add rows or lower "
                    f"{param('data.val_fraction')} / {param('data.test_fraction')}."
                )
            self._ids = ids
        return self._ids

    @property
    def target_names(self) -> list[str]:
        return list(self.table.target_names)

    @property
    def target_units(self) -> list[str | None]:
        """Unit of each target (``None`` = unknown); labels the parity-plot axes."""
        return [None] * self.num_targets

    @property
    def num_targets(self) -> int:
        return len(self.target_names)

    def _compute_stats(self) -> tuple[list[float], list[float]]:
        if self._stats is None:
            if self.task_type == "classification":
                self._stats = ([0.0] * self.num_targets, [1.0] * self.num_targets)
            else:
                row = {sid: r for r, sid in enumerate(self.table.ids)}
                train = self.table.targets[[row[i] for i in self.split_ids["train"] or []]]
                train = transform_array(train, self.transforms)
                empty = [n for n, count in zip(self.target_names, np.isfinite(train).sum(axis=0)) if count == 0]
                if empty:
                    raise DataFormatError(
                        f"{self.table.source}: no training row has a value for {empty}; drop the target or add rows"
                    )
                mean = np.nanmean(train, axis=0)
                std = np.nanstd(train, axis=0)
                std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
                self._stats = (mean.tolist(), std.tolist())
        return self._stats

    @property
    def transforms(self) -> list[str]:
        """Per-target transform (``"none"`` or ``"log"``; :mod:`sagnn_lightning.data.targets`): the statistics and
        the model's training targets are of the transformed values."""
        return check_transforms(self.target_transforms, self.target_names)

    @property
    def target_mean(self) -> list[float]:
        """Per-target mean over the training split, of the transformed values (0 for classification)."""
        return self._compute_stats()[0]

    @property
    def target_std(self) -> list[float]:
        """Per-target standard deviation over the training split (population; 1 for classification)."""
        return self._compute_stats()[1]

    # ---------------------------------------------------------------- graphs
    def graph_dataset(self) -> Any:
        """The cached :class:`GraphDataset` of every usable row (built on a cache miss)."""
        if self._graphs is None:
            from sagnn_lightning.data.cache import load_or_build_graphs

            table = self.table
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            graphs = load_or_build_graphs(
                self.cache_dir,
                self.fingerprint,
                table.ids,
                lambda: self._structures_for(table),
                table.targets.astype(np.float64),
                self.settings,
                num_workers=self.graph_workers,
                on_error=cast(OnError, self.on_error),
                progress=self.progress,
            )
            cache_skipped = list(getattr(graphs, "skipped", []) or [])
            if cache_skipped and self.on_error != "skip":
                raise DataFormatError(
                    f"{table.source}: {format_skipped(cache_skipped, len(table))} while building graphs; "
                    f"fix these entries or leave them out with {param('data.on_error')}=skip."
                )
            if cache_skipped:
                log.warning("%s: %s", table.source, format_skipped(cache_skipped, len(table)))
                self.skipped = self.skipped + cache_skipped
            if len(graphs) == 0:
                raise DataFormatError(
                    f"{table.source}: no usable structures; {format_skipped(self.skipped, len(table))}."
                )
            table.structures = None  # graphs are on disk now; free the raw inputs
            self._graphs = graphs
        return self._graphs

    def prepare_data(self) -> None:
        """Download (if needed), read the rows and build the graph cache, once; ``setup`` then finds them.

        Lightning calls this on one process per node; every step also holds a file lock (download, row
        index, graph cache), so processes that reach the same data at once (the CLI instantiating the
        DataModule on every DDP rank, parallel runs sharing a cache folder) do the work once and wait for it.
        """
        self.graph_dataset()

    def carve_calibration(self, train_ids: list[str]) -> tuple[list[str], list[str]]:
        """``(train, calibration)``: ``round(calibration_fraction * n)`` of the training ids, drawn with their own
        seeded stream (``split_seed``), held out from training and validation for every member of an ensemble
        (its uncertainty is calibrated on them); both keep the input order. Subclasses call this before they
        choose validation rows."""
        n_calibration = int(round(self.calibration_fraction * len(train_ids)))
        picked = np.zeros(len(train_ids), dtype=bool)
        picked[
            np.random.default_rng([self.split_seed, CALIBRATION_STREAM]).permutation(len(train_ids))[:n_calibration]
        ] = True
        return [i for i, p in zip(train_ids, picked) if not p], [i for i, p in zip(train_ids, picked) if p]

    def targets_of(self, ids: Sequence[str]) -> np.ndarray:
        """The targets of ``ids``, ``[n, T]`` in the file's units (from the rows read)."""
        position = {sid: k for k, sid in enumerate(self.table.ids)}
        return self.table.targets[[position[i] for i in ids]]

    def calibration_dataloader(self) -> DataLoader:
        """The calibration rows (``calibration_fraction`` of the training rows), in order, never shuffled."""
        if not self.split_ids.get("calibration"):
            raise UsageError(
                f"no calibration rows: set {param('data.calibration_fraction')} > 0 (e.g. 0.1) to hold some out"
            )
        if self.calibration_dataset is None:
            self.calibration_dataset = self._subset("calibration")
        return self._loader("calibration", shuffle=False)

    def _subset(self, split: str) -> Subset | None:
        ids = self.split_ids.get(split)
        if ids is None:
            return None
        graphs = self.graph_dataset()
        position = {sid: k for k, sid in enumerate(graphs.sample_ids)}
        return Subset(graphs, [position[i] for i in ids if i in position])

    def setup(self, stage: str | None = None) -> None:
        """Build the split datasets.

        ``fit`` → train + val; ``validate`` → val; ``test``/``predict`` → test; ``None`` → all.
        """
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage or "", SPLITS
        )
        for split in wanted:
            if split == "test" and self.split_ids["test"] is None:
                if stage in ("test", "predict"):
                    raise DataFormatError(self._missing_split_message("test"))
                continue
            subset = self._subset(split)
            if split == "train" and subset is not None and len(subset) == 0:
                raise DataFormatError(
                    f"{self.table.source}: no training structures left; "
                    f"{format_skipped(self.skipped, len(self.table))}."
                )
            explicitly_empty = subset is not None and len(subset) == 0 and self._split_fraction(split) == 0.0
            if (
                stage in ("fit", "validate", "test")
                and subset is not None
                and len(subset) < MIN_SPLIT_SIZE
                and not explicitly_empty
            ):
                raise DataFormatError(self._split_too_small_message(split, len(subset)))
            setattr(self, f"{split}_dataset", subset)

    def _split_too_small_message(self, split: str, size: int) -> str:
        """Why a split of ``size`` crystals cannot be trained / evaluated on, and which flags change it."""
        skipped = f" ({len(self.skipped)} rows skipped)" if self.skipped else ""
        return (
            f"{self.table.source}: the {split} split has {size} crystal(s) of {len(self.table)} usable rows"
            f"{skipped}; training and evaluation need at least {MIN_SPLIT_SIZE} in every split (R², the "
            f"target statistics and the best checkpoint are undefined otherwise). {self._split_size_hint()}"
        )

    def _split_size_hint(self) -> str:
        return "Add rows."

    def _split_fraction(self, split: str) -> float | None:
        """The user's share for ``split`` (a share of exactly 0 asks for no such split), if it has one."""
        return None

    # ---------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = getattr(self, f"{split}_dataset")
        if dataset is None:
            if split == "test" and self.split_ids["test"] is None:
                raise DataFormatError(self._missing_split_message("test"))
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
            dataset = getattr(self, f"{split}_dataset")
        if shuffle:  # order = f(split_seed, epoch) and exact mid-epoch resume (sagnn_lightning.data.loader)
            from sagnn_lightning.data.loader import EpochRandomSampler, ResumableDataLoader

            return ResumableDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=EpochRandomSampler(dataset, seed=self.split_seed),
                collate_fn=self._collate(dataset),
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self._collate(dataset),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _collate(self, dataset: Dataset) -> Callable[[Sequence[Any]], Any]:
        """``collate_graphs``, or with ``static_shapes`` the padded collate whose capacities every batch of
        ``dataset`` fits (:func:`static_capacities`)."""
        if self.static_shapes is None:
            return collate_graphs
        return partial(collate_padded, capacities=static_capacities(dataset, self.batch_size, self.static_shapes))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split (predictions are what matbench records)."""
        return self._loader("test", shuffle=False)


def static_capacities(dataset: Dataset, batch_size: int, max_buckets: int, samples: int = 256) -> list[Capacity]:
    """At most ``max_buckets`` batch shapes that every batch of ``batch_size`` crystals of ``dataset`` (a graph
    cache or a ``Subset`` of one) fits, in any order: the shapes of ``samples`` random batches (seeded) and of the
    worst possible batch (the ``batch_size`` largest crystals by atoms and, separately, by edges) are cut into
    groups (:func:`~sagnn_lightning.data.padding.choose_capacities`)."""
    graphs: Any = dataset.dataset if isinstance(dataset, Subset) else dataset
    indices = np.asarray(dataset.indices) if isinstance(dataset, Subset) else None
    atoms, edges = np.asarray(graphs.num_atoms), np.asarray(graphs.num_edges)
    if indices is not None:
        atoms, edges = atoms[indices], edges[indices]
    size = min(batch_size, len(atoms))
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(samples):
        pick = rng.choice(len(atoms), size=size, replace=False)
        rows.append((int(atoms[pick].sum()), int(edges[pick].sum()), size, int(atoms[pick].max())))
    worst = (int(np.sort(atoms)[-size:].sum()), int(np.sort(edges)[-size:].sum()), size, int(atoms.max()))
    return choose_capacities([*rows, worst], max_buckets)  # the worst case's capacity holds every batch
