"""A small matbench-layout data file for tests that must not touch the network (download, locking)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

INPUTS = Path(__file__).resolve().parents[1] / "fixtures" / "inputs"


def write_matbench_file(path: Path) -> bytes:
    """Write rows 0..7 of jdft2d to ``path`` in the layout of matbench's download (pandas orient="split",
    gzipped); returns the file's bytes."""
    records = json.loads((INPUTS / "jdft2d_8.json").read_text())
    doc = {
        "index": list(range(len(records))),
        "columns": ["structure", "exfoliation_en"],
        "data": [[r["structure"], r["exfoliation_en"]] for r in records],
    }
    with gzip.open(path, "wt") as fh:
        json.dump(doc, fh)
    return path.read_bytes()
