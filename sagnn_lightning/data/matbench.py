"""``MatbenchDataModule``: the 9 structure tasks of matbench v0.1 with the official folds.

Folds are matbench's own (KFold 5, shuffle, random_state 18012019), read id by id from the
``matbench_v0.1_validation.json`` shipped in the ``matbench`` package. Validation rows are
carved, seeded, from the fold's *training* part only; test = the fold's test part.

Where the rows come from (first match wins):

1. ``data_file``: a matbench-layout ``*.json(.gz)`` (or a ``*.csv(.gz)`` with ``mbid``, ``cif`` and
   the target column) — may cover only some folds (see below);
2. ``data_home`` (or ``$MATMINER_DATA``): the file ``<data_home>/<task>.json.gz``;
3. otherwise matbench's own loader (``MatbenchBenchmark(subset=[task])``, ``task.load()``), which
   downloads the official file through matminer.

A file that covers only part of the task (e.g. fold 0's training rows) is accepted when it holds
every *training* row of the requested fold: ``setup("fit")`` works, while the test split raises
an error naming the missing rows (a test set that is not matbench's is never invented).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sagnn_lightning.data.datamodule import GraphDataModule, TaskType
from sagnn_lightning.data.sources import (
    DataFormatError, Table, _base_suffix, fingerprint, read_matbench_json, read_table,
)

MATMINER_ENV = "MATMINER_DATA"
NUM_FOLDS = 5


@dataclass(frozen=True)
class MatbenchTask:
    """Metadata of one matbench v0.1 structure task.

    Attributes:
        name: ``matbench_<...>``.
        target: target column in the dataset.
        unit: target unit (``None`` for classification).
        task_type: ``"regression"`` or ``"classification"``.
        n_samples: rows in the full task.
    """

    name: str
    target: str
    unit: str | None
    task_type: TaskType
    n_samples: int


#: the 9 structure tasks of matbench v0.1 (8 regression, 1 classification)
MATBENCH_TASKS: dict[str, MatbenchTask] = {t.name: t for t in (
    MatbenchTask("matbench_dielectric", "n", "unitless", "regression", 4764),
    MatbenchTask("matbench_jdft2d", "exfoliation_en", "meV/atom", "regression", 636),
    MatbenchTask("matbench_log_gvrh", "log10(G_VRH)", "log10(GPa)", "regression", 10987),
    MatbenchTask("matbench_log_kvrh", "log10(K_VRH)", "log10(GPa)", "regression", 10987),
    MatbenchTask("matbench_mp_e_form", "e_form", "eV/atom", "regression", 132752),
    MatbenchTask("matbench_mp_gap", "gap pbe", "eV", "regression", 106113),
    MatbenchTask("matbench_mp_is_metal", "is_metal", None, "classification", 106113),
    MatbenchTask("matbench_perovskites", "e_form", "eV/unit cell", "regression", 18928),
    MatbenchTask("matbench_phonons", "last phdos peak", "cm^-1", "regression", 1265),
)}

#: composition-only tasks of matbench v0.1 (no crystal structure: not supported by a graph model yet)
MATBENCH_COMPOSITION_TASKS: tuple[str, ...] = (
    "matbench_expt_gap", "matbench_expt_is_metal", "matbench_glass", "matbench_steels",
)


def get_task(name: str) -> MatbenchTask:
    """Task metadata by name (``"matbench_jdft2d"`` or ``"jdft2d"``).

    Raises:
        NotImplementedError: composition-only task.
        ValueError: unknown task (the message lists the valid ones).
    """
    full = name if name.startswith("matbench_") else f"matbench_{name}"
    if full in MATBENCH_TASKS:
        return MATBENCH_TASKS[full]
    if full in MATBENCH_COMPOSITION_TASKS:
        raise NotImplementedError(
            f"{full} is a composition-only matbench task (no crystal structures); SA-GNN needs structures, "
            f"so it is not supported yet. Structure tasks: {sorted(MATBENCH_TASKS)}."
        )
    raise ValueError(f"unknown matbench task {name!r}; valid structure tasks: {sorted(MATBENCH_TASKS)}.")


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


class MatbenchDataModule(GraphDataModule):
    """A matbench v0.1 structure task, one official fold.

    Args:
        task: task name, e.g. ``"matbench_jdft2d"`` (the ``matbench_`` prefix may be left out).
        fold: official fold, 0–4.
        data_home: folder holding ``<task>.json.gz`` (matbench layout); default ``$MATMINER_DATA``
            when that file exists there, else download through matbench.
        data_file: a matbench-layout ``.json(.gz)`` (or ``.csv(.gz)`` with ``mbid``/``cif``) of this task.
        cutoff: neighbour cutoff (Å). max_neighbors: optional cap per atom.
        batch_size: graphs per batch. val_fraction: share of the fold's training rows used for validation.
        split_seed: seed of the validation carve and of the training shuffle.
        num_workers: DataLoader workers. graph_workers: processes building graphs on a cache miss.
        cache_dir: graph cache folder (default ``$SAGNN_CACHE_DIR`` or the user cache dir).
        on_error: ``"raise"`` (default) or ``"skip"`` bad rows (counted, listed in ``self.skipped``).
        download: allow matbench to download when no local file is given.
        progress: show a progress bar while building graphs.

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
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
        graph_workers: int = 0,
        cache_dir: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        download: bool = True,
        progress: bool = True,
    ) -> None:
        super().__init__(cutoff=cutoff, max_neighbors=max_neighbors, batch_size=batch_size, split_seed=split_seed,
                         num_workers=num_workers, graph_workers=graph_workers, cache_dir=cache_dir,
                         on_error=on_error, progress=progress)
        self.save_hyperparameters()
        self.task = get_task(task)
        if not 0 <= fold < NUM_FOLDS:
            raise ValueError(f"fold must be in 0..{NUM_FOLDS - 1}, got {fold}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.fold = fold
        self.val_fraction = val_fraction
        self.download = download
        self.data_file = self._local_file(data_home, data_file)
        self._matbench_fold: tuple[list[str], list[str]] | None = None

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
                raise FileNotFoundError(
                    f"matbench data file {path} not found; give the path of a matbench-layout {expected} "
                    "(pandas orient='split'), or pass data_home=<folder holding it>."
                )
            return path
        if data_home is not None:
            path = Path(data_home).expanduser() / expected
            if not path.is_file():
                raise FileNotFoundError(
                    f"matbench dataset not found: expected {path}. Put the matbench v0.1 file {expected} "
                    f"(matminer's download, or any matbench-layout copy) in {Path(data_home).expanduser()}, "
                    "pass data_file=<path>, or leave data_home unset to download it through matbench."
                )
            return path
        env = os.environ.get(MATMINER_ENV)
        if env and (Path(env).expanduser() / expected).is_file():
            return Path(env).expanduser() / expected
        if not self.download:
            where = Path(env).expanduser() if env else Path("<data_home>")
            raise FileNotFoundError(
                f"matbench dataset not found offline: expected {where / expected}. Put {expected} there "
                f"(or set ${MATMINER_ENV} / data_home to its folder, or pass data_file), or allow download=True."
            )
        return None

    def _read_table(self) -> Table:
        if self.data_file is None:
            return self._read_with_matbench()
        if _base_suffix(self.data_file) == ".csv":
            return read_table(self.data_file, [self.task.target], id_column="mbid", structure_column="cif")
        return read_matbench_json(self.data_file, self.task.name, self.task.n_samples, self.task.target)

    def _read_with_matbench(self) -> Table:
        """Online path: matbench's own loading and fold API (downloads through matminer)."""
        MatbenchBenchmark = _import_matbench("matbench.bench").MatbenchBenchmark
        benchmark = MatbenchBenchmark(autoload=False, subset=[self.task.name])
        mb_task = benchmark.tasks_map[self.task.name]
        try:
            mb_task.load()
        except Exception as err:  # network / file errors from matminer
            raise FileNotFoundError(
                f"could not load {self.task.name} through matbench ({type(err).__name__}: {err}). Offline? Put "
                f"{self.task.name}.json.gz in a folder and pass data_home=<folder> (or set ${MATMINER_ENV}), "
                "or pass data_file=<path>."
            ) from err
        train = mb_task.get_train_and_val_data(self.fold, as_type="df")
        test = mb_task.get_test_data(self.fold, as_type="df", include_target=True)
        self._matbench_fold = (list(train.index), list(test.index))
        df = mb_task.df
        source = self._matminer_file()
        table = Table(ids=[str(i) for i in df.index], structures=list(df["structure"]),
                      targets=df[[self.task.target]].to_numpy(dtype=np.float64), target_names=[self.task.target],
                      source=source if source.is_file() else Path(self.task.name))
        return table

    def _matminer_file(self) -> Path:
        from matminer.datasets.utils import _get_data_home

        return Path(_get_data_home()) / f"{self.task.name}.json.gz"

    def _ensure_download(self) -> Path:
        """Download the official file through matminer (hash-checked) without parsing it."""
        path = self._matminer_file()
        if path.is_file():
            return path
        try:
            from matminer.datasets.utils import _load_dataset_dict, _validate_dataset

            meta = _load_dataset_dict()[self.task.name]
            _validate_dataset(str(path), meta["url"], meta["hash"], download_if_missing=True)
        except Exception as err:  # network / file errors from matminer
            raise FileNotFoundError(
                f"could not download {self.task.name} through matminer to {path} ({type(err).__name__}: {err}). "
                f"Offline? Put {path.name} in a folder and pass data_home=<folder> (or set ${MATMINER_ENV}), "
                "or pass data_file=<path>."
            ) from err
        return path

    def _fingerprint(self) -> str:
        path = self.data_file if self.data_file is not None else self._ensure_download()
        return fingerprint(path, kind="matbench", task=self.task.name, targets=[self.task.target])

    # ---------------------------------------------------------------- splits
    def _split_ids(self, table: Table) -> dict[str, list[str] | None]:
        train_ids, test_ids = self._matbench_fold or official_fold(self.task.name, self.fold)
        present = set(self.file_ids)
        missing_train = [i for i in train_ids if i not in present]
        if missing_train:
            raise DataFormatError(
                f"{table.source} lacks {len(missing_train)} of the {len(train_ids)} training rows of "
                f"{self.task.name} fold {self.fold} (e.g. {missing_train[:3]}); {self._coverage(present)}. "
                f"Use a fold it covers or the full {self.task.name}.json.gz."
            )
        usable = set(table.ids)
        train, val = carve_validation(train_ids, self.val_fraction, self.split_seed)
        test: list[str] | None = [i for i in test_ids if i in usable]
        missing_test = [i for i in test_ids if i not in present]
        self._missing_test = missing_test
        if missing_test:
            test = None
        return {"train": [i for i in train if i in usable], "val": [i for i in val if i in usable], "test": test}

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

