"""Combine runner submissions into one: folds recorded by different runs are put together (a run split over lanes,
machines or sittings), and a fold recorded by runs of different ``--seed`` becomes their ensemble.

    python benchmarks/matbench_v0.1_sagnn/combine.py results/seed0 results/seed1 --out results/seeds01 \
        --data-home ../shared/data/matbench

* A fold that one input recorded is recorded again unchanged: predictions, parameters (plus ``combined_from`` and
  ``seeds``) and its ``uncertainty/<task>_fold_<k>*.csv`` files. So a combined submission can be an input again.
* A fold that several inputs recorded, each with its own ``--seed`` (its own validation carve and weights), records
  the mean of their test predictions (probabilities for classification); for regression the rows with the runs'
  spread go to ``<out>/uncertainty/<task>_fold_<k>.csv``, as ``run.py --val-folds`` writes them (``std_raw``: no
  calibration rows, so no recalibrated ``std``).
* The inputs must hold one configuration: the same variant and every recorded setting but the seed. Two inputs
  recording the same fold with the same seed are the same run twice and are refused, as is anything that differs,
  and a fold that is already a mean of seeds is not averaged again (its members are not stored): combine the
  original runs instead.

matbench's own API scores each fold (``task.record``) from the task's targets, read from the task file as the runner
reads it (``--data-home``, else ``$MATMINER_DATA``, else matbench's download).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the modules beside this script, also when it is loaded by its path (tests)
    sys.path.insert(0, str(HERE))

from ensemble import ensemble_of_members, uncertainty_rows  # noqa: E402
from folds import difference  # noqa: E402
from run import _quiet  # noqa: E402
from submission import RESULTS_FILE, load_results, matbench_frame, record_fold, save, summarize  # noqa: E402


class CombineError(ValueError):
    """Inputs that cannot be combined (the message names the input and what differs)."""


@dataclass
class Submission:
    """One input folder: its matbench results (``mb``), variant and per-task configuration."""

    folder: Path
    mb: Any
    variant: str
    configs: dict[str, dict[str, Any]]
    machine: dict[str, Any]


def read_submission(folder: Path) -> Submission:
    """The runner's ``<folder>/results.json.gz`` (folds may be missing: a run still going)."""
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise CombineError(f"{folder}: no {RESULTS_FILE}; give the --out folder of a run.py run")
    try:
        mb = load_results(path, list(json.loads(path.read_text())["tasks"]))
    except (ValueError, KeyError) as err:  # matbench's checks (hash, keys) or not a results file at all
        raise CombineError(f"{path}: {err}; give an unchanged results file written by run.py") from None
    meta = dict(mb.user_metadata or {})
    if "variant" not in meta or "configs" not in meta:
        raise CombineError(f"{path}: no runner metadata (variant, configs); only run.py submissions can be combined")
    return Submission(folder, mb, str(meta["variant"]), dict(meta["configs"]), dict(meta.get("machine") or {}))


