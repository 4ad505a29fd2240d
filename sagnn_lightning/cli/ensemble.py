"""``python -m sagnn_lightning ensemble fit [options] -- <training command>``: train an ensemble
(:func:`sagnn_lightning.lit.ensemble_fit.fit_ensemble`)."""

from __future__ import annotations

from collections.abc import Sequence

from sagnn_lightning.cli.arguments import CommandParser
from sagnn_lightning.lit.ensemble_fit import fit_ensemble


def ensemble_main(argv: Sequence[str]) -> int:
    """``python -m sagnn_lightning ensemble fit [options] -- <training command>``; returns the exit status."""
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        command, argv = argv[argv.index("--") + 1 :], argv[: argv.index("--")]
    parser = CommandParser(
        prog="python -m sagnn_lightning ensemble fit",
        description="Train K members of one training command (a recipe, or `python -m sagnn_lightning fit "
        "--config ...`) into an ensemble folder, resumably, and calibrate its spread on held-out rows. The "
        "training command follows `--`; `predict --ckpt <folder>` then writes id,prediction,std.",
    )
    parser.add_argument("action", choices=["fit"], help="fit: train (or finish) the ensemble")
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
    args = parser.parse_command(argv)
    manifest = fit_ensemble(
        args.out,
        command,
        members=args.members,
        split=args.split,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
        jobs=args.jobs,
        threads=args.threads,
    )
    print(f"ensemble of {len(manifest['members'])} members in {args.out}: predict --ckpt {args.out} --input ...")
    return 0


#: the library's parameters as ``ensemble fit``'s flags
FLAGS: dict[str, str] = {
    "members": "--members",
    "split": "--split",
    "calibration_fraction": "--calibration-fraction",
    "jobs": "--jobs",
    "folder": "--out",
}

__all__ = ["FLAGS", "ensemble_main"]
