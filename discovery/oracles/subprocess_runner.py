"""Run one calculation in its own subprocess and work folder, exactly once.

The parent side (`run_in_subprocess`) writes ``input.json``, starts ``python -m <module> WORKDIR``
in a new session with one thread per math library, enforces a hard wall-time limit by killing
the child's whole process group, and returns the parsed ``result.json``.

The child side (`worker_main`, called by every worker module) holds an exclusive
file lock (``filelock``, an ``flock`` underneath) on ``WORKDIR/lock`` for its whole life, caps its own address space
(``RLIMIT_AS``) before any heavy import, computes, writes ``result.json`` atomically
(temporary file + ``os.replace``) and appends one line to ``WORKDIR/runs.jsonl``.

Why this gives exact resume without repeated work:

* a finished folder (``result.json`` present) is returned as is, nothing runs;
* the lock belongs to the child and the child runs in its own session, so a SIGKILLed driver
  leaves an orphan that keeps the lock and finishes; a later caller finds the lock held, waits
  for it (bounded by its timeout) and reads the orphan's result;
* the child re-checks ``result.json`` after taking the lock, so two callers that race past
  the parent-side check still compute only once (the second child exits without computing).

Runs killed by the parent (timeout) or dying without a result leave no ``result.json``, so a
later call tries again; they are logged in ``runs.jsonl`` with ``event: "killed"`` or
``"crashed"`` and do not count as completed. A worker's own failures (SCF not converged,
post-check failed, ...) are results like any other and are kept.

The memory cap is applied by the child itself (`_apply_memory_limit`, first thing in
`worker_main`) rather than in a ``preexec_fn``: ``preexec_fn`` is documented as unsafe in a
parent with threads (Ray actors, thread pools), and the cap is in force before any large
allocation either way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from discovery.fileio import write_text_atomic

log = logging.getLogger(__name__)

INPUT = "input.json"
RESULT = "result.json"
LOCK = "lock"
RUNS = "runs.jsonl"
WORKER_LOG = "worker.log"
MEMORY_ENV = "DISCOVERY_WORKER_MEMORY_BYTES"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "Memory map failed",
                   "out of memory", "failed to map segment", "Memory allocation")
_NEAR_LIMIT = 0.9  # a timed-out worker whose peak address space reached this share hit the cap
_LOCK_POLL_S = 0.1


# ----------------------------------------------------------------------------- shared helpers


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so that readers see either the old file or the complete new one."""
    write_text_atomic(path, json.dumps(data, indent=1))


def read_result(workdir: Path) -> dict[str, Any] | None:
    """The stored ``result.json`` of a work folder, or None if there is none (or it is unreadable)."""
    path = Path(workdir) / RESULT
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError) as exc:  # os.replace makes this unlikely
        log.warning("unreadable %s (%s); treating the folder as unfinished", path, exc)
        return None


def _finished(workdir: Path) -> dict[str, Any] | None:
    """The folder's result, unless there is none or it is a *retryable* failure: that one is moved
    aside (``failed-<n>.json``) so a retry computes again instead of reading it back."""
    done = read_result(workdir)
    if done is None or done.get("status") == "ok" or not done.get("retryable"):
        return done
    n = len(list(Path(workdir).glob("failed-*.json"))) + 1
    os.replace(Path(workdir) / RESULT, Path(workdir) / f"failed-{n}.json")
    log.info("%s: earlier attempt failed (%s); computing again", workdir, done.get("error_class"))
    return None


