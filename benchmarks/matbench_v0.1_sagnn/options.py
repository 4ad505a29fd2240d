"""The runner's command line (``run.py --help``): its options, and the recipe CLI options after ``--``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from folds import DEFAULT_CONFIG_DIR, VARIANTS


def parse_max_time(text: str | None) -> float | None:
    """``"DD:HH:MM:SS"`` (Lightning's ``max_time`` format; leading fields may be left out) → seconds."""
    from sagnn_lightning.lit.deadline import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(str(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-time must be DD:HH:MM:SS (e.g. 00:12:00:00), got {text!r}") from None


def _parse_overrides(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-overrides must be a JSON object, e.g. '{\"hidden_dim\": 16}'")
    return value


def parser(description: str = "") -> argparse.ArgumentParser:
    """The runner's options (``description``: the first paragraph of ``run.py``'s docstring)."""
    p = argparse.ArgumentParser(
        description=description,
        usage="%(prog)s [options] [-- <recipe CLI options: --config my.yaml --model.* --trainer.* ...>]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add(
        "--tasks",
        nargs="+",
        default=["matbench_jdft2d", "matbench_phonons"],
        help="matbench tasks, structure or composition (the matbench_ prefix may be left out)",
    )
    add("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], choices=range(5))
    add(
        "--variant",
        choices=sorted(VARIANTS),
        default="sagnn",
        help="sagnn: 8-head MHSA after the last block; no_mhsa: the w/o-MHSA ablation",
    )
    add(
        "--max-epochs",
        type=int,
        default=None,
        help="training budget per fold (epochs; default: the recipe's trainer.max_epochs, 300; phonons 400)",
    )
    add(
        "--max-time",
        type=parse_max_time,
        default=None,
        metavar="DD:HH:MM:SS",
        help="wall-clock budget of this run: training stops when it is spent (mid-epoch included) and no fold "
        "starts after it; unfinished folds are not recorded and continue from their last checkpoint when the "
        "command is run again",
    )
    add(
        "--jobs",
        type=int,
        default=1,
        help="folds trained at once, each in its own process with --threads threads (default 1 fold, in this process)",
    )
    add(
        "--data-home",
        type=Path,
        default=None,
        help="folder with <task>.json.gz in matbench layout (default $MATMINER_DATA if it holds the file, else "
        "download through matminer)",
    )
    add(
        "--out",
        type=Path,
        default=None,
        help="submission folder for results.json.gz + info.json (default: results/<variant>/ beside run.py)",
    )
    add(
        "--work-dir",
        type=Path,
        default=None,
        help="folder of the folds' run dirs <work dir>/<task>/fold_<k>/ (checkpoints, history; default <out>/work)",
    )
    add(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help="folder with sagnn.yaml / composition.yaml and <task>.yaml (the recipes' configuration)",
    )
    add(
        "--model-overrides",
        type=_parse_overrides,
        default=None,
        help="JSON object of SAGNN arguments overriding the config (e.g. tiny test models)",
    )
    add("--threads", type=int, default=None, help="torch threads per fold (default: torch's with --jobs 1, else 1)")
    add(
        "--cache-dir",
        type=Path,
        default=None,
        help="graph cache folder (default $SAGNN_CACHE_DIR, else the user cache dir, e.g. "
        "~/.cache/sagnn_lightning/graphs); graphs are built once per task and cutoff",
    )
    add(
        "--graph-workers",
        type=int,
        default=0,
        help="processes building graphs on a cache miss (default 0: this process)",
    )
    add(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="also copy the checkpoint that predicted each fold to <dir>/<task>/fold_<k>.ckpt "
        "(fold_<k>_inner_<j>.ckpt with --val-folds)",
    )
    add("--seed", type=int, default=0)
    add(
        "--val-folds",
        type=int,
        default=None,
        metavar="K",
        help="select on K inner folds instead of one validation carve: K members per fold, each validating on "
        "one inner fold; the fold records the mean of their test predictions",
    )
    add(
        "--calibration-floor",
        action="store_true",
        help="with --val-folds and --data.init_args.calibration_fraction: calibrate the members' spread as "
        "σ'² = s²σ² + f² (a floor for rows where they agree but err) instead of σ' = s·σ",
    )
    return p
