"""Graph cache file format: constants, checks and the streaming, atomic writer.

On-disk format (one file, little endian, written by :mod:`sagnn_lightning.data.cache`)::

    [8 B magic b"SAGNNGC1"][56 B zero padding]
    [array 0][array 1]...          each array C-contiguous, 64-byte aligned
    [header: UTF-8 JSON]           dtypes, shapes, offsets and crc32 of every array, settings,
                                   fingerprint, skipped items, total file size
    [footer 48 B: uint64 header length][sha256 of header, 32 B][b"SAGNNEND"]

Arrays: ``atomic_numbers [N_tot] uint8``, ``pos [N_tot, 3] float64``, ``lattice [n, 3, 3] float64``,
``edge_index [E_tot, 2] int32`` (local to each graph), ``image_offsets [E_tot, 3]`` int8/16/32
(smallest that fits), ``atom_ptr [n + 1] int64``, ``edge_ptr [n + 1] int64``, ``targets [n, T] float64``,
``sample_ids [n] S<w>`` (UTF-8), ``fractions [N_tot] float64``. Graph ``g`` owns atoms
``atom_ptr[g]:atom_ptr[g+1]`` and edges ``edge_ptr[g]:edge_ptr[g+1]``.

Two kinds of graph share the format (the header's ``settings.kind``): crystal graphs fill ``pos``, ``lattice``
and ``image_offsets`` and leave ``fractions`` empty; composition graphs (element nodes, no geometry) fill
``fractions`` (each element's share of its formula) and leave the three geometry arrays empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sagnn_lightning.errors import SAGNNError
from sagnn_lightning.files import atomic_write

#: On-disk format and graph-code version; bump when either changes (part of the cache key).
CACHE_FORMAT_VERSION = "3"  # 3: k-nearest ties broken by neighbour and image (graph.DISTANCE_TIE)

MAGIC = b"SAGNNGC1"
END_MAGIC = b"SAGNNEND"
DATA_START = 64
ALIGN = 64
FOOTER = struct.Struct("<Q32s8s")  # header length, sha256(header), end magic
ARRAY_NAMES = (
    "atomic_numbers",
    "pos",
    "lattice",
    "edge_index",
    "image_offsets",
    "atom_ptr",
    "edge_ptr",
    "targets",
    "sample_ids",
    "fractions",
)


class CacheError(SAGNNError, RuntimeError):
    """A graph cache file that is truncated, corrupted or from another format version (exit status 1)."""


@dataclass(frozen=True)
class SkippedItem:
    """A structure left out of a dataset (``on_error="skip"``): its id and why."""

    sample_id: str
    reason: str


def read_header(path: Path) -> dict[str, Any]:
    """Read and check magic, footer, header hash, format version and file size; return the header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < DATA_START + FOOTER.size or f.read(len(MAGIC)) != MAGIC:
                raise CacheError(f"{path}: not a graph cache (bad magic or too small)")
            f.seek(size - FOOTER.size)
            header_len, digest, end = FOOTER.unpack(f.read(FOOTER.size))
            if end != END_MAGIC or header_len > size - DATA_START - FOOTER.size:
                raise CacheError(f"{path}: incomplete graph cache (bad footer)")
            f.seek(size - FOOTER.size - header_len)
            raw = f.read(header_len)
    except OSError as exc:
        raise CacheError(f"{path}: cannot read graph cache ({exc})") from exc
    if hashlib.sha256(raw).digest() != digest:
        raise CacheError(f"{path}: graph cache header checksum mismatch")
    header = json.loads(raw.decode("utf-8"))
    if header.get("format") != CACHE_FORMAT_VERSION:
        raise CacheError(f"{path}: cache format {header.get('format')!r}, expected {CACHE_FORMAT_VERSION!r}")
    if header.get("file_size") != size:
        raise CacheError(f"{path}: size {size} B, header says {header.get('file_size')} B")
    if set(header.get("arrays", {})) != set(ARRAY_NAMES):
        raise CacheError(f"{path}: graph cache is missing arrays")
    header["_sha256"] = digest.hex()  # identifies this exact file (not stored in it)
    return header


def verify_arrays(path: Path, header: dict[str, Any], chunk_bytes: int = 1 << 23) -> None:
    """Recompute the crc32 of every array (streamed in ``chunk_bytes`` pieces, flat memory)."""
    buf = bytearray(chunk_bytes)
    with open(path, "rb") as f:
        for name, meta in header["arrays"].items():
            f.seek(meta["offset"])
            remaining, crc = meta["nbytes"], 0
            while remaining:
                view = memoryview(buf)[: min(remaining, chunk_bytes)]
                got = f.readinto(view)
                if not got:
                    raise CacheError(f"{path}: array {name!r} is truncated")
                crc = zlib.crc32(view[:got], crc)
                remaining -= got
            if crc != meta["crc32"]:
                raise CacheError(f"{path}: array {name!r} is corrupted (crc32 mismatch)")