def _append_run(workdir: Path, entry: dict[str, Any]) -> None:
    with open(Path(workdir) / RUNS, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def count_completed_runs(workdir: Path) -> int:
    """How many calculations ran to completion in ``workdir`` (lines of ``runs.jsonl``).

    A campaign that never repeats a calculation has at most 1 for every folder.
    """
    path = Path(workdir) / RUNS
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            n += json.loads(line).get("event") == "completed"
        except json.JSONDecodeError:  # a line cut short by a crash of its writer
            continue
    return n


def failed_result(error_class: str, message: str, tb: str = "", **extra: Any) -> dict[str, Any]:
    """A result dict for a calculation that did not produce numbers."""
    return {"status": "failed", "error_class": error_class, "message": message, "traceback": tb,
            **extra}


# ----------------------------------------------------------------------------- parent side


#: The work-folder lock a worker process holds for its whole life (see `worker_main`).
_WORKER_LOCK = None


def _wait_for_lock(workdir: Path, deadline: float) -> bool:
    """Wait until nobody holds ``workdir/lock``. Returns False if ``deadline`` passed first."""
    from filelock import FileLock, Timeout

    lock = FileLock(Path(workdir) / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process is running this calculation; waiting", workdir)
        try:
            lock.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=_LOCK_POLL_S)
        except Timeout:
            return False
    lock.release()
    return True


def _log_tail(workdir: Path, offset: int, n_chars: int = 4000) -> str:
    """The end of what the worker wrote to ``worker.log`` after byte ``offset`` (this run only)."""
    try:
        with open(Path(workdir) / WORKER_LOG, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")[-n_chars:]
    except FileNotFoundError:
        return ""


def _classify_exit(returncode: int, log_tail: str, memory_gb: float) -> tuple[str, str]:
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        if -returncode == signal.SIGKILL:
            return "MemoryLimit", f"worker killed by {sig} (most likely the kernel's out-of-memory killer)"
        if any(m in log_tail for m in _MEMORY_MARKERS):
            return "MemoryLimit", f"worker died by {sig} after running out of memory (limit {memory_gb} GB)"
        return "WorkerCrashed", f"worker died by signal {sig}"
    if any(m in log_tail for m in _MEMORY_MARKERS):
        return "MemoryLimit", f"worker ran out of memory (limit {memory_gb} GB), exit code {returncode}"
    last = log_tail.strip().splitlines()[-1] if log_tail.strip() else "no output"
    return "WorkerCrashed", f"worker exited with code {returncode} and no result: {last}"


def run_in_subprocess(workdir: Path, module: str, payload: dict[str, Any], timeout_s: float,
                      memory_gb: float, threads: int = 1) -> dict[str, Any]:
    """`_run` plus ``runs``: how many calculations have run to completion in this folder so far
    (1 for a calculation done exactly once; the ledger counts repeats from it, wherever the folder
    lives)."""
    result = _run(workdir, module, payload, timeout_s, memory_gb, threads)
    return {**result, "runs": count_completed_runs(workdir)}


def _run(workdir: Path, module: str, payload: dict[str, Any], timeout_s: float,
         memory_gb: float, threads: int = 1) -> dict[str, Any]:
    """Run ``python -m module workdir`` once for this folder and return its result.

    Never raises for a failed calculation: timeouts, memory exhaustion and crashes come back as
    ``{"status": "failed", "error_class": "Timeout" | "MemoryLimit" | "WorkerCrashed", ...}``.
    The returned dict has an extra key ``reused`` (not stored): True when the numbers come from
    an earlier or concurrent run rather than a child started by this call.

    Args:
        workdir: the calculation's own folder (created if missing).
        module: importable module whose ``__main__`` calls `worker_main`.
        payload: JSON-serialisable input, written to ``workdir/input.json``.
        timeout_s: hard wall-time limit for this call, waiting for a lock included.
        memory_gb: address-space limit of the worker.
        threads: value for OMP/OPENBLAS/MKL_NUM_THREADS in the worker.

    Units:
        timeout_s in s, memory_gb in GiB.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s

    done = _finished(workdir)
    if done is not None:
        log.debug("%s: reusing finished result", workdir)
        return {**done, "reused": True}

    if not _wait_for_lock(workdir, deadline):
        return {**failed_result("Timeout", f"waited {timeout_s:.0f} s for the running calculation "
                                f"in {workdir} (lock held by another process)"), "reused": False}
    done = _finished(workdir)
    if done is not None:
        return {**done, "reused": True}

    write_json_atomic(workdir / INPUT, payload)
    env = dict(os.environ)
    env.update({var: str(threads) for var in _THREAD_VARS})
    env[MEMORY_ENV] = str(int(memory_gb * 1024**3))
    started = time.time()
    with open(workdir / WORKER_LOG, "ab") as out:
        log_offset = out.tell()
        proc = subprocess.Popen([sys.executable, "-m", module, str(workdir)], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    log.info("%s: started %s (pid %d, timeout %.0f s, %.1f GB)", workdir, module, proc.pid,
             timeout_s, memory_gb)
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        peak = _peak_address_space(proc.pid)
        _kill_group(proc)
        done = read_result(workdir)  # finished in the last instant before the kill
        if done is not None:
            return {**done, "reused": done.get("pid") != proc.pid}
        error_class, message = "Timeout", f"no result after {timeout_s:.0f} s"
        if peak is not None and peak >= _NEAR_LIMIT * memory_gb * 1024**3:
            # BLAS libraries may spin instead of failing when an allocation is refused
            error_class = "MemoryLimit"
            message += f"; its address space had reached {peak / 1024**3:.2f} of {memory_gb} GB"
        _append_run(workdir, {"event": "killed", "reason": error_class, "pid": proc.pid,
                              "host": socket.gethostname(), "started_at": started,
                              "ended_at": time.time()})
        log.warning("%s: killed: %s", workdir, message)
        return {**failed_result(error_class, f"{message}; process group {proc.pid} killed",
                                pid=proc.pid, wall_s=time.time() - started), "reused": False}

    done = read_result(workdir)
    if done is not None:
        return {**done, "reused": done.get("pid") != proc.pid}
    tail = _log_tail(workdir, log_offset)
    error_class, message = _classify_exit(returncode, tail, memory_gb)
    _append_run(workdir, {"event": "crashed", "reason": error_class, "returncode": returncode,
                          "pid": proc.pid, "host": socket.gethostname(), "started_at": started,
                          "ended_at": time.time()})
    log.warning("%s: %s: %s", workdir, error_class, message)
    return {**failed_result(error_class, message, tail, pid=proc.pid, wall_s=time.time() - started),
            "reused": False}


def _peak_address_space(pid: int) -> int | None:
    """Peak virtual memory (VmPeak) of a live process in bytes, if /proc tells."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ----------------------------------------------------------------------------- child side


def _apply_memory_limit() -> None:
    import resource

    limit = os.environ.get(MEMORY_ENV)
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))


