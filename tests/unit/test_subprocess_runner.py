"""The subprocess runner, exercised with the EMT worker (EMT stands in for DFT in these tests).

Each EMT calculation of fcc Cu takes well under a second including the interpreter start.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from ase.build import bulk
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from discovery.oracles.emt_oracle import EMTConfig
from discovery.oracles.emt_oracle import EMTOracle
from discovery.oracles.subprocess_runner import RESULT, RUNS, count_completed_runs, run_in_subprocess
from discovery.records import Candidate, Fidelity

EMT_WORKER = "discovery.oracles.emt_worker"
REPO = Path(__file__).resolve().parents[2]


def cu_structure(a: float = 3.7) -> Structure:
    return AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=a))


def emt_payload(delay_s: float = 0.0, structure: Structure | None = None) -> dict:
    settings = EMTConfig(delay_s=delay_s).model_dump(mode="json")
    return {"structure": (structure or cu_structure()).as_dict(), "settings": settings}


def lock_is_held(workdir: Path) -> bool:
    path = workdir / "lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_emt_result_is_reused_without_running_again(tmp_path):
    first = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(), timeout_s=60, memory_gb=2.0)
    assert first["status"] == "ok", first
    assert first["reused"] is False
    # EMT fcc Cu relaxes from a = 3.70 A to about 3.59 A (11.6 A^3/atom) and lowers its energy.
    volume = Structure.from_dict(first["structure"]).volume
    assert volume == pytest.approx(3.59**3 / 4, rel=0.03)
    assert first["energy_per_atom"] < first["initial_energy_per_atom"]
    assert first["n_steps"] >= 1

    t0 = time.perf_counter()
    second = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(), timeout_s=60, memory_gb=2.0)
    assert time.perf_counter() - t0 < 0.3  # nothing was started
    assert second["reused"] is True
    assert second["energy_per_atom"] == first["energy_per_atom"]
    assert count_completed_runs(tmp_path) == 1
    lines = (tmp_path / RUNS).read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "completed" and entry["pid"] == first["pid"]
    assert entry["ended_at"] >= entry["started_at"]


def test_emt_timeout_kills_the_worker_and_is_not_cached(tmp_path):
    t0 = time.perf_counter()
    result = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(delay_s=30), timeout_s=1.5, memory_gb=2.0)
    elapsed = time.perf_counter() - t0
    assert result["status"] == "failed"
    assert result["error_class"] == "Timeout"
    assert elapsed < 5
    with pytest.raises(ProcessLookupError):
        os.kill(result["pid"], 0)
    assert not (tmp_path / RESULT).exists()
    assert count_completed_runs(tmp_path) == 0
    assert json.loads((tmp_path / RUNS).read_text().splitlines()[-1])["event"] == "killed"
    assert not lock_is_held(tmp_path)

    retry = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(), timeout_s=60, memory_gb=2.0)
    assert retry["status"] == "ok" and retry["reused"] is False
    assert count_completed_runs(tmp_path) == 1


def test_emt_concurrent_callers_share_one_run(tmp_path):
    results: list[dict] = []

    def call():
        results.append(run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(delay_s=1.5),
                                         timeout_s=60, memory_gb=2.0))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.3)  # the second caller arrives while the first worker runs
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert all(r["status"] == "ok" for r in results)
    assert results[0]["energy_per_atom"] == results[1]["energy_per_atom"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert count_completed_runs(tmp_path) == 1


def test_emt_simultaneous_callers_that_all_start_workers_compute_once(tmp_path):
    # Started together, all callers find the lock free and start a worker; the workers
    # serialise on the lock and only the first computes.
    barrier = threading.Barrier(3)
    results: list[dict] = []

    def call():
        barrier.wait()
        results.append(run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(delay_s=1.0),
                                         timeout_s=60, memory_gb=2.0))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r["status"] for r in results] == ["ok"] * 3
    assert len({r["energy_per_atom"] for r in results}) == 1
    assert sorted(r["reused"] for r in results) == [False, True, True]
    assert count_completed_runs(tmp_path) == 1


def test_emt_orphaned_worker_finishes_after_driver_is_killed(tmp_path):
    workdir = tmp_path / "calc"
    driver_code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from discovery.oracles.subprocess_runner import run_in_subprocess
        payload = json.loads(Path({str(tmp_path / 'payload.json')!r}).read_text())
        run_in_subprocess(Path({str(workdir)!r}), {EMT_WORKER!r}, payload, timeout_s=60, memory_gb=2.0)
    """)
    (tmp_path / "payload.json").write_text(json.dumps(emt_payload(delay_s=2.0)))
    driver = subprocess.Popen([sys.executable, "-c", driver_code], cwd=REPO)
    deadline = time.monotonic() + 20
    while not lock_is_held(workdir):  # the worker has started and owns the folder
        assert time.monotonic() < deadline, "worker never took the lock"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (workdir / RESULT).exists()

    t0 = time.perf_counter()
    result = run_in_subprocess(workdir, EMT_WORKER, emt_payload(delay_s=2.0), timeout_s=60, memory_gb=2.0)
    assert result["status"] == "ok"
    assert result["reused"] is True  # the orphan's numbers, not a second run
    assert time.perf_counter() - t0 > 0.5  # it had to wait for the orphan
    assert count_completed_runs(workdir) == 1


