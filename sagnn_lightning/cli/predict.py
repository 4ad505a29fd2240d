"""``python -m sagnn_lightning predict``: a trained checkpoint or a shipped model on the user's crystals → CSV.

``--ckpt best.ckpt --input <folder of CIFs | .cif | CSV/JSON table | matbench json | matbench_<task>> --output
preds.csv``; ``--model NAME`` instead of ``--ckpt`` takes a pretrained model shipped with the package.

* ``--ckpt`` is a ``.ckpt`` file, an ensemble folder (``ensemble fit``: adds ``std`` and, calibrated,
  ``lower_95``/``upper_95``; ``--members`` adds ``member_<j>``), a run folder (its best checkpoint), or ``best`` / ``last`` with
  ``--run-dir <run folder>``: "best" is the best checkpoint of the *latest* run in that folder, as recorded in its
  ``last*.ckpt``; the command prints which file it took.
* Output columns: ``id``, ``prediction`` (real units; for classification the 0/1 label) and, for
  classification, ``probability``; with several targets, one column named after each target (and
  ``probability_<target>``) column per target. Rows keep the input order.
* Streams: the input is read in chunks, graphs are built one batch at a time and the rows are written as they
  come, into a temporary file that replaces ``--output`` at the end (memory stays flat in the input's size).
  A progress bar when stdout is a terminal, else one line every ``--log-every`` batches.
* An input that cannot be read or turned into a graph is reported on stderr (file or id, and why) as it comes;
  the others are predicted. The exit status is 0 when at least one input was predicted, 1 when none was.
* The graph settings are those the model was trained with (read from the checkpoint).
* ``--attention DIR`` also writes each crystal's attention weights (:mod:`sagnn_lightning.lit.attention_export`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from sagnn_lightning.cli.arguments import CommandParser
from sagnn_lightning.data.inputs import AnySettings
from sagnn_lightning.data.matbench import read_matbench_split
from sagnn_lightning.data.matbench_format import matbench_default_ids
from sagnn_lightning.data.readers import InputItem, count_inputs, iter_inputs
from sagnn_lightning.data.tasks import ALL_MATBENCH_TASKS, get_task
from sagnn_lightning.errors import UsageError, param, render_params
from sagnn_lightning.files import check_writable
from sagnn_lightning.lit import pretrained
from sagnn_lightning.lit.attention_export import AttentionExport
from sagnn_lightning.lit.checkpoints import find_checkpoint
from sagnn_lightning.lit.ensemble import Ensemble, is_ensemble, load_ensemble
from sagnn_lightning.lit.inference import iter_predictions, model_graph_settings
from sagnn_lightning.lit.loading import load_module
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.predictions_csv import PredictionsWriter, check_id_header
from sagnn_lightning.lit.registry import card, checkpoint_file
from sagnn_lightning.models.composition import CompositionSAGNN

#: the library's parameters as this command's flags (errors name the flag a user of this command types)
FLAGS: dict[str, str] = {
    "ckpt": "--ckpt",
    "run_dir": "--run-dir",
    "model": "--model",
    "input": "--input",
    "output": "--output",
    "attention": "--attention",
    "split": "--split",
    "data.fold": "--fold",
    "fold": "--fold",
    "data.data_home": "--data-home",
    "data_home": "--data-home",
    "batch_size": "--batch-size",
    "id_header": "--id-header",
    "structure_column": "--structure-column",
    "composition_column": "--composition-column",
    "id_column": "--id-column",
    "max_isolated_radius": "--max-isolated-radius",
    "members": "--members",
    "data.structure_column": "--structure-column",
    "data.composition_column": "--composition-column",
    "data.id_column": "--id-column",
    "data.max_isolated_radius": "--max-isolated-radius",
}

#: LightningCLI options that this command does not take (a recipe's own ``predict`` does)
LIGHTNING_OPTIONS: tuple[str, ...] = ("--config", "--ckpt_path", "--model.", "--data.", "--trainer.", "--predictions.")


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m sagnn_lightning predict",
        description="Predict with a trained SA-GNN checkpoint or a shipped model on CIFs / tables; writes "
        "id,prediction[,probability].",
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
    parser.add_argument(
        "--members",
        action="store_true",
        help="with an ensemble (--ckpt <ensemble folder>): also write each member's prediction (member_<j>)",
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
    parser.add_argument(
        "--log-every",
        type=int,
        default=100,
        metavar="N",
        help="when stdout is not a terminal: one progress line every N batches (default 100)",
    )
    return parser


def is_matbench_task(value: str) -> bool:
    """``value`` names a matbench task (``matbench_jdft2d`` or ``jdft2d``) and is not an existing path."""
    name = value if value.startswith("matbench_") else f"matbench_{value}"
    return name in ALL_MATBENCH_TASKS and not Path(value).exists()


def _inputs(args: argparse.Namespace, composition: bool) -> tuple[Iterable[InputItem], int | None]:
    """The inputs (streamed from files; a matbench split is read whole) and their number when known."""
    if is_matbench_task(args.input):
        task = get_task(args.input)
        if (task.input_type == "composition") != composition:
            kind = "composition (formula)" if composition else "crystal-structure"
            raise UsageError(
                f"{param('input')} {args.input}: a {task.input_type} task, but the checkpoint is a {kind} model; "
                f"predict {task.input_type} tasks with a model trained on one"
            )
        raw = read_matbench_split(args.input, args.fold, args.split, args.data_home)
        items = [InputItem(label, label, None, reason) for label, reason in raw.errors]
        items += [InputItem(i, n, v) for i, n, v in zip(raw.ids, raw.labels, raw.items)]
        return items, len(items)
    column = args.composition_column if composition else args.structure_column
    stream = iter_inputs(
        args.input,
        "composition" if composition else "structure",
        column,
        args.id_column,
        default_ids=matbench_default_ids,
    )
    return stream, count_inputs(args.input)


class Progress:
    """A tqdm bar with an ETA on a terminal; otherwise one line on stderr every ``every`` batches and at the end."""

    def __init__(self, total: int | None, every: int) -> None:
        self.total, self.every, self.done, self.batches = total, every, 0, 0
        self.start = time.perf_counter()
        self.bar: Any = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="crystal", desc="predict", dynamic_ncols=True)

    def update(self, count: int) -> None:
        self.done += count
        self.batches += 1
        if self.bar is not None:
            self.bar.update(count)
        elif self.batches % self.every == 0:
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"predict: {self.done:,}"
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            text += f"/{self.total:,} ({100 * self.done / self.total:.0f} %), ETA {eta:.0f} s"
        print(f"{text}, {rate:,.0f} inputs/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.batches % self.every:
            self._line()


def _report(parts: Iterator[Any], progress: Progress) -> Iterator[Any]:
    """Pass the batches on, printing each skipped input on stderr as it comes and counting progress."""
    for part in parts:
        for name, template in part.errors:
            reason = render_params(template, FLAGS)
            print(f"skipped: {reason}" if reason.startswith(name) else f"skipped {name}: {reason}", file=sys.stderr)
        progress.update(len(part.ids) + len(part.errors))
        yield part


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    lightning = [a for a in argv if a.startswith(LIGHTNING_OPTIONS)]
    if lightning:
        raise UsageError(
            f"predict takes --ckpt, --input and --output, not LightningCLI options ({lightning[0].split('=')[0]}); "
            "e.g. --ckpt best --run-dir runs/<recipe> --input <file | folder | table | matbench_<task> --fold k> "
            "--output preds.csv (see --help)"
        )
    args = build_parser().parse_command(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.log_every < 1:
        raise UsageError(f"--log-every must be >= 1, got {args.log_every}")
    if args.max_isolated_radius is not None and not args.max_isolated_radius > 0:
        raise UsageError(f"--max-isolated-radius must be > 0 Å, got {args.max_isolated_radius}")
    check_id_header(args.id_header)
    check_writable(args.output, "output")  # before any work
    if args.attention is not None:
        check_writable(args.attention, "attention", kind="dir")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    module, source = _load(args, device)
    if args.max_isolated_radius is not None and module.graph_settings is not None:
        module.graph_settings = {**module.graph_settings, "max_isolated_radius": args.max_isolated_radius}
    composition = isinstance(module.model, CompositionSAGNN)
    export = None
    if args.attention is not None and isinstance(module, Ensemble):
        raise UsageError(
            "--attention takes one model: give one member, --model NAME/member_<j> for a shipped ensemble or "
            "--ckpt <ensemble folder>/member_<j>/<its .ckpt>"
        )
    if args.attention is not None and isinstance(module, SAGNNModule):  # before reading the input
        unit = card(args.model).unit if args.model is not None else None
        export = AttentionExport(args.attention, module, source=source, unit=unit)
    items, total = _inputs(args, composition)
    settings: AnySettings = model_graph_settings(module)
    return _run(module, items, total, settings, args, export, composition)


def _load(args: argparse.Namespace, device: str) -> tuple[SAGNNModule | Ensemble, str]:
    """The model that ``--ckpt`` / ``--model`` name (an ensemble folder or a shipped ensemble: an
    :class:`Ensemble`) and how to name its source; prints which checkpoint or ensemble it took."""
    shipped_ensemble = args.model is not None and bool(card(args.model).extra.get("members"))
    if args.model is not None and args.run_dir is not None:
        raise UsageError("--run-dir goes with --ckpt best|last, not with --model")
    if args.model is None and args.run_dir is None and is_ensemble(args.ckpt):
        ensemble = load_ensemble(args.ckpt, device)
        print(describe_ensemble(ensemble, args.ckpt), flush=True)
        return ensemble, str(args.ckpt)
    if shipped_ensemble:
        loaded = pretrained.load(args.model, device)
        assert isinstance(loaded, Ensemble)
        print(describe_ensemble(loaded, args.model), flush=True)
        return loaded, args.model
    if args.members:
        raise UsageError("--members goes with an ensemble: --ckpt <ensemble folder> (written by `ensemble fit`)")
    if args.model is not None:
        ckpt = checkpoint_file(args.model)  # checksum checked; unknown names list the available ones
    else:
        found = find_checkpoint(args.ckpt, args.run_dir)
        ckpt = found.path
        if found.folder is not None:
            print(found.describe(), flush=True)
    module, _ = load_module(ckpt, device, "model" if args.model is not None else "ckpt")
    return module, args.model or str(ckpt)


def describe_ensemble(ensemble: Ensemble, folder: str) -> str:
    """One line: how many members, and what its error bars are."""
    calibration = ensemble.calibration
    if calibration is None:
        bars = "std = the members' raw spread (not calibrated: train with --calibration-fraction > 0)"
    else:
        bars = f"std calibrated on {calibration.n} held-out rows (x{calibration.scale:.3g}), conformal 95 % interval"
    return f"ensemble {folder}: {len(ensemble)} members; {bars}"


def _extra(module: SAGNNModule | Ensemble) -> list[str]:
    if not isinstance(module, Ensemble):
        return []
    if module.task_type == "classification":
        return ["probability_std"]
    return ["std", *(["lower_95", "upper_95"] if module.calibration is not None else [])]


def _run(
    module: SAGNNModule | Ensemble,
    items: Iterable[InputItem],
    total: int | None,
    settings: AnySettings,
    args: argparse.Namespace,
    export: AttentionExport | None,
    composition: bool,
) -> int:
    progress = Progress(total, args.log_every)
    skipped = 0
    classification = module.task_type == "classification"
    members = len(module) if isinstance(module, Ensemble) and args.members else 0
    with PredictionsWriter(
        args.output, module.target_names, classification, args.id_header, _extra(module), members
    ) as writer:
        try:
            for part in _report(iter_predictions(module, items, settings, args.batch_size, export), progress):
                writer.write(part)
                skipped += len(part.errors)
        finally:
            progress.close()
        if writer.rows == 0:
            writer.discard()
    if writer.rows == 0:
        print(
            f"error: no {'formula' if composition else 'structure'} of {args.input} could be predicted "
            f"({skipped} skipped); nothing written",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {writer.rows} predictions to {writer.path}" + (f" ({skipped} skipped)" if skipped else ""))
    if export is not None:
        index = export.finish()
        print(f"wrote the attention weights of {len(export.crystals)} crystals to {index.parent} ({index.name})")
    return 0


__all__ = ["FLAGS", "build_parser", "is_matbench_task", "predict_main"]
