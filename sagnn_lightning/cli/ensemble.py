"""``python -m sagnn_lightning ensemble fit [options] -- <training command>``: train an ensemble
(:func:`sagnn_lightning.lit.ensemble_fit.fit_ensemble`); ``ensemble assemble --out DIR --ckpt A B ...``: make one from
checkpoints trained apart (:func:`sagnn_lightning.lit.ensemble_assemble.assemble_ensemble`)."""

from __future__ import annotations

from collections.abc import Sequence

from sagnn_lightning.cli.arguments import CommandParser
from sagnn_lightning.errors import UsageError
from sagnn_lightning.lit.ensemble_assemble import assemble_ensemble
from sagnn_lightning.lit.ensemble_fit import fit_ensemble

ACTIONS = ("fit", "assemble")


def _fit_parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m sagnn_lightning ensemble fit",
        description="Train K members of one training command (a recipe, or `python -m sagnn_lightning fit "
        "--config ...`) into an ensemble folder, resumably, and calibrate its spread on held-out rows. The "
        "training command follows `--`; `predict --ckpt <folder>` then writes id,prediction,std.",
    )
    parser.add_argument("--out", required=True, help="the ensemble folder (manifest + one run folder per member)")
    parser.add_argument("--members", type=int, default=5, help="K members (default 5)")
    parser.add_argument(
        "--split",
        default="seeds",
        help="'seeds' (default): every member validates on the same rows; 'inner-folds' (matbench tasks): member j "
        "validates on inner fold j of the training rows",
    )
    parser.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.1,
        help="share of the training rows held out of every member to calibrate the spread on (default 0.1; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="member j trains with seed + j (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="members trained at once (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each member (default: inherited)")
    _add_floor_flag(parser)
    return parser


def _add_floor_flag(parser: CommandParser) -> None:
    parser.add_argument(
        "--calibration-floor",
        action="store_true",
        help="calibrate σ'² = s²σ² + f² (a floor for rows where the members agree but still err, e.g. expt_gap's "
        "metals) instead of σ' = s·σ",
    )


def _assemble_parser() -> CommandParser:
    parser = CommandParser(
        prog="python -m sagnn_lightning ensemble assemble",
        description="Make an ensemble folder from checkpoints trained apart (other seeds, head counts, earlier "
        "runs of one recipe): the checkpoints are copied in, and the spread is calibrated on the rows that all "
        "members held out. `predict --ckpt <folder>` then writes id,prediction,std.",
    )
    parser.add_argument("--out", required=True, help="the new ensemble folder")
    parser.add_argument("--ckpt", nargs="+", required=True, help="the members' checkpoint files (two or more)")
    parser.add_argument(
        "--calibrate-on",
        default="validation",
        help="'validation' (default): the validation rows the members share (they chose their checkpoints on them: "
        "the scale comes out a little small); 'calibration': the rows held out by --data.calibration_fraction; "
        "'none': the raw spread only",
    )
    parser.add_argument(
        "--data-file",
        default=None,
        help="where the members' data file is here, if their checkpoints name another place",
    )
    _add_floor_flag(parser)
    return parser


def ensemble_main(argv: Sequence[str]) -> int:
    """``python -m sagnn_lightning ensemble {fit,assemble} [options]``; returns the exit status."""
    argv = list(argv)
    if not argv or argv[0] not in ACTIONS:
        if argv and argv[0] in ("-h", "--help"):
            print("usage: python -m sagnn_lightning ensemble {fit,assemble} [options] (each has --help)")
            return 0
        raise UsageError(
            f"choose what to do: `ensemble fit` or `ensemble assemble` (got {' '.join(argv[:1]) or 'nothing'})"
        )
    action, argv = argv[0], argv[1:]
    if action == "assemble":
        args = _assemble_parser().parse_command(argv)
        manifest = assemble_ensemble(
            args.out,
            args.ckpt,
            calibrate_on=args.calibrate_on,
            data_file=args.data_file,
            calibration_floor=args.calibration_floor,
        )
        print(f"ensemble of {len(manifest['members'])} members in {args.out}: predict --ckpt {args.out} --input ...")
        return 0
    command: list[str] = []
    if "--" in argv:
        command, argv = argv[argv.index("--") + 1 :], argv[: argv.index("--")]
    args = _fit_parser().parse_command(argv)
    manifest = fit_ensemble(
        args.out,
        command,
        members=args.members,
        split=args.split,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
        jobs=args.jobs,
        threads=args.threads,
        calibration_floor=args.calibration_floor,
    )
    print(f"ensemble of {len(manifest['members'])} members in {args.out}: predict --ckpt {args.out} --input ...")
    return 0


#: the library's parameters as ``ensemble fit`` / ``ensemble assemble`` flags
FLAGS: dict[str, str] = {
    "members": "--members",
    "split": "--split",
    "calibration_fraction": "--calibration-fraction",
    "jobs": "--jobs",
    "seed": "--seed",
    "folder": "--out",
    "checkpoints": "--ckpt",
    "calibrate_on": "--calibrate-on",
    "data_file": "--data-file",
    "calibration_floor": "--calibration-floor",
}

__all__ = ["FLAGS", "ensemble_main"]
