"""Make a shipped pretrained model (``<name>.ckpt`` + its card ``<name>.json``) from a training checkpoint.

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

import pytorch_lightning as pl
import torch
import yaml

import sagnn_lightning
from sagnn_lightning.files import atomic_write
from sagnn_lightning.lit.loading import load_module
from sagnn_lightning.lit.pretrained import training_datamodule
from sagnn_lightning.lit.registry import MODELS_DIR, ModelCard, sha256_of

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="the training run's best checkpoint")
    parser.add_argument("--name", required=True, help="model name (a key of --cards)")
    parser.add_argument("--cards", default=str(ROOT / "scripts" / "pretrained_cards.yaml"))
    parser.add_argument("--data-file", default=None, help="where the run's data file is now (validation)")
    parser.add_argument("--out", default=str(MODELS_DIR), help="folder of the shipped models")
    args = parser.parse_args(argv)

    info = yaml.safe_load(Path(args.cards).read_text(encoding="utf-8"))[args.name]
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    recorded = recorded_score(checkpoint)
    data = dict(checkpoint["datamodule_hyper_parameters"])
    slim = {k: v for k, v in checkpoint.items() if k not in DROPPED}
    slim["datamodule_hyper_parameters"] = portable_data_settings(data)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{args.name}.ckpt"
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    with atomic_write(ckpt_path, "wb") as fh:
        fh.write(buffer.getvalue())

    mae, rows = validate(ckpt_path, data, args.data_file)
    if recorded is not None and abs(mae - recorded) > 1e-3 * max(1.0, abs(recorded)):
        print(f"error: validation MAE {mae:.6g} here, {recorded:.6g} recorded by the run", file=sys.stderr)
        return 1
    hparams = slim["hyper_parameters"]
    model_args = hparams["model"]["init_args"]
    config = {
        "model": {k: v for k, v in hparams.items() if not k.startswith("_")},
        "data": slim["datamodule_hyper_parameters"],
        "trainer": info["trainer"],
    }
    summary = info["summary"].format(validation_mae=mae, rows=rows)
    card = ModelCard(
        name=args.name,
        summary=summary,
        target=info["target"],
        unit=info["unit"],
        per=info["per"],
        training_data=info["training_data"],
        citation=info["citation"],
        licence=info["licence"],
        cutoff=float(model_args["cutoff"]),
        config=config,
        validation_mae=round(mae, 6),
        validation_rows=rows,
        best_epoch=int(checkpoint["epoch"]) + 1,
        epochs=int(info["trainer"]["max_epochs"]),
        matbench=info.get("matbench") or {},
        package_version=sagnn_lightning.__version__,
        sha256=sha256_of(ckpt_path),
        command=" ".join(info["command"].split()),
        file=ckpt_path.name,
    )
    with atomic_write(out / f"{args.name}.json", "w", encoding="utf-8") as fh:
        json.dump(card.to_dict(), fh, indent=2, sort_keys=False)
        fh.write("\n")
    print(f"{args.name}: validation MAE {mae:.6g} {card.unit} on {rows} rows (run recorded {recorded}); {ckpt_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