def test_emt_memory_limit_is_a_failed_result(tmp_path):
    result = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(), timeout_s=30, memory_gb=0.05)
    assert result["status"] == "failed"
    assert result["error_class"] == "MemoryLimit", result["message"]


def test_crashing_worker_is_a_failed_result(tmp_path):
    result = run_in_subprocess(tmp_path, "discovery.oracles.no_such_worker", {}, timeout_s=30, memory_gb=1.0)
    assert result["status"] == "failed"
    assert result["error_class"] == "WorkerCrashed"
    assert "No module named" in result["message"]


def test_emt_unsupported_element_is_stored_as_a_failure(tmp_path):
    nacl = AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64))
    result = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(structure=nacl), timeout_s=60, memory_gb=2.0)
    assert result["status"] == "failed" and result["error_class"] == "UnsupportedElement"
    again = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(structure=nacl), timeout_s=60, memory_gb=2.0)
    assert again["reused"] is True and count_completed_runs(tmp_path) == 1


def test_emt_oracle_evaluation_and_resume(tmp_path):
    oracle = EMTOracle(EMTConfig(), tmp_path)
    s = cu_structure()
    cand = Candidate(id="cu-fcc", structure=s.as_dict(), formula=s.composition.reduced_formula,
                     generator="test")
    first = oracle.evaluate(cand)
    assert first.ok and first.fidelity == Fidelity.EMT
    assert first.oracle_fingerprint == oracle.fingerprint
    assert first.provenance.code == "ase-emt" and first.provenance.wall_s > 0
    assert first.energy_per_atom < first.properties["initial_energy_per_atom"]
    again = EMTOracle(EMTConfig(timeout_s=10, delay_s=5), tmp_path).evaluate(cand)  # same fingerprint
    assert again.extra["reused"] is True
    assert again.energy_per_atom == first.energy_per_atom
    assert count_completed_runs(oracle.work_folder(cand.id)) == 1
    assert EMTOracle(EMTConfig(fmax_ev_per_a=0.01), tmp_path).fingerprint != oracle.fingerprint

    nacl = AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64))
    bad = oracle.evaluate(Candidate(id="nacl", structure=nacl.as_dict(), formula="NaCl", generator="test"))
    assert bad.status == "failed" and bad.failure.error_class == "UnsupportedElement"


def test_a_worker_killed_by_a_signal_is_a_retryable_failure_and_runs_again(tmp_path):
    """A calculation whose process is killed from outside (an administrator, a node agent) becomes a
    failure record with its class, never a crash or a hang; it is not cached, so the retry computes."""
    import psutil

    from discovery.oracles.subprocess_oracle import RETRYABLE

    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(run_in_subprocess(
        tmp_path, EMT_WORKER, emt_payload(delay_s=30.0), timeout_s=120, memory_gb=2.0)))
    thread.start()
    deadline = time.time() + 60
    worker = None
    while worker is None and time.time() < deadline:
        worker = next((p for p in psutil.Process().children(recursive=True)
                       if EMT_WORKER in " ".join(p.cmdline())), None)
        time.sleep(0.1)
    assert worker is not None, "the worker never started"
    worker.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the runner hangs on a killed worker"
    assert out["status"] == "failed" and out["error_class"] == "WorkerCrashed", out
    assert "SIGTERM" in out["message"] and out["error_class"] in RETRYABLE
    again = run_in_subprocess(tmp_path, EMT_WORKER, emt_payload(), timeout_s=60, memory_gb=2.0)
    assert again["status"] == "ok" and not again.get("reused")
