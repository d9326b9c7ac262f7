"""`kill` (SIGTERM) of a campaign running on Ray: the project's one interruption line and exit 130,
not Ray's native stack dumps, and the folder resumes."""

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]

BIN = Path(sys.executable).parent / "discovery"


def submissions(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(*) from records where kind = 'submission'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigterm_under_ray_is_one_line_and_resumable(tmp_path):
    cfg = {"name": "sigterm", "seed": 0, "rounds": 2, "dft_per_round": 2,
           "chemistry": {"elements": ["Cu", "Au"], "max_atoms": 4, "reference_phases": []},
           "generators": [{"kind": "random_symmetric", "n_per_round": 6}],
           "mlip": {"enabled": False}, "tracking": {"enabled": False},
           "dft": {"kind": "emt", "max_steps": 10, "delay_s": 30.0},  # calculations still running at the kill
           "execution": {"backend": "ray", "dft_slots": 2, "num_cpus": 2}}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    driver = subprocess.Popen([str(BIN), "run", str(path), "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while submissions(out / "ledger.sqlite") == 0 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.5)
    assert driver.poll() is None, "the campaign ended before it could be stopped"
    time.sleep(3)  # the calculations are on their Ray actors now
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-2000:]
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "discovery: interrupted; resume with --resume"
    status = subprocess.run([str(BIN), "status", str(out)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
