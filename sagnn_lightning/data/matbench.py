"""``MatbenchDataModule``: the 13 tasks of matbench v0.1 (9 structure, 4 composition) with the official folds.

Structure tasks give crystal graphs; composition tasks (``expt_gap``, ``expt_is_metal``, ``glass``, ``steels``)
give element graphs (:mod:`sagnn_lightning.data.composition`) through the same graph cache and batching.

Folds are matbench's own (KFold 5, shuffle, random_state 18012019), read id by id from the
``matbench_v0.1_validation.json`` shipped in the ``matbench`` package. Validation rows are
carved, seeded, from the fold's *training* part only; test = the fold's test part.

Where the rows come from (first match wins):

1. ``data_file``: a matbench-layout ``*.json(.gz)`` (or a ``*.csv(.gz)`` with ``mbid``, ``cif`` and
   the target column) — may cover only some folds (see below);
2. ``data_home``: the file ``<data_home>/<task>.json.gz``;
3. matminer's data home (``$MATMINER_DATA``, else matminer's package folder): ``<task>.json.gz`` there,
   downloaded first if missing (``download=True``): URL and sha256 from matminer's public dataset
   metadata, once across processes (file lock), checked and renamed into place complete.

Every source is read by the same reader (:func:`~sagnn_lightning.data.matbench_format.read_matbench_json`); data
that is missing offline ends in one :class:`DatasetUnavailableError` naming the path looked at and the
flags that fix it (``--data.data_file``, ``--data.data_home``, ``$MATMINER_DATA``).

A file that covers only part of the task (e.g. fold 0's training rows) is accepted when it holds
every *training* row of the requested fold: ``setup("fit")`` works, while the test split raises
an error naming the missing rows (a test set that is not matbench's is never invented).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.datamodule import GraphDataModule
from sagnn_lightning.data.fingerprint import fingerprint
from sagnn_lightning.data.matbench_format import matbench_default_ids, read_matbench_json
from sagnn_lightning.data.readers import RawInputs, read_inputs, read_table
from sagnn_lightning.data.table import DataFormatError, InputNotFoundError, Table, base_suffix
from sagnn_lightning.data.tasks import (  # noqa: F401  (re-exported: the matbench API of this module)
    ALL_MATBENCH_TASKS,
    MATBENCH_COMPOSITION_TASKS,
    MATBENCH_TASKS,
    NUM_FOLDS,
    MatbenchTask,
    TaskType,
    get_task,
)
from sagnn_lightning.errors import SAGNNError, UsageError, param
from sagnn_lightning.files import atomic_write, file_lock

log = logging.getLogger(__name__)

MATMINER_ENV = "MATMINER_DATA"


def _import_matbench(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the matbench package is needed for the official folds ({err}); install it with "
            "`pip install --no-deps matbench==0.6` (its pins conflict with matminer 0.10 otherwise)."
        ) from err


def official_fold(task: str, fold: int) -> tuple[list[str], list[str]]:
    """``(train ids, test ids)`` of matbench v0.1 fold ``fold`` from matbench's validation file."""
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be in 0..{NUM_FOLDS - 1}, got {fold}")
    mbv01_validation = _import_matbench("matbench.metadata").mbv01_validation
    split = mbv01_validation.splits[task][f"fold_{fold}"]
    return list(split["train"]), list(split["test"])


def carve_validation(train_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split a fold's training ids into (train, val): ``round(val_fraction * n)`` ids drawn with
    ``numpy.random.default_rng(seed)``; both keep the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * len(train_ids)))
    picked = np.zeros(len(train_ids), dtype=bool)
    picked[np.random.default_rng(seed).permutation(len(train_ids))[:n_val]] = True
    return ([i for i, p in zip(train_ids, picked) if not p], [i for i, p in zip(train_ids, picked) if p])


