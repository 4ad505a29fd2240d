"""Matbench v0.1 leaderboard runner for SA-GNN (and its w/o-MHSA ablation).

Everything that touches the benchmark goes through matbench's own API::

    mb = MatbenchBenchmark(autoload=False, subset=[...])
    task.df = <local matbench-layout file, shaped as matbench.data_ops.load shapes it>  # or task.load()
    for fold in task.folds:
        train_df = task.get_train_and_val_data(fold, as_type="df")        # training + validation rows
        test_df = task.get_test_data(fold, as_type="df", include_target=False)
        ... train (validation carved from train_df only), predict test_df ...
        task.record(fold, predictions, params={...})                      # matbench scores it
    mb.add_metadata({...}); mb.to_file(...)

* Hyper-parameters are fixed in advance (the recipes' YAML: ``recipes/configs/sagnn.yaml`` +
  ``recipes/configs/matbench_<task>.yaml``; ``--max-epochs`` sets the budget); no test data is used
  for any choice. The checkpoint with the lowest validation MAE (validation = a seeded
  ``val_fraction`` of the fold's *training* rows) predicts the test set.
* Graphs come from the project's on-disk graph cache (``--cache-dir``, default ``$SAGNN_CACHE_DIR`` or the user
  cache dir): built once per task and cutoff (``--graph-workers`` processes), memory-mapped, reused by every fold
  and every later run. The cache holds no targets (NaN): each fold's ``y`` comes from matbench's
  ``get_train_and_val_data`` only.
* ``--checkpoint-dir <dir>`` keeps the checkpoint that predicted each fold as ``<dir>/<task>/fold_<k>.ckpt``
  (weights and target statistics; the model's arguments are ``user_metadata["configs"][task]["model"]``).
* Resumable per fold: after each fold, ``results.json.gz`` (written by ``MatbenchBenchmark.to_file``,
  to a temporary file then ``os.replace``) and ``info.json`` are saved; a rerun reloads the file and
  skips recorded folds. A run with a different configuration into the same folder is refused.
* Note: matbench's ``to_file``/``from_file`` write and read *plain* JSON whatever the file name —
  the ``results.json.gz`` of matbench submissions is that file, so this runner keeps matbench's format.
* Classification (``matbench_mp_is_metal``): probabilities are recorded; matbench's stored ``rocauc``
  is computed after its ``accuracy`` step has turned the predictions into 0/1 labels, so it equals the
  balanced accuracy. The true ROC-AUC from the probabilities is stored beside it in each fold's
  ``parameters`` (``rocauc_from_probabilities``) and in the metadata.

Usage (offline, shared data; the stored results used 50 epochs for jdft2d, 40 for phonons)::

    python benchmarks/matbench_v0.1_sagnn/run.py --tasks matbench_jdft2d --variant sagnn \
        --max-epochs 50 --data-home ../shared/data/matbench --threads 1
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG_DIR = HERE.parents[1] / "recipes" / "configs"
RESULTS_FILE = "results.json.gz"
INFO_FILE = "info.json"

#: the two variants of issue 7: SA-GNN (8 heads, MHSA after the last block) and the w/o-MHSA ablation
VARIANTS: dict[str, dict[str, Any]] = {
    "sagnn": {"attention": "last", "heads": 8},
    "no_mhsa": {"attention": "none"},
}
ALGORITHM_NAMES = {"sagnn": "SA-GNN", "no_mhsa": "SA-GNN w/o MHSA"}

#: used when recipes/configs is absent: the same values as recipes/configs/sagnn.yaml (MEGNet's published ones)
FALLBACK_MODEL: dict[str, Any] = {
    "atom_embedding_dim": 16, "num_gaussians": 100, "gaussian_width": 0.5, "num_blocks": 3, "hidden_dim": 32,
    "dense_hidden": 64, "conv_hidden": [64, 64], "heads": 8, "attention": "last", "readout_hidden": [32, 16],
    "dropout": 0.0,
}
FALLBACK_TRAINING: dict[str, Any] = {
    "loss": "l1", "lr": 1e-3, "scheduler": {"factor": 0.5, "patience": 10, "min_lr": 1e-5},
    "gradient_clip_val": 5.0, "batch_size": 32, "val_fraction": 0.1, "cutoff": 5.0,
}

BIBTEX_REFS = r"""@article{Cui2024SAGNN,
  author = {Cui, Yasen and Zhu, Jian and Zhou, Wei and Zang, Huaijuan and Ren, Yongsheng and Xu, Jiajia and Zhan, Shu and Ma, Wenhui},
  title = {{SA-GNN}: Prediction of material properties using graph neural network based on multi-head self-attention optimization},
  journal = {AIP Advances},
  volume = {14},
  number = {5},
  year = {2024},
  publisher = {AIP Publishing},
  doi = {10.1063/5.0186891}
}
@article{Chen2019MEGNet,
  author = {Chen, Chi and Ye, Weike and Zuo, Yunxing and Zheng, Chen and Ong, Shyue Ping},
  title = {Graph Networks as a Universal Machine Learning Framework for Molecules and Crystals},
  journal = {Chemistry of Materials},
  volume = {31},
  number = {9},
  pages = {3564--3572},
  year = {2019},
  doi = {10.1021/acs.chemmater.9b01294}
}
@article{Dunn2020,
  author = {Dunn, Alexander and Wang, Qi and Ganose, Alex and Dopp, Daniel and Jain, Anubhav},
  title = {Benchmarking materials property prediction methods: the Matbench test set and Automatminer reference algorithm},
  journal = {npj Computational Materials},
  volume = {6},
  number = {1},
  pages = {138},
  year = {2020},
  doi = {10.1038/s41524-020-00406-3}
}"""

log = logging.getLogger("matbench_v0.1_sagnn")


# ---------------------------------------------------------------------------------------------- config
def fixed_config(task: str, variant: str, max_epochs: int, config_dir: Path | None,
                 model_overrides: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The run's fixed configuration (chosen before any test data is seen).

    Read from the recipes' YAML (``sagnn.yaml`` + ``matbench_<task>.yaml``) when ``config_dir`` holds
    them, else the same values built in; then the variant, ``model_overrides`` and the epoch budget.
    """
    model = dict(FALLBACK_MODEL)
    training = copy.deepcopy(FALLBACK_TRAINING)
    sources: list[str] = []
    if config_dir is not None:
        import yaml

        base, task_file = config_dir / "sagnn.yaml", config_dir / f"{task}.yaml"
        if base.is_file():
            cfg = yaml.safe_load(base.read_text()) or {}
            model_cfg = cfg.get("model", {})
            model.update((model_cfg.get("model") or {}).get("init_args") or {})
            training["loss"] = model_cfg.get("loss", training["loss"])
            training["lr"] = float(((model_cfg.get("optimizer") or {}).get("init_args") or {}).get("lr", training["lr"]))
            sched = (model_cfg.get("scheduler") or {}).get("init_args")
            if sched:
                training["scheduler"] = {k: float(v) if k != "patience" else int(v) for k, v in sched.items()}
            training["gradient_clip_val"] = float((cfg.get("trainer") or {}).get("gradient_clip_val",
                                                                                 training["gradient_clip_val"]))
            sources.append(str(base))
        if task_file.is_file():
            data = ((yaml.safe_load(task_file.read_text()) or {}).get("data") or {}).get("init_args") or {}
            for key in ("batch_size", "val_fraction", "cutoff"):
                if key in data:
                    training[key] = data[key]
            sources.append(str(task_file))
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    model.update(VARIANTS[variant])
    model.update(model_overrides or {})
    model["cutoff"] = float(training["cutoff"])
    if max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {max_epochs}")
    return {"task": task, "variant": variant, "model": model, "training": training, "max_epochs": int(max_epochs),
            "seed": int(seed), "config_files": [Path(s).name for s in sources]}