def _without_seed(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration apart from the seed (and a combined submission's record of its seeds)."""
    kept = {k: v for k, v in config.items() if k != "seed"}
    if isinstance(kept.get("training"), dict):
        kept["training"] = {k: v for k, v in kept["training"].items() if k != "seed_runs"}
    return kept


def _fold_seeds(sub: Submission, name: str, recorded: dict[str, Any]) -> list[int]:
    """The seeds whose models predicted one recorded fold: a combined fold names them (``seeds``); a run.py fold
    has its task's one seed (a combined submission written before ``seeds`` existed lists them all)."""
    seeds = recorded["parameters"].get("seeds", sub.configs[name]["seed"])
    return [int(s) for s in seeds] if isinstance(seeds, list) else [int(seeds)]


def check_compatible(inputs: Sequence[Submission]) -> None:
    """One variant and, per task, one configuration apart from the seed; raises :class:`CombineError`."""
    first = inputs[0]
    for other in inputs[1:]:
        if other.variant != first.variant:
            raise CombineError(f"{other.folder}: variant {other.variant!r}, but {first.folder} has {first.variant!r}")
        for name in set(first.configs) & set(other.configs):
            changed = difference(_without_seed(first.configs[name]), _without_seed(other.configs[name]))
            if changed:
                raise CombineError(
                    f"{other.folder}: {name} was trained with another configuration than in {first.folder} "
                    f"(setting: (there, here)): {changed}; combine runs of one configuration only"
                )


def _recorded(sub: Submission, name: str, fold: int) -> dict[str, Any] | None:
    task = sub.mb.tasks_map.get(name)
    if task is None or not task.is_recorded[fold]:
        return None
    return dict(task.results[task.folds_map[fold]])


def copy_uncertainty(source: Path, out: Path, name: str, fold: int) -> list[Path]:
    """Copy a fold's ``uncertainty/<task>_fold_<k>.csv`` and ``..._<k>_<kind>.csv`` files from ``source`` to
    ``out`` (atomically); returns the copies."""
    from sagnn_lightning.files import atomic_copy

    folder = source / "uncertainty"
    found = [*folder.glob(f"{name}_fold_{fold}.csv"), *folder.glob(f"{name}_fold_{fold}_*.csv")]
    return [atomic_copy(path, out / "uncertainty" / path.name) for path in sorted(found)]


def combine(
    inputs: Sequence[Submission], out: Path, data_home: Path | None = None, cache_dir: Path | None = None
) -> dict[str, Any]:
    """Record every fold of the inputs into ``out`` (see the module docstring); returns :func:`summarize`'s
    summary of the combined submission."""
    from matbench.bench import MatbenchBenchmark

    from sagnn_lightning.data.matbench import MatbenchDataModule
    from sagnn_lightning.files import write_csv_rows

    check_compatible(inputs)
    writes: list[Callable[[], Any]] = []  # files under out, written once every fold has passed its checks
    names = sorted({name for sub in inputs for name in sub.configs})
    mb = MatbenchBenchmark(autoload=False, subset=names)
    configs: dict[str, dict[str, Any]] = {}
    for name in names:
        task = mb.tasks_map[name]
        home = None if data_home is None else str(data_home)
        datamodule = MatbenchDataModule(name, data_home=home, cache_dir=None if cache_dir is None else str(cache_dir))
        task.df = matbench_frame(datamodule, task.metadata, name)
        seeds: set[int] = set()
        for fold in task.folds:
            sources = [(sub, rec) for sub in inputs if (rec := _recorded(sub, name, fold)) is not None]
            if not sources:
                continue
            per_source = [_fold_seeds(sub, name, rec) for sub, rec in sources]
            fold_seeds = sorted(seed for seeds in per_source for seed in seeds)
            averaged = next((i for i, seeds in enumerate(per_source) if len(seeds) > 1), None)
            if len(sources) > 1 and averaged is not None:
                raise CombineError(
                    f"{sources[averaged][0].folder}: {name} fold {fold} is already the mean of seeds "
                    f"{per_source[averaged]} (its members are not stored); combine the original runs' folders instead"
                )
            if len(set(fold_seeds)) < len(fold_seeds):
                folders = ", ".join(str(sub.folder) for sub, _ in sources)
                raise CombineError(
                    f"{name} fold {fold} is recorded with the same --seed by more than one of {folders}: the same "
                    "run twice; give each run once"
                )
            seeds.update(fold_seeds)
            ids = list(task.validation[task.folds_map[fold]].test)
            runs: list[dict[str, Any]] = [
                {"predictions": [rec["data"][i] for i in ids], "params": dict(rec["parameters"])} for _, rec in sources
            ]
            params: dict[str, Any]
            if len(runs) == 1:
                predictions, params = np.asarray(runs[0]["predictions"], dtype=float), dict(runs[0]["params"])
                writes.append(partial(copy_uncertainty, sources[0][0].folder, out, name, fold))
            else:
                truth = np.asarray(task.df.loc[ids, task.metadata.target], dtype=float)  # scoring only
                predictions, summed = ensemble_of_members(runs, truth, task.metadata.task_type)
                params = {"ensemble": f"mean of {len(runs)} runs' test predictions (seeds {fold_seeds})"}
                params |= summed
                if task.metadata.task_type == "regression":
                    rows, _, _ = uncertainty_rows(runs, ids, truth)
                    writes.append(partial(write_csv_rows, out / "uncertainty" / f"{name}_fold_{fold}.csv", rows))
            params["combined_from"] = [str(sub.folder) for sub, _ in sources]
            params["seeds"] = fold_seeds
            scores = record_fold(task, fold, predictions, params)
            print(f"{name} fold {fold}: {scores} from {len(runs)} run(s)", flush=True)
        config = dict(next(sub.configs[name] for sub in inputs if name in sub.configs))
        config["seed"] = sorted(seeds) if len(seeds) > 1 else next(iter(seeds), config["seed"])
        if len(seeds) > 1:
            config["training"] = {**config["training"], "seed_runs": sorted(seeds)}
        configs[name] = config
    machine = {**inputs[0].machine, "combined_from": [str(sub.folder) for sub in inputs]}
    for write in writes:
        write()
    save(mb, out, inputs[0].variant, configs, machine)
    for task in mb.tasks_map.values():
        task.df = None
    return summarize(mb)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="submission folders written by run.py (--out)")
    p.add_argument("--out", type=Path, required=True, help="folder for the combined results.json.gz + info.json")
    p.add_argument("--data-home", type=Path, default=None, help="folder with <task>.json.gz (as run.py's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="the graph/row cache folder (as run.py's)")
    args = p.parse_args(argv)
    if args.out.resolve() in {f.resolve() for f in args.inputs}:
        p.error("--out must be a new folder, not one of the inputs")
    _quiet()  # the runner's logging set-up: matbench's INFO handler quieted
    try:
        summary = combine([read_submission(f) for f in args.inputs], args.out, args.data_home, args.cache_dir)
    except CombineError as err:
        p.exit(2, f"error: {err}\n")
    for name, s in summary.items():
        if s["n_folds"]:
            print(f"{name}: {s['metric']} {s['mean']:.4g} ± {s['std']:.3g} over {s['n_folds']} folds -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