def inner_fold_validation(train_ids: list[str], num_folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """Split a fold's training ids into (train, val) for inner cross-validation: the ids are shuffled with
    ``numpy.random.default_rng(seed)`` and dealt into ``num_folds`` folds of sizes differing by at most one;
    ``val`` is fold ``fold``. Over ``fold = 0 .. num_folds - 1`` the validation sets partition ``train_ids``.
    Both lists keep the input order."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    order = np.random.default_rng(seed).permutation(len(train_ids))
    picked = np.zeros(len(train_ids), dtype=bool)
    picked[np.array_split(order, num_folds)[fold]] = True
    return ([i for i, p in zip(train_ids, picked) if not p], [i for i, p in zip(train_ids, picked) if p])


class DatasetUnavailableError(SAGNNError, FileNotFoundError):
    """The task's data is not on disk and cannot be downloaded; the message names the path and the flags."""


def matminer_data_home() -> Path:
    """Where matminer keeps its datasets: ``$MATMINER_DATA`` if set, else the ``matminer/datasets`` package
    folder (the documented default of ``matminer.datasets.load_dataset``; read when called)."""
    env = os.environ.get(MATMINER_ENV)
    if env:
        return Path(env).expanduser()
    import matminer.datasets

    return Path(matminer.datasets.__file__).resolve().parent


def missing_data_message(task: str, path: Path, problem: str) -> str:
    """One message for data that is missing offline: the task, the path looked at and the flags that fix it."""
    return (
        f"matbench data for {task} is unavailable: {problem}. Looked for {path}. To use a local copy, put "
        f"{path.name} (matbench's file or any matbench-layout copy) there, or pass {param('data.data_file')}=<path of "
        f"{path.name}> or {param('data.data_home')}=<folder holding it>, or set ${MATMINER_ENV}=<folder holding it>."
    )


def download_matbench_file(task: str, data_home: Path, *, progress: bool = True) -> Path:
    """The official file of ``task`` in ``data_home``, downloaded first if missing.

    URL and sha256 come from matminer's public dataset metadata (``get_dataset_attribute``). The download
    streams into a temporary file that is checked against the sha256 and only then renamed into place, so
    an existing file is always complete; concurrent callers (DDP ranks, parallel runs) download once, under
    the lock file ``<data_home>/.<file>.lock``, while the others wait.

    Raises:
        DatasetUnavailableError: the download failed (offline, HTTP error, checksum); the message says what
            to pass instead.
    """
    from matminer.datasets import get_dataset_attribute

    path = Path(data_home) / f"{task}.{get_dataset_attribute(task, 'file_type')}"
    if path.is_file():
        return path
    url = get_dataset_attribute(task, "url")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.parent / f".{path.name}.lock", f"downloading {path}"):
            if not path.is_file():  # not downloaded by another process while we waited
                _download(url, path, get_dataset_attribute(task, "hash"), progress=progress)
    except Exception as err:  # network, HTTP, disk or checksum: one message with what to do offline
        detail = f"{type(err).__name__}: {err}"
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise DatasetUnavailableError(
            missing_data_message(task, path, f"could not download it from {url} ({detail})")
        ) from err
    return path


def _download(url: str, path: Path, sha256: str, *, progress: bool) -> None:
    """Stream ``url`` into ``path`` atomically; refuse (and leave nothing) if the sha256 differs."""
    import requests
    from tqdm.auto import tqdm

    log.info("downloading %s to %s", url, path)
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length") or 0) or None
        with (
            atomic_write(path, "wb") as fh,
            tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress) as bar,
        ):
            for chunk in response.iter_content(chunk_size=1 << 20):
                fh.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            if digest.hexdigest() != sha256:
                raise ValueError(
                    f"the file's sha256 {digest.hexdigest()} is not matminer's {sha256} (corrupted or changed download)"
                )


