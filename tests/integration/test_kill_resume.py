"""SIGKILL the driver after its first DFT result, resume, and check that no calculation is lost or
repeated (real GPAW; local executor so the kill hits the driver process itself)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_campaign import write_tiny  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.dft]

BIN = Path(sys.executable).parent / "discovery"


QUERIES = {
    "submission": "SELECT COUNT(*) FROM records WHERE kind = 'submission'",
    # DFT results: evaluations whose key (candidate|settings) was submitted to the DFT pool
    "dft": "SELECT COUNT(*) FROM records WHERE kind = 'evaluation' AND key IN "
           "(SELECT key FROM records WHERE kind = 'submission')",
}


def count(db: Path, what: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        n = con.execute(QUERIES[what]).fetchone()[0]
        con.close()
        return n
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_campaign_then_resume_loses_and_repeats_nothing(tmp_path, cli):
    cfg = write_tiny(tmp_path / "campaign.yaml", rounds=1, execution={"backend": "local", "dft_slots": 2},
                     tracking={"enabled": False})
    out = tmp_path / "out"
    driver = subprocess.Popen([str(BIN), "run", str(cfg), "--out", str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = out / "ledger.sqlite"
    deadline = time.time() + 600
    while count(db, "dft") == 0 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert driver.poll() is None, "the campaign ended before it could be killed"
    live = cli("status", out, "--json")  # status works while the driver writes
    assert live.returncode == 0 and json.loads(live.stdout)["running"] is True
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    submitted_at_kill = count(db, "submission")
    assert count(db, "dft") < submitted_at_kill, "the kill should leave calculations in flight"

    proc = cli("run", cfg, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr

    con = sqlite3.connect(db)
    submissions = {k for (k,) in con.execute("SELECT key FROM records WHERE kind='submission'")}
    evaluations = [k for (k,) in con.execute("SELECT key FROM records WHERE kind='evaluation'")
                   if k in submissions]
    con.close()
    assert set(evaluations) == submissions, "every submitted calculation has its result (0 lost)"
    st = json.loads(cli("status", out, "--json").stdout)
    assert st["dft_repeated"] == 0
    runs = [p for p in (out / "work" / "dft").glob("*/*/runs.jsonl")]
    completed = [json.loads(line) for p in runs for line in p.read_text().splitlines() if line.strip()]
    ids = [p.parent.name for p in runs]
    assert len(ids) == len(set(ids))
    assert st["dft_references_completed"] + st["dft_completed"] + st["dft_references_failed"] + \
        st["dft_failed"] == len(submissions)
    assert completed
