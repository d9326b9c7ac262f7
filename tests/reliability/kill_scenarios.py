"""Kill a campaign driver at a chosen event, resume it, and summarise its ledger: used by
`test_kill_anywhere.py` (EMT, in CI) and kept apart so a benchmark can run the same with GPAW.

The kills come from `kill_points/sitecustomize.py`, put on PYTHONPATH of the killed run only."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "discovery"
INJECTOR = Path(__file__).parent / "kill_points"

#: (event, the n-th time it happens): points across planning, DFT and results; see the injector
KILL_POINTS = [
    ("after-proposal", 2),          # round 1 planned up to its proposals
    ("generator-update", 3),        # round 1, generator feedback
    ("during-mlip", 2),             # round 0's CHGNet screening (the references' relaxation is the 1st)
    ("surrogate-training", 1),      # the first fit
    ("after-checkpoint", 1),        # a checkpoint written, its round not yet recorded
    ("mlflow-logging", 6),          # metrics of round 0
    ("ledger-write", 25),           # inside a round's transaction or a result's write
    ("after-dft-submission", 1),    # round 0 recorded, one of its calculations handed over
    ("between-dft-results", 4),     # two results in, more to come
    ("between-dft-results", 10),    # late: results of the last round
]


def discovery(args, env: dict[str, str] | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def killed_at(point: str, n: int) -> dict[str, str]:
    """The environment that makes a driver SIGKILL itself the n-th time ``point`` happens."""
    path = os.pathsep.join(p for p in (str(INJECTOR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "DISCOVERY_KILL_AT": f"{point}:{n}"}


def ledger_summary(out: Path, fidelity: str) -> dict:
    """What must not depend on interruptions: candidates, selections, DFT results and fits by
    round; plus submissions without a result (lost)."""
    with sqlite3.connect(f"file:{out / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        rows = [(kind, key, rnd, json.loads(p)) for kind, key, rnd, p in
                db.execute("select kind, key, round, payload from records")]
    submissions = {key for kind, key, _, _ in rows if kind == "submission"}
    evaluated = {key for kind, key, _, _ in rows if kind == "evaluation"}
    return {
        "candidates": sorted((rnd, p["id"]) for kind, _, rnd, p in rows if kind == "candidate"),
        "selections": sorted((rnd, tuple(p["candidate_ids"])) for kind, _, rnd, p in rows if kind == "selection"),
        "dft": sorted((p["candidate_id"], p["status"], round(p["energy_per_atom"] or 0.0, 6))
                      for kind, _, _, p in rows if kind == "evaluation" and p["fidelity"] == fidelity),
        "fits": sorted((rnd, p["n_train"]) for kind, _, rnd, p in rows if kind == "fit"),
        "rounds": sorted(rnd for kind, _, rnd, _ in rows if kind == "round"),
        "lost": len(submissions - evaluated),
    }


def resume_to_the_end(campaign_file: Path, out: Path, fidelity: str) -> tuple[dict, int]:
    """``--resume`` until the campaign is finished; its ledger summary and repeated calculations."""
    proc = discovery(["run", campaign_file, "--out", out, "--resume"])
    if proc.returncode != 0:
        raise AssertionError(f"--resume failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    status = discovery(["status", out, "--json"])
    if status.returncode != 0:
        raise AssertionError(f"status failed: {status.stderr[-2000:]}")
    return ledger_summary(out, fidelity), int(json.loads(status.stdout)["dft_repeated"])


def kill_then_resume(campaign_file: Path, out: Path, point: str, n: int, fidelity: str) -> tuple[dict, int]:
    """Run with a kill at ``point:n`` (which must happen), then resume to the end."""
    proc = discovery(["run", campaign_file, "--out", out], killed_at(point, n))
    if proc.returncode != -9:
        raise AssertionError(f"the driver was not killed at {point}:{n} (exit {proc.returncode}): "
                             f"{proc.stderr[-2000:]}")
    return resume_to_the_end(campaign_file, out, fidelity)


def differences(summary: dict, reference: dict) -> list[str]:
    """The parts of ``summary`` that differ from ``reference`` (lost calculations aside)."""
    return [key for key in reference if key != "lost" and summary.get(key) != reference[key]]