# ---------------------------------------------------------------------------------------------- data
def local_task_frame(task_name: str, data_home: Path) -> Any:
    """The task's DataFrame exactly as ``matbench.data_ops.load`` shapes it, from a local file.

    ``<data_home>/<task>.json.gz`` in matminer's layout (pandas ``orient="split"``): read with matminer's
    own reader (structures decoded), index = matbench ids ``mb-<task>-<i+1, zero-padded>``, columns
    ``[structure, <target>]``. The file must hold the whole task (every fold's test rows are needed).
    """
    from matbench.metadata import mbv01_metadata
    from matminer.utils.io import load_dataframe_from_json

    meta = mbv01_metadata[task_name]
    path = Path(data_home).expanduser() / f"{task_name}.json.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{task_name}: expected the matbench-layout file {path}; put {path.name} there (matminer's download "
            "or any orient='split' copy), pass --data-home <folder holding it>, or leave --data-home out to "
            "download it through matbench."
        )
    df = load_dataframe_from_json(str(path), pbar=False)
    n = int(meta.n_samples)
    if len(df) != n or not set(range(n)) <= {int(i) for i in df.index}:
        raise ValueError(f"{path}: {len(df)} rows with index {df.index.min()}..{df.index.max()}, but {task_name} has "
                         f"{n} rows 0..{n - 1}; the runner needs the whole task (all folds' test rows).")
    from sagnn_lightning.data.sources import matbench_ids

    df = df.copy()
    df["mbid"] = matbench_ids(task_name, df.index, n)  # the same rule as matbench.data_ops.load
    df = df.set_index("mbid")
    return df[[meta.input_type, meta.target]]