class MatbenchDataModule(GraphDataModule):
    """A matbench v0.1 task, one official fold.

    Args:
        task: task name, e.g. ``"matbench_jdft2d"`` or ``"matbench_expt_gap"`` (the ``matbench_`` prefix may be
            left out). A composition task builds element graphs (:class:`CompositionSettings`); the
            cutoff options then do not apply.
        fold: official fold, 0–4.
        data_home: folder holding ``<task>.json.gz`` (matbench layout); default: matminer's data home
            (``$MATMINER_DATA``, else matminer's package folder), where a missing file is downloaded.
        data_file: a matbench-layout ``.json(.gz)`` (or ``.csv(.gz)`` with ``mbid`` and ``cif``, or ``composition``
            for a composition task) of this task.
        cutoff: neighbour cutoff (Å). max_neighbors: optional cap per atom. max_isolated_radius: how far (Å)
            the nearest neighbours of an atom with none inside ``cutoff`` are searched (see ``GraphSettings``).
        batch_size: graphs per batch. val_fraction: share of the fold's training rows used for validation.
        val_folds: inner cross-validation instead of one carve: the fold's training rows are dealt into
            ``val_folds`` folds (seeded by ``split_seed``) and fold ``val_fold`` validates; over
            ``val_fold = 0 .. val_folds - 1`` every training row validates exactly once (replaces
            ``val_fraction``). ``None`` (default): the ``val_fraction`` carve.
        val_fold: which inner fold validates (with ``val_folds``).
        split_seed: seed of the validation carve (or inner folds) and of the training shuffle.
        num_workers: DataLoader workers. graph_workers: processes building graphs on a cache miss.
        cache_dir: graph cache folder (default ``$SAGNN_CACHE_DIR`` or the user cache dir).
        on_error: ``"raise"`` (default) or ``"skip"`` bad rows (counted, listed in ``self.skipped``); a plain
            string checked here, so the CLI reports a wrong value with this class's own message.
        download: allow downloading the official file into matminer's data home when no local file is found
            (``False``: a missing file is an error naming the path and the flags to use).
        progress: show a progress bar while downloading and building graphs.
        static_shapes: pad every batch to one of at most this many fixed shapes (CUDA graphs,
            ``--model.compile=reduce-overhead``; :mod:`sagnn_lightning.data.padding`); ``None`` (default): no padding.
        calibration_fraction: share of the training rows held out from training and validation, the same for
            every member of an ensemble, to calibrate its uncertainty on (``calibration_dataloader``); 0: none.
        target_transforms: one per target, ``"none"`` or ``"log"`` (e.g. ``[log, log, none]``): the model learns
            the transformed values and predicts in the target's unit (:mod:`sagnn_lightning.data.targets`).

    Attributes (available right after ``__init__``, computed lazily): ``task_type``, ``num_targets``,
    ``target_names``, ``target_mean``/``target_std`` (training split; 0/1 for classification), ``unit``.
    """

    def __init__(
        self,
        task: str,
        fold: int = 0,
        data_home: str | None = None,
        data_file: str | None = None,
        cutoff: float = 5.0,
        max_neighbors: int | None = None,
        max_isolated_radius: float = 20.0,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        val_folds: int | None = None,
        val_fold: int = 0,
        split_seed: int = 0,
        num_workers: int = 0,
        graph_workers: int = 0,
        cache_dir: str | None = None,
        on_error: str = "raise",
        download: bool = True,
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
        self.task = get_task(task)
        if self.task.input_type == "composition":  # element graphs: part of the cache key like GraphSettings
            self.settings = CompositionSettings()
        if not 0 <= fold < NUM_FOLDS:
            raise UsageError(f"fold must be in 0..{NUM_FOLDS - 1} ({param('data.fold')}), got {fold}")
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1) ({param('data.val_fraction')}), got {val_fraction}")
        if val_folds is not None and val_folds < 2:
            raise UsageError(f"val_folds must be >= 2 ({param('data.val_folds')}), got {val_folds}")
        if val_folds is not None and not 0 <= val_fold < val_folds:
            raise UsageError(f"val_fold must be in 0..{val_folds - 1} ({param('data.val_fold')}), got {val_fold}")
        self.fold = fold
        self.val_fraction = val_fraction
        self.val_folds, self.val_fold = val_folds, val_fold
        self.download = download
        self.data_file = self._local_file(data_home, data_file)

    @property
    def task_type(self) -> TaskType:  # type: ignore[override]
        return self.task.task_type

    @property
    def unit(self) -> str | None:
        return self.task.unit

    @property
    def target_names(self) -> list[str]:
        return [self.task.target]

    # ---------------------------------------------------------------- reading
    def _local_file(self, data_home: str | None, data_file: str | None) -> Path | None:
        expected = f"{self.task.name}.json.gz"
        if data_file is not None:
            path = Path(data_file).expanduser()
            if not path.is_file():
                raise InputNotFoundError(
                    f"matbench data file {path} not found; give {param('data.data_file')} the path of a matbench-layout "
                    f"{expected} (pandas orient='split'), or {param('data.data_home')}=<folder holding it>."
                )
            return path
        if data_home is not None:
            path = Path(data_home).expanduser() / expected
            if not path.is_file():
                raise InputNotFoundError(
                    f"matbench dataset not found: expected {path} ({param('data.data_home')}). Put the matbench v0.1 file "
                    f"{expected} (matminer's download, or any matbench-layout copy) in {Path(data_home).expanduser()}, "
                    f"give {param('data.data_file')}=<path>, or leave {param('data.data_home')} unset to download it through matbench."
                )
            return path
        path = matminer_data_home() / expected
        if path.is_file():  # $MATMINER_DATA (or matminer's own folder) already holds it
            return path
        if not self.download:
            raise DatasetUnavailableError(
                missing_data_message(
                    self.task.name,
                    path,
                    f"the file is missing and the download is off ({param('data.download')}=false)",
                )
            )
        return None  # downloaded when first needed (prepare_data, or the statistics), once, under a lock

    def source_file(self) -> Path:
        """The file the rows are read from: ``data_file`` / ``data_home`` / ``$MATMINER_DATA``, else the download."""
        return self.data_file if self.data_file is not None else self._ensure_download()

    def _read_table(self) -> Table:
        path = self.source_file()
        composition = self.task.input_type == "composition"
        if base_suffix(path) == ".csv":
            column = "composition" if composition else "cif"
            return read_table(
                path, [self.task.target], id_column="mbid", structure_column=column, input_type=self.task.input_type
            )
        return read_matbench_json(path, self.task.name, self.task.n_samples, self.task.target, self.task.input_type)

    def _ensure_download(self) -> Path:
        """The official file of the task in matminer's data home, downloaded (sha256-checked) if missing."""
        return download_matbench_file(self.task.name, matminer_data_home(), progress=self.progress)

    def _fingerprint(self) -> str:
        return fingerprint(self.source_file(), kind="matbench", task=self.task.name, targets=[self.task.target])

    # ---------------------------------------------------------------- splits
    @property
    def target_units(self) -> list[str | None]:
        return [self.task.unit]

    def _split_size_hint(self) -> str:
        return f"Change {param('data.val_fraction')} (now {self.val_fraction} of the fold's training rows)."

    def _split_fraction(self, split: str) -> float | None:
        if split != "val":
            return None
        return 1.0 / self.val_folds if self.val_folds else self.val_fraction

    def _split_ids(self, table: Table) -> dict[str, list[str] | None]:
        train_ids, test_ids = official_fold(self.task.name, self.fold)
        present = set(self.file_ids)
        missing_train = [i for i in train_ids if i not in present]
        if missing_train:
            raise DataFormatError(
                f"{table.source} lacks {len(missing_train)} of the {len(train_ids)} training rows of "
                f"{self.task.name} fold {self.fold} (e.g. {missing_train[:3]}); {self._coverage(present)}. "
                f"Use a fold it covers or the full {self.task.name}.json.gz."
            )
        usable = set(table.ids)
        pool, calibration = self.carve_calibration(train_ids)
        if self.val_folds:
            train, val = inner_fold_validation(pool, self.val_folds, self.val_fold, self.split_seed)
        else:
            train, val = carve_validation(pool, self.val_fraction, self.split_seed)
        test: list[str] | None = [i for i in test_ids if i in usable]
        missing_test = [i for i in test_ids if i not in present]
        self._missing_test = missing_test
        if missing_test:
            test = None
        splits = {"train": [i for i in train if i in usable], "val": [i for i in val if i in usable], "test": test}
        if self.calibration_fraction:
            splits["calibration"] = [i for i in calibration if i in usable]
        return splits

    def _coverage(self, present: set[str]) -> str:
        full_train = [k for k in range(NUM_FOLDS) if set(official_fold(self.task.name, k)[0]) <= present]
        full_test = [k for k in range(NUM_FOLDS) if set(official_fold(self.task.name, k)[1]) <= present]
        return f"it holds all training rows of folds {full_train} and all test rows of folds {full_test}"

    def _missing_split_message(self, split: str) -> str:
        missing = getattr(self, "_missing_test", [])
        return (
            f"{self.table.source} lacks {len(missing)} test rows of {self.task.name} fold {self.fold} "
            f"(e.g. {missing[:3]}): only training/validation (setup('fit')) is possible with this file. "
            f"For testing, use the full {self.task.name}.json.gz (data_home / data_file / download)."
        )


