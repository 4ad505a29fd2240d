"""An ensemble from checkpoints trained apart: copied into one folder with a manifest, then calibrated.

``python -m sagnn_lightning ensemble assemble --out DIR --ckpt A.ckpt B.ckpt ...`` is for members that were not
trained by ``ensemble fit``: runs of one recipe with other seeds or head counts, a model trained earlier. They
must predict the same targets from the same graphs (:class:`~sagnn_lightning.lit.ensemble.Ensemble` checks) and,
to be calibrated, have held out the same rows: their data settings must agree on everything that chooses the
rows (:func:`split_settings`).

Calibration rows (``calibrate_on``):

* ``"calibration"``: the ``calibration_fraction`` rows every member held out (``--data.calibration_fraction``):
  the honest choice, as in ``ensemble fit``;
* ``"validation"``: the members' shared validation rows. No member trained on them, but each chose its checkpoint
  on them, so the errors there are a little smaller than on new crystals and the fitted scale a little too small;
  use it for members trained without a calibration carve;
* ``"none"``: the raw spread only.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from sagnn_lightning.errors import SAGNNError, UsageError, param
from sagnn_lightning.files import atomic_copy
from sagnn_lightning.lit.checkpoints import check_checkpoint_file, read_checkpoint
from sagnn_lightning.lit.ensemble import Ensemble, is_ensemble, write_manifest
from sagnn_lightning.lit.ensemble_fit import calibrate, checkpoint_scores
from sagnn_lightning.lit.loading import load_module

CalibrateOn = Literal["calibration", "validation", "none"]

#: data settings that say where or how fast the rows are read, not which rows
LOCAL_KEYS = frozenset(
    {"data_home", "cache_dir", "num_workers", "graph_workers", "progress", "download", "on_error", "batch_size"}
)


def _class_defaults(class_path: str) -> dict[str, Any]:
    """The constructor defaults of the DataModule ``class_path`` (settings recorded before a parameter existed
    take its default)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return {}
    return {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def split_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The data settings that choose a run's rows and their split (a checkpoint's ``datamodule_hyper_parameters``
    with the DataModule's defaults filled in; the data file by its name only)."""
    class_path = str(settings.get("_class_path", ""))
    merged = {**_class_defaults(class_path), **{k: v for k, v in settings.items() if not k.startswith("_")}}
    merged = {k: v for k, v in merged.items() if k not in LOCAL_KEYS}
    if merged.get("data_file"):
        merged["data_file"] = Path(str(merged["data_file"])).name
    return {"class_path": class_path, **merged}


def _check_same_rows(checkpoints: Sequence[Path], states: Sequence[dict[str, Any]]) -> None:
    first = split_settings(states[0].get("datamodule_hyper_parameters") or {})
    for path, state in zip(checkpoints[1:], states[1:]):
        other = split_settings(state.get("datamodule_hyper_parameters") or {})
        if other != first:
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            diff = ", ".join(f"{k}: {first.get(k)!r} vs {other.get(k)!r}" for k in keys)
            raise UsageError(
                f"{param('checkpoints')} {path} was trained on other rows than {checkpoints[0]} ({diff}); members "
                f"calibrated together must hold out the same rows: use {param('calibrate_on')}='none', or members "
                "trained with the same data settings"
            )


def _recorded_seed(checkpoint: Path) -> int | None:
    """``seed_everything`` of the LightningCLI run that wrote ``checkpoint`` (its ``config.yaml``, one folder up
    from ``checkpoints/``), if recorded."""
    config = checkpoint.parent.parent / "config.yaml"
    try:
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed_everything")
    except (OSError, yaml.YAMLError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def assemble_ensemble(
    folder: str | os.PathLike,
    checkpoints: Sequence[str | os.PathLike],
    calibrate_on: CalibrateOn = "validation",
    data_file: str | None = None,
    calibration_floor: bool = False,
) -> dict[str, Any]:
    """Copy ``checkpoints`` into the ensemble folder ``folder`` (``member_<j>/<file name>``), write its manifest and,
    unless ``calibrate_on="none"``, calibrate it on the members' shared held-out rows (module docstring). Returns the
    manifest.

    Args:
        folder: the ensemble folder to write (must not hold an ensemble yet).
        checkpoints: the members' checkpoint files (>= 2).
        calibrate_on: ``"calibration"``, ``"validation"`` or ``"none"``.
        data_file: where the members' data file is on this machine, when their checkpoints record another place
            (e.g. a shipped model's bare file name).
        calibration_floor: calibrate ``σ'² = s²σ² + f²`` instead of ``σ' = s·σ``.
    """
    if len(checkpoints) < 2:
        raise UsageError(f"{param('checkpoints')} needs >= 2 checkpoint files (an ensemble's spread needs two)")
    if calibrate_on not in ("calibration", "validation", "none"):
        raise UsageError(f"{param('calibrate_on')} must be 'calibration', 'validation' or 'none', got {calibrate_on!r}")
    root = Path(folder).expanduser().resolve()
    if is_ensemble(root):
        raise UsageError(f"{param('folder')} {root} already holds an ensemble; choose a new folder")
    paths = [check_checkpoint_file(c, "checkpoints") for c in checkpoints]
    states = [read_checkpoint(p, "checkpoints") for p in paths]
    Ensemble([load_module(p, "cpu", "checkpoints")[0] for p in paths])  # same targets and graphs, or a clear error
    if calibrate_on != "none":
        _check_same_rows(paths, states)
    members = []
    for j, (path, state) in enumerate(zip(paths, states)):
        target = root / f"member_{j}" / path.name
        atomic_copy(path, target)
        members.append(
            {
                "name": f"member_{j}",
                "source": str(path),
                "checkpoint": str(target.relative_to(root)),
                "seed": _recorded_seed(path),
                "epoch": state.get("epoch"),
                **checkpoint_scores(state),
            }
        )
    command = ["python", "-m", "sagnn_lightning", "ensemble", "assemble", "--out", str(root), "--ckpt"]
    command += [str(p) for p in paths] + ["--calibrate-on", calibrate_on]
    command += ["--calibration-floor"] if calibration_floor else []
    manifest: dict[str, Any] = {
        "format": 1,
        "command": shlex.join(command + (["--data-file", data_file] if data_file else [])),
        "split": "assembled",
        "calibrated_on": calibrate_on,
        "members_planned": len(members),
        "members": members,
        "calibration": None,
    }
    write_manifest(root, manifest)
    if calibrate_on != "none":
        try:
            manifest["calibration"], manifest["calibration_metrics"] = calibrate(
                root, manifest, calibrate_on, data_file, floor=calibration_floor
            )
        except FileNotFoundError as err:
            raise SAGNNError(
                f"the members' data file was not found ({err}); give its place on this machine with "
                f"{param('data_file')}"
            ) from err
        write_manifest(root, manifest)
    return manifest


__all__ = ["CalibrateOn", "assemble_ensemble", "split_settings"]
