"""Content fingerprints of data files: what the graph cache's key is made of (sha256 of the bytes read)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sagnn_lightning.data.table import CIF_SUFFIXES, ID_PROP_FILE


def fingerprint(path: str | Path, **extra: Any) -> str:
    """sha256 over the bytes of a data file (streamed) plus ``extra`` (e.g. column names).

    For a CIF folder: ``id_prop.csv`` and every ``*.cif`` (name + bytes, sorted by name).
    """
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            if f.name != ID_PROP_FILE and f.suffix.lower() not in CIF_SUFFIXES:
                continue
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()