def read_matbench_split(
    task: str, fold: int, split: str = "test", data_home: str | os.PathLike | None = None
) -> RawInputs:
    """The inputs of one official matbench v0.1 split (``split`` = ``"test"`` or ``"train"`` of ``fold``), in
    matbench's id order (``mb-...`` ids), unparsed, read from the task file the DataModule uses (``data_home``, else
    ``$MATMINER_DATA``, else matbench's download): structures, or formulas for a composition task."""
    if split not in ("test", "train"):
        raise UsageError(f"{param('split')} must be 'test' or 'train', got {split!r}")
    home = None if data_home is None else str(data_home)
    datamodule = MatbenchDataModule(task, fold=fold, data_home=home, progress=False)
    train_ids, test_ids = official_fold(datamodule.task.name, fold)
    wanted = test_ids if split == "test" else train_ids
    source = datamodule.source_file()
    if datamodule.task.input_type == "composition":
        table = read_matbench_json(
            source, datamodule.task.name, datamodule.task.n_samples, datamodule.task.target, "composition"
        )
        inputs = RawInputs(ids=table.ids, items=list(table.structures or []), labels=list(table.ids), errors=[])
    else:
        inputs = read_inputs(source, default_ids=matbench_default_ids)
    position = {sid: k for k, sid in enumerate(inputs.ids)}
    unreadable = {e[0] for e in inputs.errors}
    missing = [sid for sid in wanted if sid not in position and sid not in unreadable]
    if missing:
        raise UsageError(
            f"{source} lacks {len(missing)} of the {len(wanted)} {split} ids of {datamodule.task.name} fold {fold} "
            f"(first: {missing[0]}); give {param('data.data_home')} the folder of the full matbench file."
        )
    keep = [position[sid] for sid in wanted if sid in position]
    wanted_set = set(wanted)
    return RawInputs(
        ids=[inputs.ids[k] for k in keep],
        items=[inputs.items[k] for k in keep],
        labels=[inputs.labels[k] for k in keep],
        errors=[e for e in inputs.errors if e[0] in wanted_set],
    )