class CacheWriter:
    """Streams graph arrays into spill files, then assembles the cache file atomically.

    Spill files are private scratch (``mkstemp``, mode 0600, deleted by :meth:`close`); the cache file is
    written with :func:`sagnn_lightning.files.atomic_write` (umask respected, a replaced file keeps its mode).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir = path.parent
        self.tmp_paths: list[Path] = []
        self.spill = {
            name: self._tmp(name)
            for name in ("atomic_numbers", "pos", "lattice", "edge_index", "image_offsets", "fractions")
        }
        self.crc = dict.fromkeys(self.spill, 0)
        self.count = dict.fromkeys(self.spill, 0)
        self.img_min, self.img_max = 0, 0

    def _tmp(self, tag: str):
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=f".{self.path.name}.", suffix=f".{tag}.tmp")
        self.tmp_paths.append(Path(name))
        f = os.fdopen(fd, "w+b")
        f.path = Path(name)  # type: ignore[attr-defined]
        return f

    def append(self, name: str, array: np.ndarray) -> None:
        self.spill[name].write(np.ascontiguousarray(array).tobytes())
        self.count[name] += array.shape[0]

    def append_images(self, images: np.ndarray) -> None:
        if images.size:
            self.img_min = min(self.img_min, int(images.min()))
            self.img_max = max(self.img_max, int(images.max()))
        if self.img_min < -(2**31) or self.img_max >= 2**31:
            raise ValueError("periodic image offsets do not fit int32; is the cutoff far larger than the cell?")
        self.append("image_offsets", images.astype(np.int32))

    def finish(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for d in (np.int8, np.int16, np.int32):
            info = np.iinfo(d)
            if info.min <= self.img_min and self.img_max <= info.max:
                img_dtype = np.dtype(d)
                break
        spilled = {
            "atomic_numbers": (np.dtype(np.uint8), (self.count["atomic_numbers"],)),
            "pos": (np.dtype(np.float64), (self.count["pos"], 3)),
            "lattice": (np.dtype(np.float64), (self.count["lattice"], 3, 3)),
            "edge_index": (np.dtype(np.int32), (self.count["edge_index"], 2)),
            "image_offsets": (img_dtype, (self.count["image_offsets"], 3)),
            "fractions": (np.dtype(np.float64), (self.count["fractions"],)),
        }
        with atomic_write(self.path, "wb") as out:  # temp file + os.replace; umask / existing mode respected
            self._write_file(out, header, arrays, spilled)

    def _write_file(self, out, header: dict[str, Any], arrays: dict[str, np.ndarray], spilled: dict) -> None:
        meta: dict[str, dict[str, Any]] = {}
        out.write(MAGIC + b"\0" * (DATA_START - len(MAGIC)))
        for name, (dtype, shape) in spilled.items():
            src = self.spill[name]
            src.flush()
            src.seek(0)
            src_dtype = np.dtype(np.int32) if name == "image_offsets" else dtype
            meta[name] = self._copy(out, name, dtype, shape, src, src_dtype)
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            meta[name] = self._start(out, arr.dtype, arr.shape)
            data = arr.tobytes()
            out.write(data)
            meta[name]["crc32"] = zlib.crc32(data)
        header = dict(header, arrays=meta)
        header["file_size"] = 0
        # file size depends on the header length, which depends on the size digits: iterate once
        for _ in range(3):
            raw = json.dumps(header, sort_keys=True).encode("utf-8")
            size = out.tell() + len(raw) + FOOTER.size
            if header["file_size"] == size:
                break
            header["file_size"] = size
        raw = json.dumps(header, sort_keys=True).encode("utf-8")
        out.write(raw)
        out.write(FOOTER.pack(len(raw), hashlib.sha256(raw).digest(), END_MAGIC))
        if (out_size := out.tell()) != header["file_size"]:
            raise RuntimeError(f"internal error: cache size {out_size} != {header['file_size']}")

    @staticmethod
    def _start(out, dtype: np.dtype, shape) -> dict[str, Any]:
        pad = (-out.tell()) % ALIGN
        out.write(b"\0" * pad)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return {"dtype": dtype.str, "shape": list(shape), "offset": out.tell(), "nbytes": nbytes}

    def _copy(self, out, name, dtype, shape, src, src_dtype, rows_per_chunk: int = 1 << 18) -> dict[str, Any]:
        meta = self._start(out, dtype, shape)
        row = int(np.prod(shape[1:], dtype=np.int64))
        crc, left = 0, shape[0]
        while left:
            rows = min(left, rows_per_chunk)
            chunk = np.frombuffer(src.read(rows * row * src_dtype.itemsize), dtype=src_dtype)
            data = chunk.astype(dtype, copy=False).tobytes()
            out.write(data)
            crc = zlib.crc32(data, crc)
            left -= rows
        meta["crc32"] = crc
        return meta

    def close(self) -> None:
        """Close and delete every temporary file (called on success and on failure)."""
        for f in self.spill.values():
            f.close()
        for p in self.tmp_paths:
            p.unlink(missing_ok=True)
        self.tmp_paths.clear()
