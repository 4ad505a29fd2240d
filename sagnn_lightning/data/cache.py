"""On-disk graph cache: build the graphs of a dataset once (parallel, with a progress bar), reuse them.

The cache file is ``<cache_dir>/<key>.graphs`` with ``key = sha256(fingerprint, settings, code version)``;
its format is described in :mod:`sagnn_lightning.data.cache_format`. Writes are atomic (temporary file
in the same folder + ``os.replace``, :func:`sagnn_lightning.files.atomic_write`: the umask is respected and a
rebuilt file keeps its mode); a truncated, corrupted or stale file is detected (magic, size, header sha256,
per-array crc32, sample ids/targets hash) and rebuilt with a warning. A miss is built by one process at a
time, under the lock file ``<cache_dir>/.<key>.graphs.lock``: processes that need the same graphs meanwhile
(DDP ranks, parallel runs sharing the folder) wait and then read the finished file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

import sagnn_lightning
from sagnn_lightning.data.cache_format import (
    CACHE_FORMAT_VERSION,
    CacheError,
    CacheWriter,
    SkippedItem,
)
from sagnn_lightning.data.composition import CompositionArrays, CompositionLike, CompositionSettings
from sagnn_lightning.data.dataset import GraphDataset
from sagnn_lightning.data.graph import StructureError
from sagnn_lightning.data.inputs import AnySettings, StructureLike, item_to_graph_arrays
from sagnn_lightning.errors import param, raw_message, render_params
from sagnn_lightning.files import file_lock

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheError",
    "GraphDataset",
    "SkippedItem",
    "cache_key",
    "default_cache_dir",
    "load_or_build_graphs",
]

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "SAGNN_CACHE_DIR"
SUFFIX = ".graphs"


def default_cache_dir() -> Path:
    """``$SAGNN_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("sagnn_lightning")/graphs``."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sagnn_lightning")) / "graphs"


