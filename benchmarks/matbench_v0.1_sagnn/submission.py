"""The runner's submission: matbench's ``results.json.gz`` (read back, also when some folds are not recorded yet,
and written atomically with the runner's metadata) and matbench's ``info.json`` (the algorithm's description,
references and requirements).

Everything about the results file goes through matbench's public API (``MatbenchBenchmark.from_file``,
``MatbenchTask``, ``add_metadata``, ``to_file``); matbench's ``to_file``/``from_file`` write and read *plain* JSON
whatever the file name, so ``results.json.gz`` is that file, as in matbench's own submissions.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json.gz"
INFO_FILE = "info.json"

ALGORITHM_NAMES = {"sagnn": "SA-GNN", "no_mhsa": "SA-GNN w/o MHSA"}

BIBTEX_REFS = r"""@article{Goodall2020Roost,
  author = {Goodall, Rhys E. A. and Lee, Alpha A.},
  title = {Predicting materials properties without crystal structure: deep representation learning from stoichiometry},
  journal = {Nature Communications},
  volume = {11},
  pages = {6280},
  year = {2020},
  doi = {10.1038/s41467-020-19964-7}
}
@article{Tshitoyan2019,
  author = {Tshitoyan, Vahe and Dagdelen, John and Weston, Leigh and Dunn, Alexander and Rong, Ziqin and Kononova, Olga and Persson, Kristin A. and Ceder, Gerbrand and Jain, Anubhav},
  title = {Unsupervised word embeddings capture latent knowledge from materials science literature},
  journal = {Nature},
  volume = {571},
  pages = {95--98},
  year = {2019},
  doi = {10.1038/s41586-019-1335-8}
}
@article{Cui2024SAGNN,
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


def matbench_frame(datamodule: Any, meta: Any, task_name: str) -> Any:
    """The task's frame for matbench's fold API and scoring: index = matbench ids, ``[structure, <target>]``, with
    the ids and targets the DataModule read (structures are not needed: the graphs are in the graph cache)."""
    import pandas as pd

    from sagnn_lightning.data.matbench_format import matbench_ids

    table = datamodule.table
    n = int(meta.n_samples)
    expected = set(matbench_ids(task_name, range(n), n))
    if set(table.ids) != expected:
        raise ValueError(
            f"{table.source}: {len(table.ids)} usable rows, but {task_name} has {n}; the runner needs the "
            "whole task (every fold's test rows). Give the full matbench file (--data-home)."
        )
    targets = table.targets[:, 0]
    if meta.task_type == "classification":
        targets = targets.astype(bool)
    return pd.DataFrame({meta.input_type: [None] * n, meta.target: targets}, index=pd.Index(list(table.ids)))


# ---------------------------------------------------------------------------------------------- recording
def check_test_ids(task: Any, fold: int, ids: Sequence[str]) -> None:
    """Refuses predictions whose ids are not matbench's test ids of ``fold``, in matbench's order."""
    test_ids = list(task.validation[task.folds_map[fold]].test)
    if list(ids) != test_ids:
        raise RuntimeError(
            f"{task.dataset_name} fold {fold}: predicted ids differ from matbench's test ids "
            f"({len(ids)} vs {len(test_ids)}); refusing to record misaligned predictions."
        )


def classification_extras(truth: Sequence[bool], probabilities: np.ndarray) -> dict[str, float]:
    """Scores stored beside matbench's for a classification fold.

    matbench's ``score_array`` turns float predictions into 0/1 labels for ``accuracy`` and then scores
    ``rocauc`` on those labels, so its ``rocauc`` equals the balanced accuracy. Returns
    ``{"rocauc_from_probabilities": ROC-AUC of the probabilities [n] against the 0/1 truth [n]}``.
    """
    from sklearn.metrics import roc_auc_score

    return {
        "rocauc_from_probabilities": float(
            roc_auc_score(np.asarray(truth, dtype=bool), np.asarray(probabilities, dtype=float))
        )
    }


def record_fold(task: Any, fold: int, predictions: np.ndarray, params: dict[str, Any]) -> str:
    """``task.record`` (matbench scores the fold; ``task.df`` holds the targets), with
    :func:`classification_extras` added to ``params`` for a classification task; returns the scores as text."""
    if task.metadata.task_type == "classification":
        truth = task.get_test_data(fold, as_type="tuple", include_target=True)[1]  # scoring only
        params.update(classification_extras(truth, predictions))
    task.record(fold, predictions, params=params)
    scores = task.results[task.folds_map[fold]]["scores"]
    if task.metadata.task_type == "regression":
        return f"MAE {scores['mae']:.4g} {task.metadata.unit}"
    return (
        f"rocauc(matbench, rounded) {scores['rocauc']:.4f}, "
        f"rocauc(probabilities) {params['rocauc_from_probabilities']:.4f}"
    )


# ---------------------------------------------------------------------------------------------- files
def atomic_write_by_name(path: Path, write: Callable[[str], Any]) -> None:
    """``write(name)`` writes the file by name; it then replaces ``path`` atomically with the right mode
    (:func:`sagnn_lightning.files.atomic_write`: the umask for a new file, the old mode for a replaced one)."""
    from sagnn_lightning.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        write(fh.name)


def load_results(path: Path, tasks: Sequence[str]) -> Any:
    """A ``MatbenchBenchmark`` holding ``tasks`` plus whatever ``path`` already recorded.

    Read with ``MatbenchBenchmark.from_file``, which checks the file (keys, hash, task names) and then validates
    each task, and a task validates only when all its folds are recorded. A file of a run still going (some
    folds not recorded: matbench's ``"... not recorded!"`` error, raised after those checks passed) is put back
    into a new ``MatbenchBenchmark`` through matbench's public attributes: each task's ``results`` by fold (the
    container converts the dicts) and ``user_metadata``.
    """
    from matbench.bench import MatbenchBenchmark
    from matbench.task import MatbenchTask

    if not path.is_file():
        return MatbenchBenchmark(autoload=False, subset=list(tasks))
    bench_log = logging.getLogger("matbench")
    level = bench_log.level
    bench_log.setLevel(logging.ERROR)  # from_file warns that a loaded file takes no new data: ours only reads it
    try:
        mb = MatbenchBenchmark.from_file(str(path))
    except ValueError as err:
        if "not recorded" not in str(err):
            raise
        stored = json.loads(path.read_text())
        mb = MatbenchBenchmark(autoload=False, subset=list(stored["tasks"]))
        for name, task in stored["tasks"].items():
            for fold_key, fold in task["results"].items():
                mb.tasks_map[name].results[fold_key] = fold
        mb.user_metadata = stored["user_metadata"]
    finally:
        bench_log.setLevel(level)
    for name in tasks:
        if name not in mb.tasks_map:
            mb.tasks_map[name] = MatbenchTask(name, autoload=False, benchmark=mb.benchmark_name)
    return mb


def requirements() -> dict[str, list[str]]:
    """Exact versions of what produced the results (``info.json``'s ``requirements``)."""
    pkgs = [
        "torch",
        "pytorch-lightning",
        "torch_geometric",
        "torchmetrics",
        "pymatgen",
        "matminer",
        "matbench",
        "scikit-learn",
        "numpy",
        "pandas",
        "sagnn-lightning",
    ]
    out = [f"python=={platform.python_version()}"]
    for name in pkgs:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == "sagnn-lightning":
                import sagnn_lightning

                out.append(f"sagnn-lightning=={sagnn_lightning.__version__} (source checkout)")
    return {"python": out}


def machine(threads: int | None, jobs: int) -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "jobs": jobs,
        "accelerator": accelerator(),
    }