def task_fingerprint(task_name: str, ids: Sequence[str], source: Path | None) -> str:
    """Graph-cache fingerprint of a task's structures (the cache key also holds the graph settings).

    * local file (``source``): sha256 of its bytes (:func:`sagnn_lightning.data.sources.fingerprint`), tagged
      ``kind="matbench-runner"``. The tag keeps this entry apart from ``MatbenchDataModule``'s one for the same
      file: the runner caches NaN targets (it never lets test targets into the cache), the DataModule caches the
      real ones, and the same key with other targets would be rebuilt by each in turn.
    * matbench's download (``source=None``): sha256 of the task name, the matbench and matminer versions and the
      ordered matbench ids. matminer checks the downloaded file against the sha256 pinned in its dataset
      metadata, so these identify the content without hashing (or even locating) the file.
    """
    if source is not None:
        from sagnn_lightning.data.sources import fingerprint

        return fingerprint(source, kind="matbench-runner", task=task_name, targets=None)
    payload = {"kind": "matbench-runner-download", "task": task_name, "ids": [str(i) for i in ids]}
    for pkg in ("matbench", "matminer"):
        try:
            payload[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            payload[pkg] = None
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def task_graphs(task_name: str, frame: Any, input_column: str, cutoff: float, cache_dir: Path | None, *,
                source: Path | None = None, num_workers: int = 0, progress: bool = False) -> tuple[Any, bool]:
    """Every structure of the task as graphs from the project's on-disk graph cache (built on a miss).

    Args:
        task_name: matbench task name.
        frame: the task's DataFrame (index = matbench ids, ``frame[input_column]`` = pymatgen Structures).
        input_column: the structure column (``task.metadata.input_type``).
        cutoff: neighbour cutoff (Å).
        cache_dir: graph cache folder (``None``: ``$SAGNN_CACHE_DIR``, else the user cache dir).
        source: the local matbench-layout file the frame was read from (``None``: matbench's download).
        num_workers: processes building graphs on a cache miss (0 = this process).
        progress: progress bar while building.

    Returns:
        ``(dataset, built)``: a memory-mapped :class:`~sagnn_lightning.data.dataset.GraphDataset` of all rows in
        ``frame`` order, whose ``y [1, 1]`` is NaN (targets are attached per fold from matbench's training data,
        see :class:`FoldGraphs`), and whether the graphs were built now (``False``: cache hit).
    """
    from sagnn_lightning.data.cache import load_or_build_graphs
    from sagnn_lightning.data.datamodule import resolve_cache_dir
    from sagnn_lightning.data.graph import GraphSettings

    ids = [str(i) for i in frame.index]
    built: list[bool] = []

    def structures() -> list[Any]:  # called by the cache on a miss only
        built.append(True)
        return list(frame[input_column])

    dataset = load_or_build_graphs(
        resolve_cache_dir(cache_dir), task_fingerprint(task_name, ids, source), ids, structures,
        np.full((len(ids), 1), np.nan), GraphSettings(cutoff=float(cutoff)), num_workers=int(num_workers),
        on_error="raise", progress=progress,
    )
    if dataset.sample_ids != ids:  # the fingerprint covers the ids; this guards the row mapping below
        raise RuntimeError(f"{task_name}: graph cache {dataset.path} holds other ids than the task; delete it.")
    return dataset, bool(built)


class FoldGraphs:
    """Rows of a task's cached graphs picked by matbench id (a ``Subset`` mapping mb id → dataset row).

    ``targets`` (one float per id, from matbench's training data) become ``y [1, 1]`` float32; without
    targets (test rows) the graphs carry no ``y`` at all.
    """

    def __init__(self, graphs: Any, row_of: dict[str, int], ids: Sequence[str],
                 targets: Sequence[float] | None = None) -> None:
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in the graph cache {getattr(graphs, 'path', '')} "
                           f"(e.g. {missing[:3]}); delete the cache file to rebuild it.")
        if targets is not None and len(targets) != len(ids):
            raise ValueError(f"got {len(targets)} targets for {len(ids)} ids")
        self.graphs, self.ids = graphs, list(ids)
        self.rows = [row_of[i] for i in self.ids]
        self.targets = None if targets is None else [float(t) for t in targets]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> Any:
        import torch

        graph = self.graphs[self.rows[k]]
        if self.targets is None:
            del graph.y
        else:
            graph.y = torch.tensor([[self.targets[k]]], dtype=torch.float32)
        return graph


