"""Run the default campaign and print its throughput figures as one JSON line.

Figures: wall time, DFT calculations per hour (candidates and references), the share of wall time
the DFT slots were computing (`dft_busy_fraction`, target >= 0.90) and the driver's own CPU share
(target <= 5 %), measured with psutil on the driver process alone (Ray actors and DFT
subprocesses are other processes).

    scripts/loopback-only .venv/bin/python benchmarks/campaign_throughput.py [--config FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "campaign.yaml")
    p.add_argument("--out", type=Path, default=None, help="campaign folder (default: a temporary one)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-")) / "campaign"
    cmd = [str(Path(sys.executable).parent / "discovery"), "run", str(args.config), "--out", str(out)]
    for o in args.overrides:
        cmd += ["--set", o]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    driver = psutil.Process(proc.pid)
    cpu = 0.0
    while proc.poll() is None:
        try:
            t = driver.cpu_times()
            cpu = t.user + t.system
        except psutil.Error:
            pass
        time.sleep(0.5)
    table = proc.stdout.read()
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"campaign failed with exit code {proc.returncode}")
    status = json.loads(subprocess.run([cmd[0], "status", str(out), "--json"], capture_output=True,
                                       text=True, check=True).stdout)
    n_dft = (status["dft_completed"] + status["dft_failed"] + status["dft_references_completed"]
             + status["dft_references_failed"])
    print(table, file=sys.stderr)
    print(json.dumps({
        "command_wall_s": round(wall, 1),
        "campaign_wall_s": round(status["wall_s"], 1),
        "dft_calculations": n_dft,
        "dft_validated_candidates": status["dft_completed"],
        "dft_per_hour": round(3600 * n_dft / status["wall_s"], 1),
        "dft_busy_fraction": round(status["dft_busy_fraction"], 3),
        "driver_cpu_share": round(cpu / wall, 3),
        "hits": status["hits"],
        "dft_repeated": status["dft_repeated"],
        "out": str(out),
    }))
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