def accelerator() -> str:
    """``"cpu"``, or ``"cuda: <GPU name> x<count>"`` when CUDA is visible (the recipes' trainer picks it then)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"


def _class_name(spec: Any) -> str:
    return str((spec or {}).get("class_path", "none")).rsplit(".", 1)[-1] if isinstance(spec, dict) else "none"


def _structure_model_text(model: dict[str, Any], training: dict[str, Any] | None = None) -> str:
    attention = {
        "last": f"{model.get('heads')}-head self-attention over the atoms of each crystal after the last MEGNet block",
        "each": f"{model.get('heads')}-head self-attention after every block",
        "none": "no self-attention (the paper's w/o-MHSA ablation, i.e. MEGNet)",
    }[model["attention"]]
    training = training or {}
    cutoff = training.get("cutoff") or model["cutoff"]  # the data's cutoff; the model's basis is linked to it
    neighbours = training.get("max_neighbors")
    graph = (
        f"the {neighbours} nearest neighbours of each atom within {cutoff} A"
        if neighbours
        else f"every neighbour within {cutoff} A"
    )
    return (
        f"MEGNet graph network (Chen et al. 2019: "
        f"atom embedding {model['atom_embedding_dim']}, {model['num_gaussians']} Gaussians on 0-{cutoff} "
        f"A width {model['gaussian_width']}, {model['num_blocks']} MEGNet blocks of width {model['hidden_dim']}, "
        f"Set2Set readout on atoms and bonds) with {attention} (SA-GNN, Cui et al. 2024). Periodic crystal graphs: "
        f"{graph}."
    )


def _selection_text(training: dict[str, Any]) -> str:
    """How the model that predicts a test fold is chosen: one checkpoint, an ensemble of inner-fold members, or
    the mean of runs of several seeds (``seed_runs``, written by ``combine.py``)."""
    monitor = str((training.get("checkpoint") or {}).get("monitor", "auto"))
    if monitor == "auto":  # the module's own choice (sagnn_lightning.lit.module.MONITOR)
        monitor = "MAE (ROC-AUC for classification)"
    members = training.get("val_folds")
    seeds = training.get("seed_runs")
    if seeds and not members:
        return (
            f"the mean of {len(seeds)} models (seeds {', '.join(map(str, seeds))}) predicts each test fold; each "
            f"trained on the fold's training rows and kept its checkpoint with the best validation {monitor} "
            f"(validation = its own {training['val_fraction']:.0%} of the training rows, carved by its seed)."
        )
    if not members:
        return (
            f"the checkpoint with the best validation {monitor} (validation = "
            f"{training['val_fraction']:.0%} of each fold's training rows) predicts the test fold."
        )
    carve = float(training.get("calibration_fraction") or 0.0)
    held = f"{carve:.0%} of each fold's training rows are held out of all members; " if carve else ""
    text = (
        f"an ensemble of {members} members predicts each test fold: {held}member j trains on the other "
        f"{members - 1} of {members} inner folds of the remaining rows and keeps its checkpoint with the best "
        f"{monitor} on inner fold j; the prediction is the members' mean"
        + (", its error bar their spread recalibrated on the held-out rows." if carve else ".")
    )
    if seeds:
        text += f" Such ensembles of {len(seeds)} seeds ({', '.join(map(str, seeds))}) are averaged."
    return text


def _composition_model_text(model: dict[str, Any]) -> str:
    attention = {
        "last": f"{model.get('heads')}-head self-attention over the elements after the last block",
        "each": f"{model.get('heads')}-head self-attention after every block",
        "none": "no self-attention (the w/o-MHSA ablation)",
    }[model["attention"]]
    return (
        f"Composition SA-GNN for the composition tasks: element nodes ({model.get('element_features')} element "
        f"features + fraction), {model.get('num_blocks')} fraction-weighted message-passing blocks of width "
        f"{model.get('hidden_dim')} (Roost, Goodall & Lee 2020) and {attention}, each element's fraction entering "
        "every softmax as a weight (log-fraction key bias), then a fraction-weighted attention readout."
    )


def info_json(variant: str, configs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """matbench's submission ``info.json`` (keys checked by matbench's ``scripts/test_submission.py``)."""
    any_cfg = next(iter(configs.values()))
    training = any_cfg["training"]
    descriptions: list[str] = []
    for cfg in configs.values():  # one text per model class in the submission (crystal and/or composition)
        composition = str(cfg["training"].get("model_class", "")).endswith("CompositionSAGNN")
        text = (
            _composition_model_text(cfg["model"])
            if composition
            else _structure_model_text(cfg["model"], cfg["training"])
        )
        if text not in descriptions:
            descriptions.append(text)
    budget = ", ".join(f"{name}: {c['max_epochs']} epochs" for name, c in sorted(configs.items()))
    optimizer = training.get("optimizer") or {}

    def _lr(cfg: dict[str, Any]) -> Any:
        opt = cfg["training"].get("optimizer") or {}
        return (opt.get("init_args") or {}).get("lr") if isinstance(opt, dict) else None

    rates = {name: _lr(cfg) for name, cfg in sorted(configs.items())}
    lr = (
        next(iter(rates.values()))
        if len(set(map(str, rates.values()))) == 1
        else ", ".join(f"{name} {rate}" for name, rate in rates.items())
    )
    # one text when every task chose its models the same way, else one per group of tasks
    texts: dict[str, list[str]] = {}
    for name, cfg in sorted(configs.items()):
        texts.setdefault(_selection_text(cfg["training"]), []).append(name)
    selection = (
        next(iter(texts))
        if len(texts) == 1
        else " ".join(f"{', '.join(names)}: {text}" for text, names in texts.items())
    )
    return {
        "authors": "sagnn-lightning contributors",
        "algorithm": ALGORITHM_NAMES[variant],
        "algorithm_long": (
            f"{ALGORITHM_NAMES[variant]} (sagnn-lightning {_pkg_version()}): {' '.join(descriptions)} "
            f"Trained with {str(training.get('loss', 'l1')).upper()} loss on "
            f"standardised targets (BCE for classification), {_class_name(optimizer)} (lr {lr}), scheduler "
            f"{_class_name(training.get('scheduler'))}; {selection} "
            f"Fixed hyper-parameters (recipes/configs); training budget per fold: {budget}."
        ),
        "bibtex_refs": BIBTEX_REFS,
        "notes": (
            "Fixed hyper-parameters chosen in advance; no tuning on test data. Trained by the recipes' pipeline "
            "(sagnn_lightning.cli); see user_metadata in results.json.gz for the configuration, per-fold times and "
            f"machine. Summary: {json.dumps(summary, sort_keys=True)}. "
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
        folds: dict[str, dict[str, Any]] = {}
        for k, fkey in task.folds_map.items():
            if task.is_recorded[k]:
                res = task.results[fkey]
                params = dict(res["parameters"])
                folds[fkey] = {
                    key: float(res["scores"][key]),
                    "train_seconds": params.get("train_seconds"),
                    "epochs_run": params.get("epochs_run"),
                    "best_epoch": params.get("best_epoch"),
                }
                if "rocauc_from_probabilities" in params:
                    folds[fkey]["rocauc_from_probabilities"] = params["rocauc_from_probabilities"]
        values = [f[key] for f in folds.values()]
        out[name] = {
            "metric": key,
            "folds": folds,
            "n_folds": len(values),
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
        }
    return out


def save(mb: Any, out: Path, variant: str, configs: dict[str, dict[str, Any]], machine_info: dict[str, Any]) -> None:
    """Metadata + atomic writes of ``results.json.gz`` (matbench's ``to_file``) and ``info.json``."""
    summary = summarize(mb)
    mb.user_metadata = {}  # rebuilt whole from the recorded folds (avoids matbench's "overwriting" warning)
    mb.add_metadata(
        {
            "algorithm": ALGORITHM_NAMES[variant],
            "variant": variant,
            "configs": json.loads(json.dumps(configs)),
            "machine": machine_info,
            "summary": json.loads(json.dumps(summary)),
        }
    )
    atomic_write_by_name(out / RESULTS_FILE, lambda tmp: mb.to_file(tmp))
    info = info_json(
        variant, configs, {t: {"mean": s["mean"], "std": s["std"], "n_folds": s["n_folds"]} for t, s in summary.items()}
    )
    atomic_write_by_name(out / INFO_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
