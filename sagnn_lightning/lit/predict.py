"""Predict with a trained checkpoint on the user's crystals → CSV.

``python -m sagnn_lightning predict --ckpt best.ckpt --input <folder of CIFs | .cif | CSV/JSON table |
matbench json> --output preds.csv``

* Output columns: ``id``, ``prediction`` (real units; for classification the 0/1 label) and, for
  classification, ``probability``; with several targets, one ``prediction_<target>`` (and
  ``probability_<target>``) column per target. Rows keep the input order.
* A structure that cannot be read or turned into a graph is reported on stderr by file / id with the
  reason; all the others are still predicted. The exit status is 0 when at least one structure was
  predicted, 1 when none was.
* The graph settings (cutoff, max_neighbors) are those the model was trained with (read from the
  checkpoint). The CSV is written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.graph import StructureError, structure_to_graph
from sagnn_lightning.data.sources import read_structures
from sagnn_lightning.lit.module import SAGNNModule


@dataclass
class Predictions:
    """Result of :func:`predict_structures`.

    Attributes:
        ids: predicted ids (input order).
        prediction: ``[n, T]`` real units (regression) or 0/1 labels (classification).
        probability: ``[n, T]`` (classification) or ``None``.
        target_names: ``T`` names.
        errors: ``(file or id, reason)`` of every input left out.
    """

    ids: list[str]
    prediction: torch.Tensor
    probability: torch.Tensor | None
    target_names: list[str]
    errors: list[tuple[str, str]]


def graph_settings_from_checkpoint(checkpoint: dict) -> dict[str, Any]:
    """``{"cutoff": Å, "max_neighbors": int | None}`` used in training (DataModule hparams, else the model's)."""
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data = {**data, **dict(data.get("init_args") or {})}
    model_cfg = (checkpoint.get("hyper_parameters") or {}).get("model") or {}
    model_cutoff = (model_cfg.get("init_args") or {}).get("cutoff") if isinstance(model_cfg, dict) else None
    cutoff = data.get("cutoff", model_cutoff if model_cutoff is not None else 5.0)
    return {"cutoff": float(cutoff), "max_neighbors": data.get("max_neighbors")}


def load_module(ckpt: str | os.PathLike, device: str = "cpu") -> tuple[SAGNNModule, dict[str, Any]]:
    """The trained module (eval mode, on ``device``) and its graph settings."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a .ckpt written by training "
                                "(e.g. runs/<recipe>/checkpoints/best-*.ckpt)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module = SAGNNModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    module.eval().to(device)
    return module, graph_settings_from_checkpoint(checkpoint)


def predict_structures(module: SAGNNModule, ids: Sequence[str], structures: Sequence[Any],
                       cutoff: float, max_neighbors: int | None = None, batch_size: int = 64,
                       errors: list[tuple[str, str]] | None = None) -> Predictions:
    """Graphs → batched forward passes. Structures whose graph fails are added to ``errors``."""
    errors = list(errors or [])
    device = next(module.parameters()).device
    graphs, kept = [], []
    for sample_id, structure in zip(ids, structures):
        try:
            graph = structure_to_graph(structure, cutoff=cutoff, max_neighbors=max_neighbors, name=str(sample_id))
        except StructureError as err:
            errors.append((str(sample_id), str(err)))
            continue
        graph.sample_id = str(sample_id)
        graphs.append(graph)
        kept.append(str(sample_id))
    preds, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(graphs), batch_size):
            batch = collate_graphs(graphs[start:start + batch_size]).to(device)
            out = module.predict_step(batch, start // batch_size)
            preds.append(out["prediction"].float().cpu())
            if "probability" in out:
                probs.append(out["probability"].float().cpu())
    num_targets = module.num_targets
    prediction = torch.cat(preds) if preds else torch.empty(0, num_targets)
    probability = (torch.cat(probs) if probs else torch.empty(0, num_targets)) \
        if module.task_type == "classification" else None
    return Predictions(kept, prediction, probability, list(module.target_names), errors)


def write_predictions_csv(path: str | os.PathLike, result: Predictions) -> Path:
    """Write ``result`` as CSV, atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    single = len(result.target_names) == 1
    pred_cols = ["prediction"] if single else [f"prediction_{n}" for n in result.target_names]
    prob_cols = [] if result.probability is None else (
        ["probability"] if single else [f"probability_{n}" for n in result.target_names])
    classification = result.probability is not None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", *pred_cols, *prob_cols])
            for k, sample_id in enumerate(result.ids):
                row = [sample_id]
                row += [int(v) if classification else repr(float(v)) for v in result.prediction[k].tolist()]
                if classification:
                    row += [repr(float(v)) for v in result.probability[k].tolist()]
                writer.writerow(row)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sagnn_lightning predict",
        description="Predict with a trained SA-GNN checkpoint on CIFs / tables; writes id,prediction[,probability].",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) written by training")
    parser.add_argument("--input", required=True,
                        help="a .cif file, a folder of *.cif, or a CSV/JSON table (matbench layout included)")
    parser.add_argument("--output", required=True, help="CSV file to write (atomically)")
    parser.add_argument("--structure-column", default=None, help="table column with CIF text / structure dicts")
    parser.add_argument("--id-column", default=None, help="table column with ids")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    return parser


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    module, settings = load_module(args.ckpt, device)
    inputs = read_structures(args.input, on_error="skip", structure_column=args.structure_column,
                             id_column=args.id_column)
    result = predict_structures(module, inputs.ids, inputs.structures, settings["cutoff"], settings["max_neighbors"],
                                batch_size=args.batch_size, errors=inputs.errors)
    for name, reason in result.errors:
        print(f"skipped: {reason}" if reason.startswith(name) else f"skipped {name}: {reason}", file=sys.stderr)
    if not result.ids:
        print(f"no structure of {args.input} could be predicted ({len(result.errors)} skipped); nothing written",
              file=sys.stderr)
        return 1
    out = write_predictions_csv(args.output, result)
    print(f"wrote {len(result.ids)} predictions to {out}" + (f" ({len(result.errors)} skipped)" if result.errors else ""))
    return 0