def worker_main(compute: Callable[[dict[str, Any], Path], dict[str, Any]],
                classify: Callable[[BaseException], str] | None = None,
                argv: list[str] | None = None) -> int:
    """Entry point of a worker module: ``python -m <module> WORKDIR``.

    Takes the folder's lock (blocking) for the whole run, returns at once if a result already
    exists, else calls ``compute(payload, workdir)`` and stores its dict (plus status, timings,
    host and pid) as ``result.json``. An exception from ``compute`` becomes a failed result:
    `discovery.errors.EvaluationFailed` keeps its ``error_class`` (and its ``details`` dict, if
    any), ``MemoryError`` is ``"MemoryLimit"``, others get ``classify(exc)`` or ``"WorkerError"``.

    Returns:
        The process exit code (0 whenever a result was written or found).
    """
    _apply_memory_limit()
    from discovery.errors import EvaluationFailed

    args = sys.argv[1:] if argv is None else argv
    workdir = Path(args[0]).resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from filelock import FileLock

    global _WORKER_LOCK
    _WORKER_LOCK = FileLock(workdir / LOCK)  # kept referenced: released only when this process exits
    _WORKER_LOCK.acquire()
    if (workdir / RESULT).exists():
        log.info("%s already has a result; nothing to do", workdir)
        return 0

    started, wall0, cpu0 = time.time(), time.perf_counter(), time.process_time()
    payload = json.loads((workdir / INPUT).read_text())
    try:
        result = {"status": "ok", **compute(payload, workdir)}
    except EvaluationFailed as exc:
        result = failed_result(exc.error_class, exc.message, traceback.format_exc(),
                               retryable=exc.retryable, **getattr(exc, "details", {}))
    except Exception as exc:  # failures are data: every error is recorded, not raised
        tb = traceback.format_exc()
        if isinstance(exc, MemoryError) or any(m in tb for m in _MEMORY_MARKERS):
            limit = int(os.environ.get(MEMORY_ENV, "0")) / 1024**3
            result = failed_result("MemoryLimit", f"out of memory (limit {limit:.2f} GB): "
                                   f"{type(exc).__name__}: {str(exc)[-300:]}", tb)
        else:
            error_class = classify(exc) if classify else "WorkerError"
            result = failed_result(error_class, f"{type(exc).__name__}: {exc}", tb)
    ended = time.time()
    result.update(wall_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0,
                  started_at=started, ended_at=ended, host=socket.gethostname(), pid=os.getpid())
    write_json_atomic(workdir / RESULT, result)
    _append_run(workdir, {"event": "completed", "status": result["status"],
                          "error_class": result.get("error_class"), "pid": os.getpid(),
                          "host": result["host"], "started_at": started, "ended_at": ended})
    return 0