# ---------------------------------------------------------------------------------------------- one fold
def train_and_predict(config: dict[str, Any], task_type: str, train_df: Any, test_df: Any, target: str,
                      graphs: Any, fold: int, workdir: Path) -> dict[str, Any]:
    """Train on the fold's training rows (validation carved from them), predict the test rows.

    ``graphs``: the task's cached graphs (:func:`task_graphs`; ``.sample_ids`` = matbench ids). Targets come
    only from ``train_df`` (matbench's training data); the test graphs carry none.

    Returns ``{"ids": [...], "predictions": np.ndarray [n_test] (real units or probabilities), "params": {...},
    "checkpoint": path of the checkpoint that predicted (the best by validation, inside ``workdir``)}``.
    """
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from sagnn_lightning.data.batch import collate_graphs
    from sagnn_lightning.data.matbench import carve_validation
    from sagnn_lightning.lit.module import SAGNNModule
    from sagnn_lightning.models.sagnn import SAGNN

    training, seed = config["training"], config["seed"]
    train_ids_all = [str(i) for i in train_df.index]
    y_all = dict(zip(train_ids_all, train_df[target].astype(float).to_numpy()))
    train_ids, val_ids = carve_validation(train_ids_all, float(training["val_fraction"]), seed)
    y_train = np.array([y_all[i] for i in train_ids])
    if task_type == "classification":
        mean, std = [0.0], [1.0]
    else:
        mean, std = [float(y_train.mean())], [float(y_train.std()) or 1.0]

    pl.seed_everything(seed + fold, workers=True, verbose=False)
    batch_size = int(training["batch_size"])
    loader = functools.partial(DataLoader, batch_size=batch_size, collate_fn=collate_graphs, num_workers=0)
    row_of = {sid: k for k, sid in enumerate(graphs.sample_ids)}
    train_loader = loader(FoldGraphs(graphs, row_of, train_ids, [y_all[i] for i in train_ids]), shuffle=True,
                          generator=torch.Generator().manual_seed(seed + fold))
    val_loader = loader(FoldGraphs(graphs, row_of, val_ids, [y_all[i] for i in val_ids]), shuffle=False)
    test_ids = [str(i) for i in test_df.index]
    test_loader = loader(FoldGraphs(graphs, row_of, test_ids), shuffle=False)

    model = SAGNN(num_targets=1, **config["model"])
    sched = training.get("scheduler")
    module = SAGNNModule(
        model=model, task_type=task_type, target_mean=mean, target_std=std, target_names=[target],
        loss=training["loss"], optimizer=functools.partial(torch.optim.Adam, lr=float(training["lr"])),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, **sched) if sched else None,
    )
    monitor, mode = module.monitor
    checkpoint = ModelCheckpoint(dirpath=workdir, filename="best", monitor=monitor, mode=mode, save_top_k=1)
    trainer = pl.Trainer(
        max_epochs=config["max_epochs"], accelerator="cpu", devices=1, logger=False, callbacks=[checkpoint],
        gradient_clip_val=float(training["gradient_clip_val"]), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=workdir, deterministic=False,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    outputs = trainer.predict(module, dataloaders=test_loader, ckpt_path=checkpoint.best_model_path or None,
                              weights_only=False)
    t_predict = time.perf_counter() - t1
    ids = [i for out in outputs for i in out["sample_id"]]
    key = "probability" if task_type == "classification" else "prediction"
    predictions = torch.cat([out[key] for out in outputs]).reshape(-1).double().numpy()
    if ids != test_ids:
        raise RuntimeError(f"{config['task']} fold {fold}: predicted ids differ from matbench's test index "
                           f"(first mismatch at {next(k for k, (a, b) in enumerate(zip(ids, test_ids)) if a != b)}"
                           f" of {len(test_ids)}); refusing to record misaligned predictions.")
    if not np.all(np.isfinite(predictions)):
        raise RuntimeError(f"{config['task']} fold {fold}: {int((~np.isfinite(predictions)).sum())} non-finite "
                           "predictions; training diverged (lower the learning rate).")
    best = checkpoint.best_model_score
    params = {
        "epochs_run": int(trainer.current_epoch), "max_epochs": int(config["max_epochs"]),
        "best_val_" + monitor.split("/")[-1]: float(best) if best is not None else float("nan"),
        "n_train": len(train_ids), "n_val": len(val_ids), "n_test": len(test_ids),
        "train_seconds": round(t_train, 2), "predict_seconds": round(t_predict, 2),
        "seconds_per_epoch": round(t_train / max(int(trainer.current_epoch), 1), 3),
        "torch_threads": int(torch.get_num_threads()), "seed": seed + fold,
    }
    return {"ids": ids, "predictions": predictions, "params": params,
            "checkpoint": checkpoint.best_model_path or None}


def classification_extras(truth: Sequence[bool], probabilities: np.ndarray) -> dict[str, float]:
    """Scores stored beside matbench's for a classification fold.

    matbench's ``score_array`` turns float predictions into 0/1 labels for ``accuracy`` and then scores
    ``rocauc`` on those labels, so its ``rocauc`` equals the balanced accuracy. Returns
    ``{"rocauc_from_probabilities": ROC-AUC of the probabilities [n] against the 0/1 truth [n]}``.
    """
    from sklearn.metrics import roc_auc_score

    return {"rocauc_from_probabilities": float(roc_auc_score(np.asarray(truth, dtype=bool),
                                                             np.asarray(probabilities, dtype=float)))}


# ---------------------------------------------------------------------------------------------- files
def _atomic_write(path: Path, write) -> None:
    """``write(name)`` writes the file by name; it then replaces ``path`` atomically with the right mode
    (:func:`sagnn_lightning.files.atomic_write`: the umask for a new file, the old mode for a replaced one)."""
    from sagnn_lightning.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        write(fh.name)


def load_results(path: Path, tasks: Sequence[str]) -> Any:
    """A ``MatbenchBenchmark`` holding ``tasks`` plus whatever ``path`` already recorded.

    A complete file is read with ``MatbenchBenchmark.from_file`` (which validates every task). matbench
    refuses to load a file with unrecorded folds (``MatbenchTask.from_dict`` validates, and validation
    needs all folds), so a partial file is read the way ``from_dict`` does — same hash check — and its
    per-fold results are put back without the all-folds validation.
    """
    from matbench.bench import MatbenchBenchmark
    from matbench.util import RecursiveDotDict, hash_dictionary

    if not path.is_file():
        return MatbenchBenchmark(autoload=False, subset=list(tasks))
    try:
        mb = MatbenchBenchmark.from_file(str(path))
    except ValueError as err:
        if "not recorded" not in str(err):
            raise
        d = json.loads(path.read_text())
        stored = d.pop("hash", None)
        if stored != hash_dictionary(d):
            raise ValueError(f"{path}: hash mismatch, the file was modified after matbench wrote it; "
                             "delete it to start over.") from err
        mb = MatbenchBenchmark(autoload=False, subset=list(d["tasks"]))
        for name, task_dict in d["tasks"].items():
            mb.tasks_map[name].results = RecursiveDotDict(task_dict["results"])
        mb.user_metadata = d["user_metadata"]
    missing = [t for t in tasks if t not in mb.tasks_map]
    if missing:
        from matbench.task import MatbenchTask

        for name in missing:
            mb.tasks_map[name] = MatbenchTask(name, autoload=False, benchmark=mb.benchmark_name)
    return mb


def requirements() -> dict[str, list[str]]:
    """Exact versions of what produced the results (``info.json``'s ``requirements``)."""
    pkgs = ["torch", "pytorch-lightning", "torch_geometric", "torchmetrics", "pymatgen", "matminer", "matbench",
            "scikit-learn", "numpy", "pandas", "sagnn-lightning"]
    out = [f"python=={platform.python_version()}"]
    for name in pkgs:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == "sagnn-lightning":
                import sagnn_lightning

                out.append(f"sagnn-lightning=={sagnn_lightning.__version__} (source checkout)")
    return {"python": out}


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "accelerator": "cpu"}


