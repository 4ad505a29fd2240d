"""The runner's process pool: ``jobs`` folds at once, each in its own process, their output relayed line by line.

A job is a JSON-ready dict (a fold spec). :func:`run_jobs` runs each one either in this process or, with
``jobs > 1``, as ``<worker command> <spec file>``: a process that calls :func:`serve` (read the spec, run it, write
the result JSON, exit 0). The pool has no knowledge of folds: the caller gives the function that runs a job, the
worker command, each job's output tag and the check that skips a job before it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

Job = dict[str, Any]
Result = dict[str, Any]

SPEC_FILE = "worker_spec.json"
RESULT_FILE = "worker_result.json"


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_jobs(
    jobs: Sequence[Job],
    processes: int,
    *,
    run_here: Callable[[Job], Result],
    worker_command: Sequence[str],
    tag: Callable[[Job], str],
    skip: Callable[[Job], Result | None] = lambda job: None,
) -> Iterator[tuple[Job, Result | None, str]]:
    """Run ``jobs``, ``processes`` at a time; yields ``(job, result, error)`` as they end.

    ``processes == 1``: ``run_here(job)`` in this process, one after the other (an exception propagates).
    ``processes > 1``: each job in a subprocess ``[*worker_command, <spec file>]`` (the spec file and the result
    file are ``worker_spec.json`` / ``worker_result.json`` in ``job["run_dir"]``; ``job["threads"]`` threads,
    default 1), whose output is printed line by line after ``tag(job)``; a job whose process fails gives
    ``result=None`` and the reason, and the others go on. Before a job starts, ``skip(job)`` may return a result
    that is yielded instead of running it.
    """
    if processes <= 1:
        for job in jobs:
            skipped = skip(job)
            yield job, skipped if skipped is not None else run_here(job), ""
        return
    pending = list(jobs)
    running: dict[int, tuple[Job, subprocess.Popen, Path]] = {}
    finished: queue.Queue = queue.Queue()
    print_lock = threading.Lock()

    def relay(key: int, proc: subprocess.Popen, prefix: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with print_lock:
                print(prefix + line.rstrip("\n"), flush=True)
        finished.put((key, proc.wait()))

    try:
        key = 0
        while pending or running:
            while pending and len(running) < processes:
                job = pending.pop(0)
                skipped = skip(job)
                if skipped is not None:
                    yield job, skipped, ""
                    continue
                run_dir = Path(job["run_dir"])
                run_dir.mkdir(parents=True, exist_ok=True)
                spec_path, result_path = run_dir / SPEC_FILE, run_dir / RESULT_FILE
                result_path.unlink(missing_ok=True)
                spec_path.write_text(json.dumps({**job, "result_path": str(result_path), "parent_pid": os.getpid()}))
                proc = subprocess.Popen(
                    [*worker_command, str(spec_path)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    env=_worker_env(int(job.get("threads") or 1)),
                )
                running[key] = (job, proc, result_path)
                threading.Thread(target=relay, args=(key, proc, tag(job)), daemon=True).start()
                key += 1
            if not running:
                continue
            done, rc = finished.get()
            job, proc, result_path = running.pop(done)
            if rc == 0 and result_path.is_file():
                yield job, json.loads(result_path.read_text()), ""
            else:
                how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
                yield job, None, how
    finally:
        for _job, proc, _ in running.values():  # this process is stopping: stop the jobs it started
            if proc.poll() is None:
                proc.terminate()
        for _job, proc, _ in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _die_with_parent(parent_pid: int) -> None:
    """A worker ends when the process that started it ends (Linux: ``PR_SET_PDEATHSIG``)."""
    import signal

    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent_pid:
        os._exit(1)


def serve(spec_path: Path, run: Callable[[Job], Result]) -> int:
    """A worker's life: read the job from ``spec_path`` (written by :func:`run_jobs`), ``run`` it, write the result
    JSON atomically where the job says, return exit status 0."""
    from sagnn_lightning.files import atomic_write

    job = json.loads(Path(spec_path).read_text())
    _die_with_parent(int(job["parent_pid"]))
    result = run(job)
    with atomic_write(Path(job["result_path"]), "w") as fh:
        fh.write(json.dumps(result))
    return 0
