"""How a campaign scales with DFT nodes: the same campaign on 1, 2 and 4 simulated DFT nodes.

    scripts/loopback-only .venv/bin/python benchmarks/scaling.py [--nodes 1 2 4] [--slots-per-node 2]
        [--calcs 96] [--mean-s 6] [--sigma 0.5] [--out DIR]

Each size is a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: one head
plus N raylets, each offering ``--slots-per-node`` CPUs and as many units of the ``dft`` resource).
The oracle is EMT with a log-normal sleep per candidate (median ``--mean-s``, spread ``--sigma``),
standing in for calculations of unequal length (real GPAW relaxations here take 10 s to minutes; the
sleep is a scaled-down stand-in that does not compete with the driver for the CPU). The campaign
(random symmetric structures, a forest surrogate, no MLIP) has enough rounds for ``--calcs`` DFT
calculations.

Printed as ONE JSON line, per size: DFT results per minute, scaling efficiency against one node
(throughput / (N x throughput of one node)), DFT busy fraction (calculation time / (slots x the time
from the first submission to the last result)), driver CPU share (the driver process's CPU time /
wall time) and the planning time per round. Figures in ``--out``: throughput and busy fraction
against nodes (``scaling.png``), and for the largest size the planning-overlap timeline
(``overlap.png``: every DFT calculation as a bar per slot, every round's planning interval on top),
so you see whether slots ever idle while a round is planned.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sqlite3
import sys
import time
from pathlib import Path

import yaml


def campaign_file(folder: Path, slots: int, calcs: int, mean_s: float, sigma: float) -> Path:
    per_round = max(2, slots)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"scaling-{slots}", "seed": 0, "rounds": -(-calcs // per_round), "dft_per_round": per_round,
        "chemistry": {"elements": ["Cu", "Ag", "Au", "Ni"], "max_atoms": 6},
        "generators": [{"kind": "random_symmetric", "n_per_round": 4 * per_round}],
        "surrogate": {"kind": "forest", "n_estimators": 50}, "mlip": {"enabled": False},
        "filters": {"charge_neutral": False},
        "dft": {"kind": "emt", "relax": False, "delay_s": mean_s, "delay_sigma": sigma, "memory_gb": 1.0},
        "bandit": None, "execution": {"backend": "ray", "dft_slots": slots, "dft_resource": "dft"},
        "tracking": {"enabled": False}}))
    return path


def run_size(nodes: int, slots_per_node: int, args, out: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from discovery.config import load_config
    from discovery.launch import prepare

    folder = out / f"nodes-{nodes}"
    folder.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=slots_per_node, resources={"dft": slots_per_node})
        cluster.wait_for_nodes()
        slots = nodes * slots_per_node
        config = load_config(campaign_file(folder, slots, args.calcs, args.mean_s, args.sigma))
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
        prepared = prepare(config, folder / "campaign", address=cluster.address)
        try:
            prepared.campaign.run()
        finally:
            prepared.ledger.close()
        wall = time.time() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        driver_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"nodes": nodes, "slots": slots, **measure(folder / "campaign" / "ledger.sqlite", slots),
            "campaign_wall_s": round(wall, 1), "driver_cpu_share": round(driver_cpu / wall, 4)}


def timeline(db_path: Path) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
    """DFT calculations as (start, end, node) and rounds' planning as (start, end), in seconds."""
    with sqlite3.connect(db_path) as db:
        evs = [json.loads(p) for (p,) in db.execute("select payload from records where kind = 'evaluation'")]
        rounds = [(created, json.loads(p)) for created, p in db.execute(
            "select created, payload from records where kind = 'round'")]
    calcs = [(e["provenance"]["started_at"], e["provenance"]["started_at"] + e["provenance"]["wall_s"],
              e["extra"].get("ray_node", "")) for e in evs if e["provenance"]["wall_s"] > 0]
    planning = [(created - p["wall_s"], created) for created, p in rounds]
    return calcs, planning


def measure(db_path: Path, slots: int) -> dict:
    calcs, planning = timeline(db_path)
    start = min(c[0] for c in calcs)
    end = max(c[1] for c in calcs)
    busy = sum(c[1] - c[0] for c in calcs)
    return {"dft_results": len(calcs), "dft_window_s": round(end - start, 1),
            "throughput_per_min": round(60 * len(calcs) / (end - start), 2),
            "dft_busy_fraction": round(busy / (slots * (end - start)), 3),
            "planning_s_per_round": round(sum(b - a for a, b in planning) / max(1, len(planning)), 2)}


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["nodes"] for r in results]
    ax1.plot(n, [r["throughput_per_min"] for r in results], "o-", label="measured")
    ax1.plot(n, [results[0]["throughput_per_min"] * k / n[0] for k in n], "--", label="linear")
    ax1.set_xlabel("DFT nodes")
    ax1.set_ylabel("DFT results per minute")
    ax1.legend()
    ax2.plot(n, [r["dft_busy_fraction"] for r in results], "o-", label="DFT busy")
    ax2.plot(n, [r["scaling_efficiency"] for r in results], "s-", label="scaling efficiency")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("DFT nodes")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)

    calcs, planning = timeline(out / f"nodes-{results[-1]['nodes']}" / "campaign" / "ledger.sqlite")
    t0 = min(min(c[0] for c in calcs), min(p[0] for p in planning))
    lanes: list[float] = []  # greedy lane assignment: one bar per busy slot
    fig, ax = plt.subplots(figsize=(10, 4))
    for start, end, _ in sorted(calcs):
        lane = next((i for i, free in enumerate(lanes) if free <= start + 1e-6), len(lanes))
        if lane == len(lanes):
            lanes.append(0.0)
        lanes[lane] = end
        ax.barh(lane, end - start, left=start - t0, height=0.8, color="tab:blue")
    for start, end in planning:
        ax.axvspan(start - t0, end - t0, color="tab:orange", alpha=0.3)
    ax.set_xlabel("time (s); orange: a round being planned")
    ax.set_ylabel("DFT slot")
    ax.set_title(f"{results[-1]['nodes']} nodes: DFT calculations and round planning")
    fig.tight_layout()
    fig.savefig(out / "overlap.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--slots-per-node", type=int, default=2)
    p.add_argument("--calcs", type=int, default=96, help="DFT calculations per size")
    p.add_argument("--mean-s", type=float, default=6.0, help="median calculation time (s)")
    p.add_argument("--sigma", type=float, default=0.5, help="log-normal spread of calculation times")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/scaling"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_size(n, args.slots_per_node, args, args.out) for n in args.nodes]
    base = results[0]["throughput_per_min"] / results[0]["nodes"]
    for r in results:
        r["scaling_efficiency"] = round(r["throughput_per_min"] / (r["nodes"] * base), 3)
    plot(results, args.out)
    print(json.dumps({"benchmark": "scaling", "calcs": args.calcs, "mean_s": args.mean_s, "sigma": args.sigma,
                      "slots_per_node": args.slots_per_node, "sizes": results, "out": str(args.out)}))


if __name__ == "__main__":
    main()