def info_json(variant: str, configs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """matbench's submission ``info.json`` (keys checked by matbench's ``scripts/test_submission.py``)."""
    any_cfg = next(iter(configs.values()))
    model = any_cfg["model"]
    attention = {"last": f"{model.get('heads')}-head self-attention over the atoms of each crystal after the last "
                         "MEGNet block", "each": f"{model.get('heads')}-head self-attention after every block",
                 "none": "no self-attention (the paper's w/o-MHSA ablation, i.e. MEGNet)"}[model["attention"]]
    budget = ", ".join(f"{name}: {c['max_epochs']} epochs" for name, c in sorted(configs.items()))
    return {
        "authors": "sagnn-lightning contributors",
        "algorithm": ALGORITHM_NAMES[variant],
        "algorithm_long": (
            f"{ALGORITHM_NAMES[variant]} (sagnn-lightning {_pkg_version()}): MEGNet graph network (Chen et al. 2019: "
            f"atom embedding {model['atom_embedding_dim']}, {model['num_gaussians']} Gaussians on 0-{model['cutoff']} "
            f"A width {model['gaussian_width']}, {model['num_blocks']} MEGNet blocks of width {model['hidden_dim']}, "
            f"Set2Set readout on atoms and bonds) with {attention} (SA-GNN, Cui et al. 2024). Periodic crystal graphs "
            f"with a {model['cutoff']} A cutoff. Trained with L1 loss on standardised targets, Adam, "
            "ReduceLROnPlateau on the validation loss; the checkpoint with the lowest validation MAE (validation = "
            f"{any_cfg['training']['val_fraction']:.0%} of each fold's training rows) predicts the test fold. "
            f"Fixed hyper-parameters (recipes/configs); training budget per fold: {budget}."
        ),
        "bibtex_refs": BIBTEX_REFS,
        "notes": (
            "Fixed hyper-parameters chosen in advance; no tuning on test data. Budget far below the leaderboard "
            "models' (which train for hundreds to thousands of epochs on GPUs): see user_metadata in "
            f"results.json.gz for per-fold times and machine. Summary: {json.dumps(summary, sort_keys=True)}. "
            "For classification, matbench's stored 'rocauc' is computed from rounded predictions (= balanced "
            "accuracy); the true ROC-AUC from probabilities is in each fold's parameters."
        ),
        "requirements": requirements(),
    }


def _pkg_version() -> str:
    import sagnn_lightning

    return sagnn_lightning.__version__


def summarize(mb: Any) -> dict[str, Any]:
    """Per task: matbench's per-fold MAE (or ROC-AUC) and times, and mean ± std over recorded folds."""
    out: dict[str, Any] = {}
    for name, task in mb.tasks_map.items():
        key = "mae" if task.metadata.task_type == "regression" else "rocauc"
        folds = {}
        for k, fkey in task.folds_map.items():
            if task.is_recorded[k]:
                res = task.results[fkey]
                params = dict(res["parameters"])
                folds[fkey] = {key: float(res["scores"][key]), "train_seconds": params.get("train_seconds"),
                               "epochs_run": params.get("epochs_run")}
                if "rocauc_from_probabilities" in params:
                    folds[fkey]["rocauc_from_probabilities"] = params["rocauc_from_probabilities"]
        values = [f[key] for f in folds.values()]
        out[name] = {"metric": key, "folds": folds, "n_folds": len(values),
                     "mean": float(np.mean(values)) if values else None,
                     "std": float(np.std(values)) if values else None}
    return out


def save(mb: Any, out: Path, variant: str, configs: dict[str, dict[str, Any]], results: bool = True) -> None:
    """Metadata + atomic writes of ``results.json.gz`` (matbench's ``to_file``; skipped when ``results`` is
    false) and ``info.json``."""
    summary = summarize(mb)
    mb.user_metadata = {}  # rebuilt whole from the recorded folds (avoids matbench's "overwriting" warning)
    mb.add_metadata({"algorithm": ALGORITHM_NAMES[variant], "variant": variant,
                     "configs": json.loads(json.dumps(configs)), "machine": machine(),
                     "summary": json.loads(json.dumps(summary))})
    if results:
        _atomic_write(out / RESULTS_FILE, lambda tmp: mb.to_file(tmp))
    info = info_json(variant, configs, {t: {"mean": s["mean"], "std": s["std"], "n_folds": s["n_folds"]}
                                        for t, s in summary.items()})
    _atomic_write(out / INFO_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))