def cache_key(fingerprint: str, settings: AnySettings) -> str:
    """sha256 hex of the data fingerprint, the graph settings and the code/format version."""
    payload = json.dumps(
        {
            "fingerprint": fingerprint,
            "settings": settings.as_dict(),
            "format": CACHE_FORMAT_VERSION,
            "package": sagnn_lightning.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _inputs_digest(sample_ids: Sequence[str], targets: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\0".join(sample_ids).encode("utf-8"))
    h.update(repr(targets.shape).encode())
    h.update(np.ascontiguousarray(targets, dtype=np.float64).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# building (runs in worker processes when num_workers > 0)
# ---------------------------------------------------------------------------------------------
def _build_chunk(items: Sequence[Any], names: Sequence[str], settings: AnySettings) -> dict[str, Any]:
    """Graphs of a chunk, concatenated: what one worker sends back (compact arrays, one pickle).

    Crystal graphs fill ``pos``/``lattice``/``images``; composition graphs fill ``fractions`` instead.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("z", "pos", "lattice", "edges", "images", "fractions")}
    n_atoms, n_edges, errors = [], [], []
    for k, (item, name) in enumerate(zip(items, names)):
        try:
            g = item_to_graph_arrays(item, settings, name)
        except StructureError as exc:
            errors.append((k, raw_message(exc)))
            continue
        parts["z"].append(g.atomic_numbers)
        parts["edges"].append(g.edge_index.T)
        if isinstance(g, CompositionArrays):
            parts["fractions"].append(g.fractions)
        else:
            parts["pos"].append(g.pos)
            parts["lattice"].append(g.lattice[None])
            parts["images"].append(g.image_offsets)
        n_atoms.append(g.atomic_numbers.shape[0])
        n_edges.append(g.edge_index.shape[1])
    empty = {"z": (0,), "pos": (0, 3), "lattice": (0, 3, 3), "edges": (0, 2), "images": (0, 3), "fractions": (0,)}
    out: dict[str, Any] = {k: (np.concatenate(v) if v else np.empty(empty[k])) for k, v in parts.items()}
    if out["z"].size and (out["z"].min() < 0 or out["z"].max() > 255):
        raise ValueError("atomic numbers must be in 0..255")
    out["z"] = out["z"].astype(np.uint8)
    out["edges"] = out["edges"].astype(np.int32)
    out["images"] = out["images"].astype(np.int64)
    out["fractions"] = out["fractions"].astype(np.float64)
    out["n_atoms"] = np.asarray(n_atoms, dtype=np.int64)
    out["n_edges"] = np.asarray(n_edges, dtype=np.int64)
    out["errors"] = errors
    return out


def _mp_context() -> mp.context.BaseContext:
    # fork shares the already-imported pymatgen/torch and the inputs (workers start in ms); spawn elsewhere
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


_WORKER_INPUTS: tuple | None = None  # set only inside forked build workers (see _init_worker)


def _init_worker(items, names, settings) -> None:
    global _WORKER_INPUTS
    _WORKER_INPUTS = (items, names, settings)


def _build_range(start: int, stop: int) -> dict[str, Any]:
    items, names, settings = _WORKER_INPUTS  # type: ignore[misc]
    return _build_chunk(items[start:stop], names[start:stop], settings)


def _iter_chunks(items, names, settings, num_workers: int, chunk_size: int):
    """Yield ``(start, result)`` per chunk, in order; at most ``2 * num_workers`` chunks in flight.

    With ``fork`` the workers inherit the inputs (only index ranges travel); otherwise each chunk's
    items are pickled to its worker.
    """
    starts = range(0, len(items), chunk_size)
    if num_workers <= 0:
        for s in starts:
            yield s, _build_chunk(items[s : s + chunk_size], names[s : s + chunk_size], settings)
        return
    ctx = _mp_context()
    forked = ctx.get_start_method() == "fork"
    kwargs: dict[str, Any] = {"initializer": _init_worker, "initargs": (items, names, settings)} if forked else {}

    def submit(pool, s):
        if forked:
            return pool.submit(_build_range, s, s + chunk_size)
        return pool.submit(_build_chunk, list(items[s : s + chunk_size]), list(names[s : s + chunk_size]), settings)

    pool = ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx, **kwargs)
    try:
        pending: deque = deque()
        it = iter(starts)
        for s in it:
            pending.append((s, submit(pool, s)))
            if len(pending) >= 2 * num_workers:
                break
        while pending:
            s, fut = pending.popleft()
            result = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, submit(pool, nxt)))
            yield s, result
    finally:  # also on an early stop (an error in the caller): drop the queued chunks
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def load_or_build_graphs(
    cache_dir: str | Path | None,
    fingerprint: str,
    sample_ids: Sequence[str],
    structures: Sequence[StructureLike | CompositionLike] | Callable[[], Sequence[StructureLike | CompositionLike]],
    targets: np.ndarray,
    settings: AnySettings,
    *,
    num_workers: int = 0,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
    chunk_size: int | None = None,
) -> GraphDataset:
    """Graphs of a dataset from the cache, building and caching them on a miss.

    Args:
        cache_dir: folder of cache files (``None``: :func:`default_cache_dir`).
        fingerprint: identifies the data content (e.g. sha256 of the data file + target columns).
        sample_ids: ``n`` unique-ish ids, used in error messages and stored with the graphs.
        structures: ``n`` pymatgen Structures, ``Structure.as_dict()`` dicts or CIF texts (or, with
            :class:`~sagnn_lightning.data.composition.CompositionSettings`, formulas), or a callable returning them
            (called only on a cache miss, so a hit parses nothing).
        targets: ``[n, T]`` (or ``[n]``) float targets.
        settings: graph settings (part of the key): ``GraphSettings`` (crystals) or ``CompositionSettings``.
        num_workers: worker processes for building (0 = in this process).
        on_error: ``"raise"`` stops at the first bad structure with an error naming it;
            ``"skip"`` leaves bad structures out, logs them and records them in ``dataset.skipped``.
        progress: show a tqdm progress bar while building.
        chunk_size: structures per worker task (default: about ``n / (8 * num_workers)``, ≤ 512).

    Returns:
        A :class:`GraphDataset` memory-mapping the cache file.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    sample_ids = [str(s) for s in sample_ids]
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.ndim != 2 or targets.shape[0] != len(sample_ids):
        raise ValueError(f"targets must be [n, T] with n = {len(sample_ids)} sample ids, got shape {targets.shape}")
    if not sample_ids:
        raise ValueError("no structures given: the dataset is empty")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(fingerprint, settings)
    path = cache_dir / f"{key}{SUFFIX}"
    digest = _inputs_digest(sample_ids, targets)

    # cache files are replaced atomically, so a hit needs no lock; a miss is built under the lock, by one
    # process: the others wait, then find the file (two DDP ranks, two runs sharing a cache folder)
    dataset, _ = _open_cached(path, key, digest)
    if dataset is not None:
        return dataset
    with file_lock(cache_dir / f".{path.name}.lock", f"building the graph cache {path}"):
        dataset, problem = _open_cached(path, key, digest)
        if dataset is not None:
            return dataset
        if problem:
            log.warning("rebuilding graph cache: %s", problem)
        return _build_graphs(
            path,
            key,
            digest,
            fingerprint,
            sample_ids,
            structures,
            targets,
            settings,
            num_workers=num_workers,
            on_error=on_error,
            progress=progress,
            chunk_size=chunk_size,
        )


def _open_cached(path: Path, key: str, digest: str) -> tuple[GraphDataset | None, str | None]:
    """``(dataset, None)`` on a valid hit, else ``(None, why it cannot be used)`` (``None``: no file)."""
    if not path.exists():
        return None, None
    try:
        dataset = GraphDataset(path)
        if dataset.header.get("inputs_sha256") != digest or dataset.header.get("key") != key:
            raise CacheError(f"{path}: sample ids or targets differ from the cached ones (stale cache)")
    except CacheError as exc:
        return None, str(exc)
    log.info("graph cache hit: %s (%d graphs)", path, len(dataset))
    return dataset, None


def _build_graphs(
    path: Path,
    key: str,
    digest: str,
    fingerprint: str,
    sample_ids: list[str],
    structures: Sequence[StructureLike | CompositionLike] | Callable[[], Sequence[StructureLike | CompositionLike]],
    targets: np.ndarray,
    settings: AnySettings,
    *,
    num_workers: int,
    on_error: str,
    progress: bool,
    chunk_size: int | None,
) -> GraphDataset:
    """Build the graphs and write the cache file ``path`` (called with the cache lock held)."""
    items = structures() if callable(structures) else structures
    if not isinstance(items, (list, tuple)):
        items = list(items)  # positional slicing for any sequence (pandas Series, numpy object arrays)
    if len(items) != len(sample_ids):
        raise ValueError(f"got {len(items)} structures for {len(sample_ids)} sample ids")
    n = len(items)
    if chunk_size is None:
        chunk_size = max(1, min(512, math.ceil(n / (8 * max(num_workers, 1)))))
    log.info("building %d graphs (%s) into %s", n, settings, path)

    from tqdm.auto import tqdm

    writer = CacheWriter(path)
    keep = np.ones(n, dtype=bool)
    skipped: list[SkippedItem] = []
    n_atoms, n_edges = [], []
    composition = isinstance(settings, CompositionSettings)
    noun = "formulas" if composition else "structures"
    chunks = _iter_chunks(items, sample_ids, settings, num_workers, chunk_size)
    try:
        with tqdm(
            total=n,
            desc="composition graphs" if composition else "crystal graphs",
            unit="formula" if composition else "struct",
            disable=not progress,
        ) as bar:
            for start, res in chunks:
                for k, reason in res["errors"]:
                    sid = sample_ids[start + k]
                    if not reason.startswith(f"{sid}:"):
                        reason = f"{sid}: {reason}"
                    if on_error == "raise":
                        # most reasons already end with their fix ("... or remove this entry.")
                        fix = (
                            "; or"
                            if reason.rstrip(".").endswith("remove this entry")
                            else ". Fix or remove this entry, or"
                        )
                        raise StructureError(
                            f"sample {reason.rstrip('.')}{fix} leave bad {noun} out with {param('data.on_error')}=skip."
                        )
                    keep[start + k] = False
                    skipped.append(SkippedItem(sid, render_params(reason)))
                writer.append("atomic_numbers", res["z"])
                writer.append("pos", res["pos"])
                writer.append("lattice", res["lattice"])
                writer.append("edge_index", res["edges"])
                writer.append_images(res["images"])
                writer.append("fractions", res["fractions"])
                n_atoms.append(res["n_atoms"])
                n_edges.append(res["n_edges"])
                bar.update(min(chunk_size, n - start))
        if skipped:
            log.warning("skipped %d of %d structures: %s", len(skipped), n, "; ".join(s.reason for s in skipped))
        if not keep.any():
            raise StructureError(f"all {n} {noun} were skipped; first: {skipped[0].reason}")
        kept_ids = [s for s, k in zip(sample_ids, keep) if k]
        encoded = [s.encode("utf-8") for s in kept_ids]
        width = max(1, max(len(e) for e in encoded))
        header = {
            "format": CACHE_FORMAT_VERSION,
            "package": sagnn_lightning.__version__,
            "key": key,
            "fingerprint": fingerprint,
            "settings": settings.as_dict(),
            "inputs_sha256": digest,
            "num_graphs": int(keep.sum()),
            "num_targets": int(targets.shape[1]),
            "skipped": [[s.sample_id, s.reason] for s in skipped],
        }
        writer.finish(
            header,
            {
                "atom_ptr": np.concatenate([[0], np.cumsum(np.concatenate(n_atoms))]).astype(np.int64),
                "edge_ptr": np.concatenate([[0], np.cumsum(np.concatenate(n_edges))]).astype(np.int64),
                "targets": targets[keep],
                "sample_ids": np.array(encoded, dtype=f"S{width}"),
            },
        )
    finally:
        chunks.close()
        writer.close()
    return GraphDataset(path, verify=False)
