"""Training an ensemble: K members of one training command, resumable, then calibrated on held-out rows.

:func:`fit_ensemble` runs the user's training command (a recipe script or ``python -m sagnn_lightning fit`` with
its ``--config`` files and overrides) once per member, each in its own process and run folder
``<folder>/member_<j>``, with these options appended (later options win in LightningCLI):

* ``--seed_everything=<seed + j>``: every member starts from its own weights and batch order;
* ``split="inner-folds"`` (matbench tasks): ``--data.init_args.val_folds=K --data.init_args.val_fold=j``: member
  ``j`` validates (selects its checkpoint) on inner fold ``j`` of the training rows, so the K members together
  train on all of them (MODNet's nested ensembles); ``split="seeds"``: every member uses the same validation rows;
* ``--data.init_args.calibration_fraction=F``: the same ``F`` of the training rows are held out of every member;
  the ensemble's spread is calibrated on them (:func:`sagnn_lightning.uncertainty.fit_calibration`);
* ``--trainer.default_root_dir=<folder>/member_<j>`` and, when the member has a ``last.ckpt`` and did not finish,
  ``--ckpt_path=<it>`` (resume).

The manifest (:data:`~sagnn_lightning.lit.ensemble.MANIFEST`) is rewritten atomically after each member, so an
interrupted command continues where it stopped when run again. ``jobs`` members train at once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sagnn_lightning.errors import SAGNNError, UsageError, flag_parameter, param
from sagnn_lightning.files import write_csv_rows
from sagnn_lightning.lit.checkpoints import read_checkpoint, recorded_best_checkpoint
from sagnn_lightning.lit.ensemble import is_ensemble, member_spread, read_manifest, write_manifest
from sagnn_lightning.lit.loading import load_module
from sagnn_lightning.lit.pretrained import training_datamodule
from sagnn_lightning.uncertainty import fit_calibration, uncertainty_metrics

Split = Literal["inner-folds", "seeds"]
#: which held-out rows an ensemble is calibrated on
HeldOutRows = Literal["calibration", "validation"]


def member_args(
    folder: Path, member: int, members: int, split: Split, seed: int, calibration_fraction: float
) -> list[str]:
    """The options appended to the training command for ``member`` (see the module docstring)."""
    run_dir = folder / f"member_{member}"
    args = [
        f"--seed_everything={seed + member}",
        f"--trainer.default_root_dir={run_dir}",
        f"--data.init_args.calibration_fraction={calibration_fraction}",
    ]
    if split == "inner-folds":
        args += [f"--data.init_args.val_folds={members}", f"--data.init_args.val_fold={member}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        args.append(f"--ckpt_path={last}")
    return args


def _check(members: int, split: str, calibration_fraction: float, jobs: int, command: Sequence[str]) -> None:
    if members < 2:
        raise UsageError(f"{param('members')} must be >= 2 (an ensemble's spread needs two), got {members}")
    if split not in ("inner-folds", "seeds"):
        raise UsageError(f"{param('split')} must be 'inner-folds' or 'seeds', got {split!r}")
    if not 0.0 <= calibration_fraction < 1.0:
        raise UsageError(f"{param('calibration_fraction')} must be in [0, 1), got {calibration_fraction}")
    if jobs < 1:
        raise UsageError(f"{param('jobs')} must be >= 1, got {jobs}")
    if not command:
        raise UsageError(
            "give the training command after --, e.g. `-- python recipes/matbench_jdft2d.py` or "
            "`-- python -m sagnn_lightning fit --config my.yaml`"
        )
    fixed = {
        "seed_everything": param("seed"),
        "trainer.default_root_dir": param("folder"),
        "data.calibration_fraction": param("calibration_fraction"),
        "ckpt_path": "resuming (it continues each member from its last.ckpt)",
    }
    if split == "inner-folds":
        fixed |= {"data.val_folds": param("members"), "data.val_fold": param("members")}
    clashes = [f"{arg} (set per member from {fixed[key]})" for arg in command if (key := flag_parameter(arg)) in fixed]
    if clashes:
        raise UsageError(f"the training command sets what the ensemble sets for each member: {'; '.join(clashes)}")


def _same_setup(manifest: dict[str, Any], setup: dict[str, Any], folder: Path) -> None:
    stored = {k: manifest.get(k) for k in setup}
    if stored != setup:
        diff = {k: (stored[k], setup[k]) for k in setup if stored[k] != setup[k]}
        raise UsageError(
            f"{folder} holds an ensemble trained otherwise (stored vs requested: {diff}); use another folder or "
            "the stored settings"
        )


def fit_ensemble(
    folder: str | os.PathLike,
    command: Sequence[str],
    members: int = 5,
    split: Split = "seeds",
    calibration_fraction: float = 0.1,
    seed: int = 0,
    jobs: int = 1,
    threads: int | None = None,
    calibration_floor: bool = False,
) -> dict[str, Any]:
    """Train (or finish) the ensemble in ``folder``; returns its manifest. See the module docstring.

    Args:
        folder: the ensemble folder (created).
        command: the training command of one member, e.g. ``["python", "recipes/matbench_jdft2d.py"]``
            (``python`` runs as this interpreter, i.e. in its virtual environment).
        members: K.
        split: ``"inner-folds"`` (matbench tasks) or ``"seeds"``.
        calibration_fraction: training rows held out of every member to calibrate on (0: no calibration).
        seed: member ``j`` trains with ``seed + j``.
        jobs: members trained at once.
        threads: ``OMP_NUM_THREADS`` of each member's process (default: inherited).
        calibration_floor: calibrate ``σ'² = s²σ² + f²`` (a floor for rows where the members agree; expt_gap's
            metals) instead of ``σ' = s·σ``.
    """
    _check(members, split, calibration_fraction, jobs, command)
    root = Path(folder).expanduser().resolve()
    setup = {
        "training_command": list(command),
        "members_planned": members,
        "split": split,
        "calibration_fraction": calibration_fraction,
        "seed": seed,
    }
    if is_ensemble(root):
        manifest = read_manifest(root)
        _same_setup(manifest, setup, root)
    else:
        manifest = {
            "format": 1,
            **setup,
            "command": shlex.join(
                [
                    "python",
                    "-m",
                    "sagnn_lightning",
                    "ensemble",
                    "fit",
                    "--members",
                    str(members),
                    "--split",
                    split,
                    "--calibration-fraction",
                    str(calibration_fraction),
                    "--seed",
                    str(seed),
                    *(["--calibration-floor"] if calibration_floor else []),
                    "--out",
                    str(root),
                    "--",
                    *command,
                ]
            ),
            "members": [{"name": f"member_{j}", "seed": seed + j, "checkpoint": None} for j in range(members)],
            "calibration": None,
        }
        write_manifest(root, manifest)
    todo = [j for j, m in enumerate(manifest["members"]) if not m.get("checkpoint")]
    for j in range(members):
        if j not in todo:
            print(f"member {j + 1}/{members}: trained ({manifest['members'][j]['checkpoint']})", flush=True)

    def train(j: int) -> tuple[int, int, float]:
        run_dir = root / f"member_{j}"
        run_dir.mkdir(parents=True, exist_ok=True)
        program = [sys.executable, *command[1:]] if command[0] in ("python", "python3") else list(command)
        argv = [*program, *member_args(root, j, members, split, seed, calibration_fraction)]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        print(f"member {j + 1}/{members}: training, log {run_dir / 'train.log'}", flush=True)
        t0 = time.perf_counter()
        with open(run_dir / "train.log", "ab") as log:
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
        return j, code, time.perf_counter() - t0

    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for j, code, seconds in pool.map(train, todo):
            if code != 0:
                failed.append(j)
                print(f"member {j + 1}/{members}: failed (exit {code}); see {root / f'member_{j}' / 'train.log'}")
                continue
            best = _best_checkpoint(root / f"member_{j}")
            manifest["members"][j].update(
                checkpoint=str(best.relative_to(root)),
                train_seconds=round(seconds, 1),
                **checkpoint_scores(read_checkpoint(best, "ckpt")),
            )
            write_manifest(root, manifest)
            print(f"member {j + 1}/{members}: done in {seconds:.0f} s, best {best.relative_to(root)}", flush=True)
    if failed:
        raise SAGNNError(
            f"{len(failed)} of {members} members failed ({', '.join(f'member_{j}' for j in failed)}; their "
            f"train.log says why); run the same command again to retry them: {manifest['command']}"
        )
    if calibration_fraction > 0:
        manifest["calibration"], manifest["calibration_metrics"] = calibrate(root, manifest, floor=calibration_floor)
        write_manifest(root, manifest)
    return manifest


def _best_checkpoint(run_dir: Path) -> Path:
    last = run_dir / "checkpoints" / "last.ckpt"
    best = recorded_best_checkpoint(last, run_dir / "checkpoints") if last.is_file() else None
    if best is None or not best.is_file():
        raise SAGNNError(f"{run_dir}: training ended without a best checkpoint (see its train.log)")
    return best


def checkpoint_scores(state: dict[str, Any]) -> dict[str, Any]:
    """``{"monitor", "best_score"}``: the best validation score that the checkpoint callback of the run recorded in
    the checkpoint ``state`` (``{}`` when it recorded none, e.g. a slimmed shipped model)."""
    for key, value in state.get("callbacks", {}).items():
        if key.startswith(("ModelCheckpoint", "BestAndLastCheckpoint")) and value.get("best_model_score") is not None:
            return {"monitor": value.get("monitor"), "best_score": float(value["best_model_score"])}
    return {}


def member_predictions(
    modules: Sequence[Any], loader: Iterable[Any], device: str = "cpu"
) -> tuple[list[str], np.ndarray]:
    """``(ids, predictions [K, n, T])`` of the members on every batch of ``loader`` (e.g. a DataModule's
    ``calibration_dataloader()`` or ``val_dataloader()``): values in the targets' units, probabilities for
    classification."""
    ids: list[str] = []
    stacked: list[list[torch.Tensor]] = [[] for _ in modules]
    with torch.inference_mode():
        for batch_idx, batch in enumerate(loader):
            batch = batch.to(device)
            for k, module in enumerate(modules):
                out = module.predict_step(batch, batch_idx)
                key = "probability" if module.task_type == "classification" else "prediction"
                stacked[k].append(out[key].double().cpu())
            ids += [str(i) for i in batch.sample_id]
    return ids, np.stack([torch.cat(parts).numpy() for parts in stacked])


def calibrate(
    root: Path,
    manifest: dict[str, Any],
    rows: HeldOutRows = "calibration",
    data_file: str | None = None,
    floor: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the calibration on held-out rows of member 0's data (which every member shares) and write
    ``calibration_predictions.csv``; returns the calibration and the raw spread's metrics on those rows.

    ``rows``: ``"calibration"`` (the ``calibration_fraction`` rows held out of every member) or ``"validation"``
    (the validation rows of members that share them; they chose their checkpoints on these rows, see
    :func:`~sagnn_lightning.lit.ensemble_assemble.assemble_ensemble`). ``data_file``: where member 0's data file is
    on this machine, when its checkpoint records another place. ``floor``: fit ``σ'² = s²σ² + f²`` instead of
    ``σ' = s·σ`` (:func:`~sagnn_lightning.uncertainty.fit_calibration`)."""
    modules = [load_module(root / m["checkpoint"], "cpu", "ckpt")[0] for m in manifest["members"]]
    if modules[0].task_type != "regression" or len(modules[0].target_names) != 1:
        print("calibration: fitted for single-target regression only; the raw spread is kept", flush=True)
        return {}, {}
    settings = read_checkpoint(root / manifest["members"][0]["checkpoint"], "ckpt").get("datamodule_hyper_parameters")
    if not settings:
        raise SAGNNError(f"{root}: member 0's checkpoint does not record its data; cannot find the held-out rows")
    overrides: dict[str, Any] = {"progress": False, "num_workers": 0}
    if data_file:
        overrides["data_file"] = data_file
    datamodule = training_datamodule(settings, **overrides)
    if rows == "validation":
        datamodule.setup("validate")
    loader = datamodule.val_dataloader() if rows == "validation" else datamodule.calibration_dataloader()
    ids, predictions = member_predictions(modules, loader)
    targets = np.asarray(datamodule.targets_of(ids), dtype=np.float64)
    mean, spread = predictions.mean(axis=0)[:, 0], member_spread(torch.from_numpy(predictions)).numpy()[:, 0]
    calibration = fit_calibration(targets[:, 0] - mean, spread, floor=floor)
    table = [
        {"id": i, "target": float(t), "prediction": float(m), "std_raw": float(s), "std": float(c)}
        | {f"member_{k}": float(predictions[k, n, 0]) for k in range(len(modules))}
        for n, (i, t, m, s, c) in enumerate(zip(ids, targets[:, 0], mean, spread, calibration.std(spread)))
    ]
    write_csv_rows(root / "calibration_predictions.csv", table)
    before = uncertainty_metrics(targets[:, 0], mean, spread)
    print(
        f"calibration on {len(ids)} held-out {rows} rows: σ scale {calibration.scale:.3g}"
        + (f", floor {calibration.floor:.3g}" if calibration.floor else "")
        + f", conformal 95 % multiplier "
        f"{calibration.conformal['95']:.3g} (raw spread: mean z² {before['mean_z2']:.3g}, 95 % coverage "
        f"{before['coverage_95']:.3f}, Spearman {before['spearman']:.3f})",
        flush=True,
    )
    return calibration.to_dict(), {"held_out_raw": before, "held_out_rows": rows}


__all__ = ["HeldOutRows", "calibrate", "checkpoint_scores", "fit_ensemble", "member_args", "member_predictions"]
