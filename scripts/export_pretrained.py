"""Make a shipped pretrained model (``<name>.ckpt`` + its card ``<name>.json``) from a training checkpoint, or a
shipped ensemble (``<name>/member_<j>.ckpt`` + one card listing the members and the calibration) from an ensemble
folder (``--ensemble DIR``, written by ``python -m sagnn_lightning ensemble fit``).

    python scripts/export_pretrained.py --ckpt runs/phonons_all/checkpoints/best-*.ckpt --name matbench_phonons \
        --data-file ../shared/data/matbench/matbench_phonons.json.gz

* The checkpoint is slimmed to what inference and fine-tuning need (weights, the training config, the graph
  settings): optimizer, scheduler, loop and callback states are dropped, and local paths in the data settings
  are reduced to file names.
* The validation MAE in the card is *measured* here: the run's own DataModule (class and arguments from the
  checkpoint; ``--data-file`` where the data lives now) is rebuilt and ``Trainer.validate`` runs on its
  validation rows with the slimmed model; it must agree with the score the run recorded.
* The rest of the card (data, citation, licence, unit, command, matbench score) comes from
  ``scripts/pretrained_cards.yaml``; the sha256 is of the written ``.ckpt``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

import sagnn_lightning
from sagnn_lightning.files import atomic_write
from sagnn_lightning.lit.ensemble import read_manifest
from sagnn_lightning.lit.ensemble_fit import member_predictions
from sagnn_lightning.lit.loading import load_module
from sagnn_lightning.lit.pretrained import training_datamodule
from sagnn_lightning.lit.registry import MODELS_DIR, ModelCard, sha256_of
from sagnn_lightning.uncertainty import Calibration, uncertainty_metrics

ROOT = Path(__file__).resolve().parents[1]
#: checkpoint entries a shipped model does not need
DROPPED = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "wandb_run_id")
#: data settings that name local paths or machine choices
LOCAL_DATA_KEYS = {"data_home": None, "cache_dir": None, "num_workers": 0, "graph_workers": 0}


def recorded_score(checkpoint: dict[str, Any]) -> float | None:
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None


def portable_data_settings(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "_instantiator"}
    if out.get("data_file"):
        out["data_file"] = Path(str(out["data_file"])).name
    return {**out, **{k: v for k, v in LOCAL_DATA_KEYS.items() if k in out}}


def validate(ckpt: Path, data: dict[str, Any], data_file: str | None) -> tuple[float, int]:
    """``(validation MAE, validation rows)`` of the model in ``ckpt`` on its run's validation split."""
    module, _ = load_module(ckpt)
    overrides: dict[str, Any] = {"num_workers": 0, "graph_workers": 0, "progress": False}
    if data_file:
        overrides["data_file"] = data_file
    datamodule = training_datamodule(data, **overrides)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    rows = sum(int(batch.num_graphs) for batch in datamodule.val_dataloader())
    return float(metrics["val/mae"]), rows


