"""Matbench v0.1 leaderboard runner for SA-GNN (and its w/o-MHSA ablation).

Every fold is trained by the recipes' own pipeline: the CLI (:func:`sagnn_lightning.cli.cli_main`) builds
``MatbenchDataModule`` (official fold, validation carved from the fold's training rows) + ``SAGNNModule`` +
``Trainer`` from ``recipes/configs/sagnn.yaml`` (``composition.yaml`` for a composition task) +
``recipes/configs/<task>.yaml``, the runner's callbacks given as CLI options (one progress line per epoch,
:class:`sagnn_lightning.lit.EpochHistory`, :class:`sagnn_lightning.lit.Deadline` for ``--max-time``); the runner
calls ``trainer.fit``, then ``trainer.predict`` on the test rows with the best checkpoint by validation, and
matbench's own API records and scores the predictions (``task.record``, ``mb.to_file``). No test data is used for
any choice.

* Each fold trains in ``<work dir>/<task>/fold_<k>/`` (a recipe run dir, plus ``history.csv`` and
  ``runner_config.json``) and resumes from its ``last.ckpt`` when the same command is run again, also after
  ``--max-time`` stopped it mid-epoch (exit status 3). ``results.json.gz`` and ``info.json`` are saved after each
  fold; recorded folds are skipped; mixing configurations in one submission or fold dir is refused.
* ``--jobs N``: N folds at once, each in a subprocess; ``--val-folds K``: each fold records the mean of K members
  selected on K inner folds of its training rows; classification records probabilities, with the ROC-AUC of the
  probabilities beside matbench's (rounded) ``rocauc``.

Beside this script: ``options.py`` (its command-line options), ``folds.py`` (one fold: CLI options, configuration,
training), ``pool.py`` (``--jobs``), ``ensemble.py`` (``--val-folds``), ``submission.py`` (``results.json.gz``,
``info.json``, the scores recorded beside matbench's).
Documentation: ``docs/benchmarks/leaderboard.md``.

Usage (offline, shared data)::

    python benchmarks/matbench_v0.1_sagnn/run.py --tasks matbench_jdft2d --variant sagnn \
        --max-epochs 50 --data-home ../shared/data/matbench --jobs 2 --max-time 00:08:00:00 \
        [-- --config my.yaml --model.optimizer.lr=5e-4 ...]
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the modules beside this script, also when it is loaded by its path (tests)
    sys.path.insert(0, str(HERE))

import options  # noqa: E402
import pool  # noqa: E402
from ensemble import InnerFolds, ensemble_of_members, uncertainty_rows  # noqa: E402
from folds import (  # noqa: E402
    DEFAULT_CONFIG_DIR,
    build_cli,
    check_fold_dir,
    config_summary,
    difference,
    fixed_option_conflicts,
    fold_spec,
    ignore_expected_warnings,
    prepare_task_data,
    train_fold,
)
from submission import (  # noqa: E402
    RESULTS_FILE,
    check_test_ids,
    load_results,
    machine,
    matbench_frame,
    record_fold,
    save,
    summarize,
)

#: exit status when every fold ran without error but some were stopped by --max-time (rerun to continue)
EXIT_UNFINISHED = 3


def _clock() -> float:
    """Wall-clock seconds since the epoch (``--max-time`` deadlines; tests replace it)."""
    return time.time()


def worker_main(spec_path: Path) -> int:
    """``--fold-worker <spec.json>``: train one fold (:func:`train_fold`), write the result JSON, exit 0."""
    _quiet()
    return pool.serve(spec_path, train_fold)


# ---------------------------------------------------------------------------------------------- several folds
def _tag(variant: str, task: str, fold: int, member: int | None = None, val_folds: int | None = None) -> str:
    inner = f" (inner {member + 1}/{val_folds})" if member is not None and val_folds else ""
    return f"[{variant}] {task} fold {fold}{inner}: "


def _spec_tag(spec: dict[str, Any]) -> str:
    return _tag(spec["variant"], spec["task"], spec["fold"], spec.get("member"), spec.get("val_folds"))


def not_recorded(spec: dict[str, Any], result: dict[str, Any] | None, error: str) -> str:
    """Why a fold that ended without a result (``None``: its process failed) or unfinished is not recorded."""
    if result is None:
        last = Path(spec["run_dir"]) / "checkpoints" / "last.ckpt"
        return f"failed ({error}); not recorded. Run the same command again to continue it from {last}"
    where = (
        f"stopped in epoch {result['epoch']} of {result['max_epochs']} (step {result['global_step']})"
        if result["status"] == "stopped"
        else "not started"
    )
    return f"{where}: {result['reason']}; not recorded. Run the same command again to continue."


def run_folds(specs: list[dict[str, Any]], jobs: int) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, str]]:
    """Train the folds of ``specs``, ``jobs`` at a time (:func:`pool.run_jobs`: in this process with ``jobs=1``,
    else each in a ``--fold-worker`` subprocess); yields ``(spec, result, error)`` as folds end. A fold is not
    started once ``spec["deadline"]`` has passed."""

    def skip(spec: dict[str, Any]) -> dict[str, Any] | None:
        if spec.get("deadline") is not None and _clock() >= spec["deadline"]:
            return {"status": "not started", "reason": "--max-time reached"}
        return None

    return pool.run_jobs(
        specs,
        jobs,
        run_here=lambda spec: train_fold(spec, prefix=_spec_tag(spec)),
        worker_command=[sys.executable, str(Path(__file__).resolve()), "--fold-worker"],
        tag=_spec_tag,
        skip=skip,
    )


def run(
    tasks: Sequence[str],
    folds: Sequence[int],
    variant: str,
    max_epochs: int | None,
    out: Path,
    data_home: Path | None = None,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    threads: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    graph_workers: int = 0,
    checkpoint_dir: Path | None = None,
    work_dir: Path | None = None,
    jobs: int = 1,
    max_time: float | None = None,
    cli_args: Sequence[str] = (),
    val_folds: int | None = None,
    calibration_floor: bool = False,
) -> tuple[Any, dict[str, int]]:
    """Train/predict/record the requested folds (skipping recorded ones); returns ``(MatbenchBenchmark,
    {"failed": n, "stopped": n})``: folds that failed (``jobs > 1``) or were stopped / not started by ``max_time``.

    Each fold trains in ``<work_dir>/<task>/fold_<k>/`` (default ``<out>/work``), resuming from its ``last.ckpt``.
    ``max_time`` (seconds) is this run's budget: training stops when it is spent (the fold is not recorded; a
    rerun continues it) and no fold starts after it. ``jobs`` folds train at once (subprocesses, ``threads``
    threads each, default 1); ``jobs=1`` trains in this process (``threads``: default torch's). With
    ``checkpoint_dir``, the checkpoint that predicted each fold is also copied to
    ``<checkpoint_dir>/<task>/fold_<k>.ckpt``. ``cli_args``: more options for the recipes' CLI (``--config``
    files, ``--model.*``, ...), before those the runner's flags set. ``val_folds``: K inner-fold members per
    fold (``<run dir>/inner_<j>``), recorded as the mean of their test predictions once all K are done;
    ``calibration_floor``: their spread is calibrated with a floor (:func:`sagnn_lightning.uncertainty.fit_calibration`).
    """
    import torch

    from sagnn_lightning.data.matbench import get_task

    start = _clock()
    deadline = start + max_time if max_time is not None else None
    if jobs > 1:
        threads = threads or 1
    elif threads:
        torch.set_num_threads(int(threads))
    tasks = [get_task(t).name for t in tasks]
    out = Path(out)
    work_dir = Path(work_dir) if work_dir is not None else out / "work"
    mb = load_results(out / RESULTS_FILE, tasks)
    configs = dict(mb.user_metadata.get("configs", {})) if mb.user_metadata else {}
    machine_info = machine(threads, jobs)
    specs: list[dict[str, Any]] = []
    for name in tasks:
        task = mb.tasks_map[name]
        for f in folds:
            if task.is_recorded[f]:
                print(f"[{variant}] {name} fold {f}: already recorded in {out / RESULTS_FILE}, skipped", flush=True)
        todo = [f for f in folds if not task.is_recorded[f]]
        if not todo:
            continue
        members = range(val_folds) if val_folds is not None else [None]
        task_specs = [
            fold_spec(
                name,
                f,
                variant=variant,
                max_epochs=max_epochs,
                seed=seed,
                work_dir=work_dir,
                config_dir=config_dir,
                data_home=data_home,
                cache_dir=cache_dir,
                graph_workers=graph_workers,
                model_overrides=model_overrides,
                cli_args=cli_args,
                threads=threads,
                deadline=deadline,
                checkpoint_dir=checkpoint_dir,
                val_folds=val_folds,
                member=j,
            )
            for f in todo
            for j in members
        ]
        cli = build_cli(task_specs[0])  # the objects of the first fold: configuration, rows and graphs
        config = config_summary(cli, task_specs[0])
        recorded = [k for k, v in task.is_recorded.items() if v]
        if recorded and name in configs and difference(configs[name], config):
            raise ValueError(
                f"{out / RESULTS_FILE} holds {name} folds {recorded} recorded with another "
                f"configuration (stored vs requested: {difference(configs[name], config)}); rerun with "
                "the stored settings, use another --out, or delete the file to start over."
            )
        configs[name] = config
        graphs, built, seconds = prepare_task_data(cli)
        what = "formulas" if get_task(name).input_type == "composition" else "crystals"
        how = "graphs built into" if built else "graphs read from"
        print(
            f"[{variant}] {name}: {len(graphs)} {what} loaded in {seconds:.1f} s ({how} the graph cache {graphs.path})",
            flush=True,
        )
        task.df = matbench_frame(cli.datamodule, task.metadata, name)
        del cli, graphs
        for spec in task_specs:
            spec["config"] = config
            check_fold_dir(Path(spec["run_dir"]), config)  # before any fold starts: refused here, not in a worker
        specs += task_specs

    failed = stopped = 0
    inner = InnerFolds(val_folds) if val_folds is not None else None
    for spec, result, error in run_folds(specs, jobs):
        name, fold, tag = spec["task"], spec["fold"], _spec_tag(spec)
        if result is None or result["status"] != "done":
            failed += result is None
            stopped += result is not None
            print(tag + not_recorded(spec, result, error), flush=True)
            continue
        task = mb.tasks_map[name]
        check_test_ids(task, fold, result["ids"])
        predictions, params = np.asarray(result["predictions"], dtype=float), dict(result["params"])
        if inner is not None:
            truth = np.asarray(task.get_test_data(fold, as_type="tuple", include_target=True)[1], dtype=float)
            if task.metadata.task_type == "regression":  # scoring only, as matbench does for the fold
                print(
                    f"{tag}member test MAE {np.mean(np.abs(predictions - truth)):.4g} {task.metadata.unit}", flush=True
                )
            complete = inner.add(name, fold, spec["member"], result)
            if complete is None:
                continue
            predictions, summed = ensemble_of_members(complete, truth, task.metadata.task_type)
            params = {"val_folds": len(complete), "ensemble": "mean of the inner-fold members' test predictions"}
            params |= summed
            tag = _tag(variant, name, fold)
            if task.metadata.task_type == "regression":
                params |= write_uncertainty(out, name, fold, complete, result["ids"], truth, tag, calibration_floor)
        scores = record_fold(task, fold, predictions, params)
        save(mb, out, variant, configs, machine_info)
        print(
            f"{tag}{scores}; {params['epochs_run']} epochs (best {params['best_epoch']}), train "
            f"{params['train_seconds']:.0f} s in {params['sittings']} sitting(s) -> {out / RESULTS_FILE}",
            flush=True,
        )
    for task in mb.tasks_map.values():
        task.df = None
    return mb, {"failed": failed, "stopped": stopped}


def write_uncertainty(
    out: Path,
    task: str,
    fold: int,
    members: list[dict[str, Any]],
    ids: list[str],
    truth: np.ndarray,
    tag: str,
    floor: bool = False,
) -> dict[str, Any]:
    """Write ``<out>/uncertainty/<task>_fold_<k>.csv`` (and ``..._calibration.csv`` with calibration rows) and
    print the test set's calibration metrics; returns what the fold's record keeps (the calibration and those
    metrics), or nothing without calibration rows."""
    from sagnn_lightning.files import write_csv_rows

    rows, calibration_rows, summary = uncertainty_rows(members, ids, truth, floor)
    folder = out / "uncertainty"
    write_csv_rows(folder / f"{task}_fold_{fold}.csv", rows)
    if calibration_rows:
        write_csv_rows(folder / f"{task}_fold_{fold}_calibration.csv", calibration_rows)
    if summary is None:
        return {}
    before, after = summary["test_before"], summary["test_after"]
    print(
        f"{tag}test calibration (raw -> recalibrated on {summary['calibration']['n']} held-out rows): mean z² "
        f"{before['mean_z2']:.3g} -> {after['mean_z2']:.3g}, 95 % coverage {before['coverage_95']:.3f} -> "
        f"{after['coverage_95']:.3f}, Spearman {after['spearman']:.3f}",
        flush=True,
    )
    return {"uncertainty": summary}


# ---------------------------------------------------------------------------------------------- command line
def _quiet() -> None:
    import matbench.bench  # noqa: F401  (its import installs an INFO stdout handler: quiet it afterwards)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "matbench"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ignore_expected_warnings()
    warnings.filterwarnings("ignore", message=".*`max_epochs=\\d+` reached.*")


def main(argv: Sequence[str] | None = None) -> int:
    from sagnn_lightning.cli import quiet_upstream_warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--fold-worker"] and len(argv) == 2:
        return worker_main(Path(argv[1]))
    cli_args: list[str] = []
    if "--" in argv:
        cli_args = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = options.parser((__doc__ or "").split("\n\n")[0])
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.val_folds is not None and args.val_folds < 2:
        p.error(f"--val-folds must be >= 2, got {args.val_folds}")
    if args.max_epochs is not None and args.max_epochs < 1:
        p.error(f"--max-epochs must be >= 1, got {args.max_epochs}")

    conflicts = fixed_option_conflicts(
        cli_args,
        variant=args.variant,
        model_overrides=args.model_overrides,
        max_epochs=args.max_epochs,
        val_folds=args.val_folds,
        data_home=args.data_home,
        cache_dir=args.cache_dir,
    )
    if conflicts:
        p.error(f"options after -- that the runner would override: {'; '.join(conflicts)}")
    out = args.out or HERE / "results" / args.variant
    _quiet()
    with quiet_upstream_warnings():
        mb, left_over = run(
            args.tasks,
            args.folds,
            args.variant,
            args.max_epochs,
            out,
            args.data_home,
            args.config_dir,
            args.threads,
            args.model_overrides,
            args.seed,
            args.cache_dir,
            args.graph_workers,
            args.checkpoint_dir,
            args.work_dir,
            args.jobs,
            args.max_time,
            cli_args,
            args.val_folds,
            args.calibration_floor,
        )
    for name, s in summarize(mb).items():
        if s["n_folds"]:
            print(
                f"[{args.variant}] {name}: {s['metric']} {s['mean']:.4g} ± {s['std']:.3g} over {s['n_folds']} folds",
                flush=True,
            )
    left = left_over["failed"] + left_over["stopped"]
    if left:
        print(
            f"[{args.variant}] {left} requested fold(s) not recorded yet; run the same command again to continue",
            flush=True,
        )
    return 1 if left_over["failed"] else EXIT_UNFINISHED if left else 0


if __name__ == "__main__":
    sys.exit(main())