# ---------------------------------------------------------------------------------------------- main
def run(tasks: Sequence[str], folds: Sequence[int], variant: str, max_epochs: int, out: Path,
        data_home: Path | None = None, config_dir: Path | None = DEFAULT_CONFIG_DIR, threads: int | None = None,
        model_overrides: dict[str, Any] | None = None, seed: int = 0, cache_dir: Path | None = None,
        graph_workers: int = 0, checkpoint_dir: Path | None = None) -> Any:
    """Train/predict/record the requested folds (skipping recorded ones); returns the ``MatbenchBenchmark``.

    Graphs come from the project's on-disk graph cache in ``cache_dir`` (``None``: ``$SAGNN_CACHE_DIR``, else
    the user cache dir), built once per task and cutoff with ``graph_workers`` processes, reused by every fold
    and every later run. With ``checkpoint_dir``, the checkpoint that predicted each trained fold is kept as
    ``<checkpoint_dir>/<task>/fold_<k>.ckpt`` (weights + target statistics; the model's arguments are the
    task's ``configs[task]["model"]`` in the results' ``user_metadata``).
    """
    import torch

    from sagnn_lightning.data.matbench import get_task

    if threads:
        torch.set_num_threads(int(threads))
    tasks = [get_task(t).name for t in tasks]
    out = Path(out)
    mb = load_results(out / RESULTS_FILE, tasks)
    stored_configs = dict(mb.user_metadata.get("configs", {})) if mb.user_metadata else {}
    configs = {}
    for name in tasks:
        cfg = fixed_config(name, variant, max_epochs, config_dir, model_overrides, seed)
        old = stored_configs.get(name)
        if old is not None and json.loads(json.dumps(old)) != json.loads(json.dumps(cfg)):
            recorded = [k for k, v in mb.tasks_map[name].is_recorded.items() if v]
            if recorded:
                new = json.loads(json.dumps(cfg))
                diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
                raise ValueError(f"{out / RESULTS_FILE} holds {name} folds {recorded} recorded with another "
                                 f"configuration (stored vs requested: {diff}); rerun with the stored settings, "
                                 "use another --out, or delete the file to start over.")
        configs[name] = cfg
    configs = {**stored_configs, **configs}

    for name in tasks:
        task = mb.tasks_map[name]
        todo = [f for f in folds if not task.is_recorded[f]]
        for f in folds:
            if task.is_recorded[f]:
                print(f"[{variant}] {name} fold {f}: already recorded in {out / RESULTS_FILE}, skipped", flush=True)
        if not todo:
            continue
        t_load = time.perf_counter()
        source = None
        if data_home is not None:
            source = Path(data_home).expanduser() / f"{name}.json.gz"
            task.df = local_task_frame(name, Path(data_home))
        else:
            task.load()
        meta = task.metadata
        graphs, built = task_graphs(name, task.df, meta.input_type, float(configs[name]["training"]["cutoff"]),
                                    cache_dir, source=source, num_workers=graph_workers,
                                    progress=sys.stderr.isatty())
        # the graphs are on disk now: matbench's fold API only needs the index and the target column
        task.df = task.df.assign(**{meta.input_type: None})
        t_graphs = time.perf_counter() - t_load
        how = "graphs built into" if built else "graphs read from"
        print(f"[{variant}] {name}: {len(graphs)} crystals loaded in {t_graphs:.1f} s ({how} the graph cache "
              f"{graphs.path})", flush=True)
        for fold in todo:
            t0 = time.perf_counter()
            train_df = task.get_train_and_val_data(fold, as_type="df")
            test_df = task.get_test_data(fold, as_type="df", include_target=False)
            if meta.target in test_df.columns:  # matbench's contract: never seen by the model
                raise RuntimeError("matbench returned test targets with include_target=False")
            with tempfile.TemporaryDirectory(prefix=f"sagnn-{name}-fold{fold}-") as workdir:
                result = train_and_predict(configs[name], meta.task_type, train_df, test_df, meta.target, graphs,
                                           fold, Path(workdir))
                if checkpoint_dir is not None and result.get("checkpoint"):
                    kept = Path(checkpoint_dir) / name / f"fold_{fold}.ckpt"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(result["checkpoint"], kept)
            params = dict(result["params"])
            params["fold_seconds"] = round(time.perf_counter() - t0, 2)
            params["graph_seconds_task"] = round(t_graphs, 2)
            if list(test_df.index) != list(task.validation[task.folds_map[fold]].test):
                raise RuntimeError(f"{name} fold {fold}: test ids differ from matbench's validation file")
            predictions = result["predictions"]
            if meta.task_type == "classification":
                truth = task.get_test_data(fold, as_type="tuple", include_target=True)[1]  # scoring only
                params.update(classification_extras(truth, predictions))
            task.record(fold, predictions.astype(float), params=params)
            save(mb, out, variant, configs)
            scores = task.results[task.folds_map[fold]]["scores"]
            shown = (f"MAE {scores['mae']:.4g} {meta.unit}" if meta.task_type == "regression" else
                     f"rocauc(matbench, rounded) {scores['rocauc']:.4f}, "
                     f"rocauc(probabilities) {params['rocauc_from_probabilities']:.4f}")
            print(f"[{variant}] {name} fold {fold}: {shown}; {params['epochs_run']} epochs, "
                  f"train {params['train_seconds']:.0f} s, fold {params['fold_seconds']:.0f} s "
                  f"-> {out / RESULTS_FILE}", flush=True)
        task.df = None  # free the structures before the next task
    if (out / RESULTS_FILE).is_file():
        save(mb, out, variant, configs, results=False)  # info.json always reflects this code and the whole file
    return mb


