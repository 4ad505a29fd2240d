"""Files shared between runs and processes: atomic replacement with the right permissions, and locks.

:func:`atomic_write` is how the package writes every file a reader may see while it is written (graph
cache, row index, matbench download, predictions CSV, parity plot, leaderboard results): data goes to a temp file
in the target's folder, which is flushed, fsync'ed and renamed over the target (``os.replace``), so a
reader sees the old file or the new one, never half of one, and a failed write leaves the target as it was.

Permissions are those a plain ``open(path, "w")`` gives: a new file gets ``0o666`` minus the umask (the
temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the umask and any default
ACL); a file that already exists keeps its permission bits (``tempfile.mkstemp`` would make every file
``0o600``). The replaced file is a new inode owned by the writer.

:func:`file_lock` serialises work that must happen once across processes (a download, a cache build):
the first process does it, the others wait and then find the result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sagnn_lightning.errors import SAGNNError, UsageError, param

__all__ = ["atomic_write", "check_writable", "file_lock", "safe_name"]

log = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path`` with umask-respecting permissions."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the file to (re)place. Its folder must exist.
        mode: ``"w"`` (text) or ``"wb"`` (binary), optionally with ``"+"``.
        encoding: as for :func:`open` (text mode; default UTF-8).
        newline: as for :func:`open` (text mode).
        fsync: flush the data to disk before the rename (a crash then leaves the old or the new file).

    Yields:
        The open file. ``file.name`` is the temporary path, for writers that need a file name
        (write to it by name while the ``with`` block is open).

    Permissions: a new file gets ``0o666 & ~umask`` (as with :func:`open`); an existing file keeps its mode.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    if not mode.startswith("w") or set(mode) - set("wb+t"):
        raise ValueError(f"atomic_write mode must be 'w', 'wb', 'w+' or 'w+b', got {mode!r}")
    path = Path(path)
    try:
        keep_mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep_mode = None
    fd, tmp = _create_temp(path)
    os.close(fd)
    try:
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)  # before any data is written: never more open than the file it replaces
        # reopened by name, so that ``fh.name`` is the temporary path (writers that need a name use it)
        fh = open(
            str(tmp),
            mode,
            encoding=None if "b" in mode else (encoding or "utf-8"),
            newline=None if "b" in mode else newline,
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_lock(path: str | os.PathLike, what: str = "") -> contextlib.AbstractContextManager:
    """An inter-process lock on ``path`` (created if missing; its folder must exist).

    Blocks until the lock is free; when another process holds it, logs once that this process waits
    (``what`` says for what, e.g. ``"building the graph cache /x/abc.graphs"``). Not re-entrant: never
    nest two locks on the same path (the inner one would wait for ever). The (empty) lock file may stay
    behind; that is harmless.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process to finish %s (lock %s)", what or "its work", path)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    return held()


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy ``source`` to ``target`` atomically (:func:`atomic_write`), creating the parent folder; returns the
    target."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, atomic_write(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def write_csv_rows(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys; the first row's keys are the header) as a CSV file,
    atomically, creating the parent folder; returns the path."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def check_writable(path: str | os.PathLike, name: str, kind: str = "file", what: str | None = None) -> Path:
    """Fail early, before any work, when ``path`` (a ``"file"`` or ``"dir"``) cannot be written.

    ``name`` is the parameter that sets it (named in the message, see :func:`sagnn_lightning.errors.param`),
    ``what`` an optional description. Creates nothing: a probe file is made and removed in the nearest existing
    folder.

    Raises:
        UsageError: ``path`` is a folder where a file is wanted, or the reverse (exit status 2).
        SAGNNError: the folder is not writable, or a parent is a file (exit status 1).
    """
    path = Path(path).expanduser()
    label = f"{what} {path} ({param(name)})" if what else f"{param(name)} {path}"
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


def safe_name(text: str, fallback: str, strip: str = "_", max_length: int | None = None) -> str:
    """``text`` with letters, digits, ``.``, ``_`` and ``-`` kept and every other run of characters made one ``_``,
    ``strip`` characters removed at both ends, cut to ``max_length``; ``fallback`` when nothing is left. Safe as a
    file-name stem and as a metric key."""
    name = re.sub(r"[^0-9A-Za-z._-]+", "_", str(text)).strip(strip)[:max_length]
    return name or fallback
