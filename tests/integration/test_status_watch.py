"""`discovery status DIR --watch` follows a running campaign and returns once its driver stops."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent / "discovery"


@pytest.mark.slow
def test_watch_follows_a_running_campaign_to_its_end(tmp_path):
    cfg = {"name": "watched", "seed": 0, "rounds": 2, "dft_per_round": 2,
           "chemistry": {"elements": ["Cu", "Au"], "max_atoms": 4, "reference_phases": []},
           "generators": [{"kind": "random_symmetric", "n_per_round": 6}],
           "mlip": {"enabled": False}, "tracking": {"enabled": False},
           "dft": {"kind": "emt", "max_steps": 10, "delay_s": 6.0},  # the run outlasts the watch's start
           "execution": {"backend": "local", "dft_slots": 2}}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    run = subprocess.Popen([str(BIN), "run", str(path), "--out", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and run.poll() is None:  # until the ledger reads as a running campaign
        probe = subprocess.run([str(BIN), "status", str(out), "--json"], capture_output=True, text=True)
        if probe.returncode == 0 and '"running": true' in probe.stdout:
            break
        time.sleep(0.5)
    watch = subprocess.Popen([str(BIN), "status", str(out), "--watch", "0.5"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert run.wait(timeout=600) == 0, run.stderr.read()[-3000:]
    ended = time.time()
    stdout, stderr = watch.communicate(timeout=60)
    assert watch.returncode == 0, stderr
    assert time.time() - ended < 30, "the watch kept going after the campaign ended"
    assert "(running;" in stdout, "the watch never showed the campaign running"
    assert "(stopped;" in stdout and "DFT-validated candidates" in stdout


def test_watch_refuses_json(tmp_path):
    proc = subprocess.run([str(BIN), "status", str(tmp_path), "--watch", "--json"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("--watch takes seconds between 0 and 3600 and no --json")