def _parse_overrides(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-overrides must be a JSON object, e.g. '{\"hidden_dim\": 16}'")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["matbench_jdft2d", "matbench_phonons"],
                        help="matbench structure tasks (the matbench_ prefix may be left out)")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], choices=range(5))
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="sagnn",
                        help="sagnn: 8-head MHSA after the last block; no_mhsa: the w/o-MHSA ablation")
    parser.add_argument("--max-epochs", type=int, default=500, help="training budget per fold (epochs)")
    parser.add_argument("--data-home", type=Path, default=None,
                        help="folder with <task>.json.gz in matbench layout (default $MATMINER_DATA if it holds "
                             "the file, else download through matbench)")
    parser.add_argument("--out", type=Path, default=None,
                        help="submission folder for results.json.gz + info.json (default: results/<variant>/ "
                             "beside this script)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                        help="folder with sagnn.yaml and matbench_<task>.yaml (fixed hyper-parameters)")
    parser.add_argument("--model-overrides", type=_parse_overrides, default=None,
                        help="JSON object of SAGNN arguments overriding the config (e.g. tiny test models)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="graph cache folder (default $SAGNN_CACHE_DIR, else the user cache dir, e.g. "
                             "~/.cache/sagnn_lightning/graphs); graphs are built once per task and cutoff")
    parser.add_argument("--graph-workers", type=int, default=0,
                        help="processes building graphs on a cache miss (default 0: this process)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="keep the checkpoint that predicted each trained fold as "
                             "<dir>/<task>/fold_<k>.ckpt (default: not kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data_home = args.data_home
    if data_home is None and os.environ.get("MATMINER_DATA"):
        data_home = Path(os.environ["MATMINER_DATA"])
    out = args.out or HERE / "results" / args.variant
    import matbench.bench  # noqa: F401  (its import installs an INFO stdout handler: quiet it afterwards)

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("matbench").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    mb = run(args.tasks, args.folds, args.variant, args.max_epochs, out, data_home,
             args.config_dir if args.config_dir and args.config_dir.is_dir() else None, args.threads,
             args.model_overrides, args.seed, args.cache_dir, args.graph_workers, args.checkpoint_dir)
    for name, s in summarize(mb).items():
        if s["n_folds"]:
            print(f"[{args.variant}] {name}: {s['metric']} {s['mean']:.4g} ± {s['std']:.3g} over {s['n_folds']} "
                  "folds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
