"""Predict with a trained checkpoint on the user's crystals → CSV.

``python -m sagnn_lightning predict --ckpt best.ckpt --input <folder of CIFs | .cif | CSV/JSON table |
matbench json> --output preds.csv``; ``--model NAME`` instead of ``--ckpt`` takes a pretrained model shipped
with the package (:mod:`sagnn_lightning.pretrained`).

* ``--ckpt`` is a ``.ckpt`` file, a run folder (its best checkpoint), or ``best`` / ``last`` with
  ``--run-dir <run folder>`` (:func:`resolve_checkpoint`): "best" is the best checkpoint of the *latest*
  run in that folder, as recorded in its ``last*.ckpt``, so it stays right when several runs share a folder.

* Output columns: ``id``, ``prediction`` (real units; for classification the 0/1 label) and, for
  classification, ``probability``; with several targets, one ``prediction_<target>`` (and
  ``probability_<target>``) column per target. Rows keep the input order.
* A structure that cannot be read or turned into a graph is reported on stderr by file / id with the
  reason; all the others are still predicted. The exit status is 0 when at least one structure was
  predicted, 1 when none was.
* The graph settings (cutoff, max_neighbors, max_isolated_radius) are those the model was trained with
  (read from the checkpoint).
* A composition model (:class:`~sagnn_lightning.models.CompositionSAGNN`) predicts from a CSV/JSON table with a
  formula column (``--composition-column``), or from a composition task's official split
  (``--input matbench_expt_gap --fold k``); a bad formula is reported by id like a bad structure. The CSV is written atomically (temporary file in the same folder, then rename).
* ``--attention DIR`` also writes the attention weights of every predicted crystal: one ``.npz`` each plus
  ``index.json`` (:mod:`sagnn_lightning.lit.attention_export` describes the format); the CSV is the same with or
  without it. A model without attention layers (``attention="none"``) is a one-line error.
* User errors (missing or unreadable checkpoint, input or output) raise
  :class:`~sagnn_lightning.errors.SAGNNError` naming the option; ``python -m sagnn_lightning`` prints them
  as one ``error: ...`` line. The output is checked to be writable before anything is computed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.graph import GraphSettings, StructureError
from sagnn_lightning.data.inputs import AnySettings, item_to_graph
from sagnn_lightning.data.matbench_format import matbench_default_ids, read_matbench_json
from sagnn_lightning.data.readers import RawInputs, read_formulas, read_inputs
from sagnn_lightning.data.table import InputNotFoundError
from sagnn_lightning.data.tasks import ALL_MATBENCH_TASKS, get_task
from sagnn_lightning.errors import SAGNNError, UsageError
from sagnn_lightning.files import atomic_write
from sagnn_lightning.lit.attention_export import AttentionExport
from sagnn_lightning.lit.checkpoints import check_checkpoint_file, read_checkpoint
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.pretrained import checkpoint_file
from sagnn_lightning.models.composition import CompositionSAGNN

#: ``--ckpt`` keywords resolved from ``--run-dir``
CKPT_KEYWORDS: tuple[str, ...] = ("best", "last")


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
    """``{"cutoff": Å, "max_neighbors": int | None, "max_isolated_radius": Å}`` used in training (DataModule
    hparams, else the model's cutoff and the defaults)."""
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data = {**data, **dict(data.get("init_args") or {})}
    model_cfg = (checkpoint.get("hyper_parameters") or {}).get("model") or {}
    model_cutoff = (model_cfg.get("init_args") or {}).get("cutoff") if isinstance(model_cfg, dict) else None
    cutoff = data.get("cutoff", model_cutoff if model_cutoff is not None else 5.0)
    return {
        "cutoff": float(cutoff),
        "max_neighbors": data.get("max_neighbors"),
        "max_isolated_radius": float(data.get("max_isolated_radius") or 20.0),
    }


# --------------------------------------------------------------------------- checkpoints and paths


def _newest(paths: Sequence[Path]) -> Path | None:
    return max(paths, key=lambda p: (p.stat().st_mtime_ns, p.name)) if paths else None


def _recorded_best(last: Path, folder: Path) -> Path | None:
    """The best checkpoint recorded in ``last``'s ModelCheckpoint state (``best_model_path``), if it exists
    (as recorded, or under the same name in ``folder`` when the run folder was moved)."""
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged last.ckpt: fall back to the file names
        return None
    for callback_state in (state.get("callbacks") or {}).values():
        recorded = callback_state.get("best_model_path") if isinstance(callback_state, dict) else None
        if recorded:
            for candidate in (Path(recorded), folder / Path(recorded).name):
                if candidate.is_file():
                    return candidate
    return None


def resolve_checkpoint(ckpt: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint file meant by ``--ckpt`` (and ``--run-dir``).

    * a file: itself;
    * ``"best"`` / ``"last"`` with ``run_dir``, or a run folder given as ``ckpt`` (= its best): looked up in
      ``<run dir>/checkpoints`` (or in the folder itself when it holds the ``.ckpt`` files). ``last`` is the
      newest ``last*.ckpt`` (a second run in the same folder writes ``last-v1.ckpt``); ``best`` is the best
      checkpoint recorded in that file (``ModelCheckpoint.best_model_path``), i.e. the best of the latest
      run, else the newest other ``*.ckpt``.
    """
    text = str(ckpt)
    if text in CKPT_KEYWORDS:
        if run_dir is None:
            raise UsageError(f"--ckpt {text} needs --run-dir <the run folder, e.g. runs/quickstart>")
        folder, kind = Path(run_dir).expanduser(), text
        option = "--run-dir"
    elif Path(text).expanduser().is_dir():
        folder, kind, option = Path(text).expanduser(), "best", "--ckpt"
    else:
        return check_checkpoint_file(text)
    if not folder.is_dir():
        raise InputNotFoundError(f"run folder {folder} does not exist ({option})")
    checkpoints = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    lasts = sorted(checkpoints.glob("last*.ckpt"))
    last = _newest(lasts)
    if kind == "last":
        if last is None:
            raise SAGNNError(
                f"no last*.ckpt in {checkpoints} ({option}); was the run trained with "
                "--checkpoint.save_last=false? Give --ckpt <file>.ckpt"
            )
        return check_checkpoint_file(last)
    best = _recorded_best(last, checkpoints) if last is not None else None
    if best is None:
        best = _newest([p for p in checkpoints.glob("*.ckpt") if p not in lasts])
    if best is None:
        raise SAGNNError(
            f"no best checkpoint in {checkpoints} ({option}); has a run in this folder finished "
            "an epoch with validation? Give --ckpt <file>.ckpt"
        )
    return check_checkpoint_file(best)


def check_writable(path: str | os.PathLike, option: str, kind: str = "file", what: str | None = None) -> Path:
    """Fail early, before any work, when ``path`` (a ``"file"`` or ``"dir"``) cannot be written.

    ``option`` is the flag that sets it (named in the message), ``what`` an optional description.

    Creates nothing: a probe file is made and removed in the nearest existing folder.

    Raises:
        UsageError: ``path`` is a folder where a file is wanted, or the reverse (exit status 2).
        SAGNNError: the folder is not writable, or a parent is a file (exit status 1).
    """
    path = Path(path).expanduser()
    label = f"{what} {path} ({option})" if what else f"{option} {path}"
    try:
        if kind == "file" and path.is_dir():
            raise UsageError(f"{label} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
        if kind == "dir" and path.exists() and not path.is_dir():
            raise UsageError(f"{label} is a file; give a folder")
        folder = path if kind == "dir" else path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise SAGNNError(f"cannot write {label}: {folder} is a file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".sagnn-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SAGNNError(
            f"cannot write {label}: {err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
        ) from err
    return path


def load_module(ckpt: str | os.PathLike, device: str = "cpu") -> tuple[SAGNNModule, dict[str, Any]]:
    """The trained module (eval mode, on ``device``) and its graph settings.

    Raises:
        InputNotFoundError: no such file. SAGNNError: not a PyTorch checkpoint, or not one of an SA-GNN.
    """
    path = check_checkpoint_file(ckpt)
    checkpoint = read_checkpoint(path, "--ckpt")
    if "hyper_parameters" not in checkpoint:
        raise SAGNNError(
            f"--ckpt {path} is not a checkpoint of an SA-GNN training run (no hyper_parameters); "
            "give a .ckpt written by a sagnn_lightning recipe"
        )
    try:
        module = SAGNNModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # another model's checkpoint: mismatched config or weights
        raise SAGNNError(
            f"--ckpt {path} is not a checkpoint of an SA-GNN training run ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    module.eval().to(device)
    return module, graph_settings_from_checkpoint(checkpoint)


def predict_structures(
    module: SAGNNModule,
    ids: Sequence[str],
    structures: Sequence[Any],
    cutoff: float,
    max_neighbors: int | None = None,
    batch_size: int = 64,
    errors: list[tuple[str, str]] | None = None,
    max_isolated_radius: float = 20.0,
    labels: Sequence[str] | None = None,
    settings: CompositionSettings | None = None,
    on_batch: Callable[[Any, dict[str, Any]], None] | None = None,
) -> Predictions:
    """Graphs → batched forward passes.

    ``structures`` are raw inputs (``Structure``, CIF text or ``Structure.as_dict()``; or formulas, with
    ``settings=CompositionSettings()`` for a composition model, when the cutoff arguments are unused), turned into
    graphs by
    :func:`~sagnn_lightning.data.inputs.item_to_graph`, the path the training cache takes, so an input gives
    the same graph here as in ``fit``. Inputs whose graph fails are added to ``errors`` as ``(label, reason)``
    (``labels`` default to the ids). ``on_batch(batch, outputs)``, if given, is called after each batch with the
    module's ``predict_step`` outputs (e.g. :class:`~sagnn_lightning.lit.attention_export.AttentionExport`).
    """
    errors = list(errors or [])
    device = next(module.parameters()).device
    graph_settings: AnySettings = settings or GraphSettings(
        cutoff=cutoff, max_neighbors=max_neighbors, max_isolated_radius=max_isolated_radius
    )
    graphs, kept = [], []
    for k, (sample_id, structure) in enumerate(zip(ids, structures)):
        label = str(labels[k]) if labels is not None else str(sample_id)
        try:
            graph = item_to_graph(structure, graph_settings, name=label)
        except StructureError as err:
            errors.append((label, str(err)))
            continue
        graph.sample_id = str(sample_id)
        graphs.append(graph)
        kept.append(str(sample_id))
    preds, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(graphs), batch_size):
            batch = collate_graphs(graphs[start : start + batch_size]).to(device)
            out = module.predict_step(batch, start // batch_size)
            if on_batch is not None:
                on_batch(batch, out)
            preds.append(out["prediction"].float().cpu())
            if "probability" in out:
                probs.append(out["probability"].float().cpu())
    num_targets = module.num_targets
    prediction = torch.cat(preds) if preds else torch.empty(0, num_targets)
    probability = (
        (torch.cat(probs) if probs else torch.empty(0, num_targets)) if module.task_type == "classification" else None
    )
    return Predictions(kept, prediction, probability, list(module.target_names), errors)


def write_predictions_csv(path: str | os.PathLike, result: Predictions, id_header: str = "id") -> Path:
    """Write ``result`` as CSV (first column ``id_header``), atomically (:func:`sagnn_lightning.files.atomic_write`:
    temp file in the same folder + ``os.replace``; a new file gets the umask's permissions, a replaced one keeps
    its mode)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    single = len(result.target_names) == 1
    pred_cols = ["prediction"] if single else [f"prediction_{n}" for n in result.target_names]
    prob_cols = (
        []
        if result.probability is None
        else (["probability"] if single else [f"probability_{n}" for n in result.target_names])
    )
    classification = result.probability is not None
    with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([id_header, *pred_cols, *prob_cols])
        for k, sample_id in enumerate(result.ids):
            row: list[Any] = [sample_id]
            row += [int(v) if classification else repr(float(v)) for v in result.prediction[k].tolist()]
            if result.probability is not None:
                row += [repr(float(v)) for v in result.probability[k].tolist()]
            writer.writerow(row)
    return path


def is_matbench_task(value: str) -> bool:
    """``value`` names a matbench task (``matbench_jdft2d`` or ``jdft2d``) and is not an existing path."""
    name = value if value.startswith("matbench_") else f"matbench_{value}"
    return name in ALL_MATBENCH_TASKS and not Path(value).exists()


def read_matbench_split(task: str, fold: int, split: str, data_home: str | None = None) -> RawInputs:
    """The structures of one official matbench v0.1 split (``split`` = ``"test"`` or ``"train"`` of ``fold``),
    in matbench's id order (``mb-...`` ids), read from the task file the DataModule uses (``data_home``, else
    ``$MATMINER_DATA``, else matbench's download)."""
    from sagnn_lightning.data.matbench import MatbenchDataModule, official_fold

    if split not in ("test", "train"):
        raise UsageError(f"--split must be 'test' or 'train', got {split!r}")
    try:
        datamodule = MatbenchDataModule(task, fold=fold, data_home=data_home, progress=False)
    except UsageError as err:  # the DataModule names its own flags (--data.*); here they are predict's
        raise UsageError(str(err).replace("--data.fold", "--fold").replace("--data.data_home", "--data-home")) from err
    train_ids, test_ids = official_fold(datamodule.task.name, fold)
    wanted = test_ids if split == "test" else train_ids
    if datamodule.task.input_type == "composition":
        table = read_matbench_json(
            datamodule.source_file(),
            datamodule.task.name,
            datamodule.task.n_samples,
            datamodule.task.target,
            "composition",
        )
        inputs = RawInputs(ids=table.ids, items=list(table.structures or []), labels=list(table.ids), errors=[])
    else:
        inputs = read_inputs(datamodule.source_file(), default_ids=matbench_default_ids)
    position = {sid: k for k, sid in enumerate(inputs.ids)}
    missing = [sid for sid in wanted if sid not in position and not any(e[0] == sid for e in inputs.errors)]
    if missing:
        raise UsageError(
            f"{datamodule.source_file()} lacks {len(missing)} of the {len(wanted)} {split} ids of "
            f"{datamodule.task.name} fold {fold} (first: {missing[0]}); give --data-home the folder of the full "
            "matbench file."
        )
    keep = [position[sid] for sid in wanted if sid in position]
    wanted_set = set(wanted)
    return RawInputs(
        ids=[inputs.ids[k] for k in keep],
        items=[inputs.items[k] for k in keep],
        labels=[inputs.labels[k] for k in keep],
        errors=[e for e in inputs.errors if e[0] in wanted_set],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sagnn_lightning predict",
        description="Predict with a trained SA-GNN checkpoint on CIFs / tables; writes id,prediction[,probability].",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--ckpt",
        help="checkpoint (.ckpt) written by training; or 'best' / 'last' with --run-dir; or a run "
        "folder (= its best checkpoint)",
    )
    which.add_argument(
        "--model",
        help="a pretrained model shipped with the package, by name (python -m sagnn_lightning models lists them)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="run folder (trainer.default_root_dir, e.g. runs/quickstart) for --ckpt best|last: "
        "'best' is the best checkpoint of the latest run in that folder",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a .cif (or any file pymatgen reads), a folder of *.cif, a CSV/JSON table (matbench layout included), "
        "or a matbench task name (e.g. matbench_jdft2d) for its official split --split of --fold",
    )
    parser.add_argument("--fold", type=int, default=0, help="with a matbench task --input: official fold 0-4")
    parser.add_argument("--split", default="test", help="with a matbench task --input: 'test' (default) or 'train'")
    parser.add_argument(
        "--data-home",
        default=None,
        help="with a matbench task --input: folder holding <task>.json.gz (default $MATMINER_DATA, else download)",
    )
    parser.add_argument("--output", required=True, help="CSV file to write (atomically)")
    parser.add_argument("--structure-column", default=None, help="table column with CIF text / structure dicts")
    parser.add_argument(
        "--composition-column",
        default=None,
        help="composition models: table column with formulas (default composition/formula/pretty_formula/...)",
    )
    parser.add_argument("--id-column", default=None, help="table column with ids")
    parser.add_argument(
        "--id-header",
        default="id",
        help="name of the output's id column (default 'id'; e.g. 'mbid' for a matbench file)",
    )
    parser.add_argument(
        "--attention",
        default=None,
        metavar="DIR",
        help="also write each crystal's attention weights to DIR: one .npz per crystal + index.json "
        "(then: python -m sagnn_lightning attention-plots DIR)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument(
        "--max-isolated-radius",
        type=float,
        default=None,
        help="Å; how far to look for the neighbours of an atom with none inside the cutoff "
        "(default: the training value, 20)",
    )
    return parser


#: LightningCLI options that the predict command does not take (a recipe's own ``predict`` does)
LIGHTNING_OPTIONS: tuple[str, ...] = ("--config", "--ckpt_path", "--model.", "--data.", "--trainer.", "--predictions.")


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status. LightningCLI's options get a one-line pointer to this
    command's flags instead of argparse's usage message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    lightning = [a for a in argv if a.startswith(LIGHTNING_OPTIONS)]
    if lightning:
        raise UsageError(
            f"predict takes --ckpt, --input and --output, not LightningCLI options ({lightning[0].split('=')[0]}); "
            "e.g. --ckpt best --run-dir runs/<recipe> --input <file | folder | table | matbench_<task> --fold k> "
            "--output preds.csv (see --help)"
        )
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_isolated_radius is not None and not args.max_isolated_radius > 0:
        raise UsageError(f"--max-isolated-radius must be > 0 Å, got {args.max_isolated_radius}")
    check_writable(args.output, "--output")  # before any work
    if args.attention is not None:
        check_writable(args.attention, "--attention", kind="dir")
    if args.model is not None:
        if args.run_dir is not None:
            raise UsageError("--run-dir goes with --ckpt best|last, not with --model")
        ckpt = checkpoint_file(args.model)  # checksum checked; unknown names list the available ones
    else:
        ckpt = resolve_checkpoint(args.ckpt, args.run_dir)
        if str(args.ckpt) != str(ckpt):
            print(f"checkpoint: {ckpt}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    module, settings = load_module(ckpt, device)
    if args.max_isolated_radius is not None:
        settings["max_isolated_radius"] = args.max_isolated_radius
    composition = isinstance(module.model, CompositionSAGNN)
    export = None
    if args.attention is not None:  # before reading the input: a model without attention is refused at once
        export = AttentionExport(args.attention, module, source=args.model or str(ckpt))
    if is_matbench_task(args.input):
        task = get_task(args.input)
        if (task.input_type == "composition") != composition:
            kind = "composition (formula)" if composition else "crystal-structure"
            raise UsageError(
                f"--input {args.input}: a {task.input_type} task, but the checkpoint is a {kind} model; "
                f"predict {task.input_type} tasks with a model trained on one"
            )
        inputs = read_matbench_split(args.input, args.fold, args.split, args.data_home)
    elif composition:
        inputs = read_formulas(
            args.input,
            composition_column=args.composition_column,
            id_column=args.id_column,
            default_ids=matbench_default_ids,
        )
    else:
        inputs = read_inputs(
            args.input,
            structure_column=args.structure_column,
            id_column=args.id_column,
            default_ids=matbench_default_ids,
        )
    result = predict_structures(
        module,
        inputs.ids,
        inputs.items,
        settings["cutoff"],
        settings["max_neighbors"],
        batch_size=args.batch_size,
        errors=inputs.errors,
        max_isolated_radius=settings["max_isolated_radius"],
        labels=inputs.labels,
        settings=CompositionSettings() if composition else None,
        on_batch=export,
    )
    for name, reason in result.errors:
        print(f"skipped: {reason}" if reason.startswith(name) else f"skipped {name}: {reason}", file=sys.stderr)
    if not result.ids:
        print(
            f"error: no {'formula' if composition else 'structure'} of {args.input} could be predicted ({len(result.errors)} skipped); nothing written",
            file=sys.stderr,
        )
        return 1
    if not args.id_header.strip() or args.id_header in ("prediction", "probability"):
        raise UsageError(
            f"--id-header must be a non-empty name other than the prediction columns, got {args.id_header!r}"
        )
    out = write_predictions_csv(args.output, result, id_header=args.id_header)
    print(
        f"wrote {len(result.ids)} predictions to {out}" + (f" ({len(result.errors)} skipped)" if result.errors else "")
    )
    if export is not None:
        index = export.finish()
        print(f"wrote the attention weights of {len(export.crystals)} crystals to {index.parent} ({index.name})")
    return 0