def slim_checkpoint(ckpt: Path, path: Path) -> tuple[dict[str, Any], float | None, dict[str, Any]]:
    """Write ``ckpt`` slimmed (see the module docstring) to ``path``; returns the slim checkpoint, the score the run
    recorded and the run's data settings."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    data = dict(checkpoint["datamodule_hyper_parameters"])
    slim = {k: v for k, v in checkpoint.items() if k not in DROPPED}
    slim["datamodule_hyper_parameters"] = portable_data_settings(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())
    return slim, recorded_score(checkpoint), data


def ensemble_validation(paths: list[Path], data: dict[str, Any], data_file: str | None) -> dict[str, Any]:
    """The members and their mean on the validation rows they share (``ensemble fit --split seeds``): each
    member's MAE, the mean's MAE and, with the calibration applied, the calibration metrics of those rows."""
    modules = [load_module(path)[0] for path in paths]
    overrides: dict[str, Any] = {"num_workers": 0, "graph_workers": 0, "progress": False}
    if data_file:
        overrides["data_file"] = data_file
    datamodule = training_datamodule(data, **overrides)
    datamodule.setup("validate")
    ids, stacked = member_predictions(modules, datamodule.val_dataloader())
    predictions = stacked[:, :, 0]
    truth = np.asarray(datamodule.targets_of(ids), dtype=np.float64)[:, 0]
    return {
        "ids": ids,
        "truth": truth,
        "predictions": predictions,
        "member_mae": [float(np.mean(np.abs(p - truth))) for p in predictions],
        "mae": float(np.mean(np.abs(predictions.mean(axis=0) - truth))),
    }


def export_ensemble(args: argparse.Namespace, info: dict[str, Any]) -> int:
    """``--ensemble DIR``: every member slimmed into ``<out>/<name>/member_<j>.ckpt``, one card listing them with
    the ensemble's calibration; the validation MAE is that of the members' mean, measured here."""
    manifest = read_manifest(args.ensemble)
    out = Path(args.out)
    members, paths, recorded = [], [], []
    data: dict[str, Any] = {}
    slim: dict[str, Any] = {}
    for j, member in enumerate(manifest["members"]):
        path = out / args.name / f"member_{j}.ckpt"
        slim_j, score, data_j = slim_checkpoint(Path(args.ensemble) / member["checkpoint"], path)
        slim, data = (slim_j, data_j) if j == 0 else (slim, data)
        paths.append(path)
        recorded.append(score)
        members.append({"file": f"{args.name}/member_{j}.ckpt", "sha256": sha256_of(path), "seed": member["seed"]})
    check = ensemble_validation(paths, data, args.data_file)
    for j, (mae, score) in enumerate(zip(check["member_mae"], recorded)):
        if score is not None and abs(mae - score) > 1e-3 * max(1.0, abs(score)):
            print(f"error: member {j}: validation MAE {mae:.6g} here, {score:.6g} recorded by its run", file=sys.stderr)
            return 1
        members[j]["validation_mae"] = round(mae, 6)
    calibration = manifest.get("calibration") or None
    extra: dict[str, Any] = {"members": members, "calibration": calibration}
    if calibration:
        fitted = Calibration.from_dict(calibration)
        spread = check["predictions"].std(axis=0, ddof=1)
        mean = check["predictions"].mean(axis=0)
        extra["validation_calibration"] = {
            k: round(v, 6)
            for k, v in uncertainty_metrics(
                check["truth"], mean, fitted.std(spread), half_widths=fitted.half_widths(spread)
            ).items()
        }
    card = make_card(args.name, info, slim, check["mae"], len(check["ids"]), f"{args.name}/member_0.ckpt", out)
    card = ModelCard.from_dict({**card.to_dict(), **extra})
    write_card(out / f"{args.name}.json", card)
    print(
        f"{args.name}: {len(members)} members, validation MAE of the mean {check['mae']:.6g} {card.unit} on "
        f"{len(check['ids'])} rows (members {', '.join(f'{m:.4g}' for m in check['member_mae'])})"
    )
    return 0


def make_card(
    name: str, info: dict[str, Any], slim: dict[str, Any], mae: float, rows: int, file: str, out: Path
) -> ModelCard:
    hparams = slim["hyper_parameters"]
    config = {
        "model": {k: v for k, v in hparams.items() if not k.startswith("_")},
        "data": slim["datamodule_hyper_parameters"],
        "trainer": info["trainer"],
    }
    return ModelCard(
        name=name,
        summary=info["summary"].format(validation_mae=mae, rows=rows),
        target=info["target"],
        unit=info["unit"],
        per=info["per"],
        training_data=info["training_data"],
        citation=info["citation"],
        licence=info["licence"],
        cutoff=float(hparams["model"]["init_args"]["cutoff"]),
        config=config,
        validation_mae=round(mae, 6),
        validation_rows=rows,
        best_epoch=int(slim["epoch"]) + 1,
        epochs=int(info["trainer"]["max_epochs"]),
        matbench=info.get("matbench") or {},
        package_version=sagnn_lightning.__version__,
        sha256=sha256_of(out / file),
        command=" ".join(info["command"].split()),
        file=file,
    )


def write_card(path: Path, card: ModelCard) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(card.to_dict(), fh, indent=2, sort_keys=False)
        fh.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", help="the training run's best checkpoint")
    which.add_argument("--ensemble", help="an ensemble folder (ensemble fit): ship all its members and calibration")
    parser.add_argument("--name", required=True, help="model name (a key of --cards)")
    parser.add_argument("--cards", default=str(ROOT / "scripts" / "pretrained_cards.yaml"))
    parser.add_argument("--data-file", default=None, help="where the run's data file is now (validation)")
    parser.add_argument("--out", default=str(MODELS_DIR), help="folder of the shipped models")
    args = parser.parse_args(argv)

    info = yaml.safe_load(Path(args.cards).read_text(encoding="utf-8"))[args.name]
    if args.ensemble:
        return export_ensemble(args, info)
    out = Path(args.out)
    ckpt_path = out / f"{args.name}.ckpt"
    slim, recorded, data = slim_checkpoint(Path(args.ckpt), ckpt_path)
    mae, rows = validate(ckpt_path, data, args.data_file)
    if recorded is not None and abs(mae - recorded) > 1e-3 * max(1.0, abs(recorded)):
        print(f"error: validation MAE {mae:.6g} here, {recorded:.6g} recorded by the run", file=sys.stderr)
        return 1
    card = make_card(args.name, info, slim, mae, rows, ckpt_path.name, out)
    write_card(out / f"{args.name}.json", card)
    print(f"{args.name}: validation MAE {mae:.6g} {card.unit} on {rows} rows (run recorded {recorded}); {ckpt_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
