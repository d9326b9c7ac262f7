"""Campaigns on a real multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`: several
raylets), with EMT standing in for DFT: DFT runs only on nodes that offer the ``dft`` resource, and a
node lost in the middle of a calculation loses nothing and repeats nothing."""

import json
import sqlite3
import threading
import time

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    yield c
    import ray

    ray.shutdown()
    c.shutdown()


def campaign(tmp_path, rounds=2, delay_s=0.0, **execution):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cluster", "seed": 0, "rounds": rounds, "dft_per_round": 3,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 4},
        "generators": [{"kind": "random_symmetric", "n_per_round": 8}], "surrogate": {"kind": "forest"},
        "mlip": {"enabled": False}, "dft": {"kind": "emt", "max_steps": 10, "delay_s": delay_s, "memory_gb": 0.5},
        "execution": {"backend": "ray", "dft_slots": 2, "dft_resource": "dft", **execution},
        "tracking": {"enabled": False}}))
    return path


def run(path, out, address):
    from discovery.config import load_config
    from discovery.launch import prepare

    prepared = prepare(load_config(path), out, address=address)
    try:
        prepared.campaign.run()
    finally:
        prepared.ledger.close()


def evaluations(out):
    with sqlite3.connect(out / "ledger.sqlite") as db:
        return [json.loads(p) for (p,) in db.execute("select payload from records where kind = 'evaluation'")]


def test_dft_runs_only_on_dft_nodes(cluster, tmp_path):
    dft_nodes = {cluster.add_node(num_cpus=1, resources={"dft": 1}).node_id for _ in range(2)}
    cluster.add_node(num_cpus=2)  # a node without the resource: generators may run there, DFT may not
    cluster.wait_for_nodes()
    run(campaign(tmp_path), tmp_path / "out", cluster.address)
    evs = evaluations(tmp_path / "out")
    assert len(evs) >= 6 and {e["extra"]["ray_node"] for e in evs} <= dft_nodes


def test_a_node_lost_mid_calculation_loses_and_repeats_nothing(cluster, tmp_path):
    from discovery.report import campaign_status

    doomed = cluster.add_node(num_cpus=1, resources={"dft": 1})
    cluster.add_node(num_cpus=1, resources={"dft": 1})
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    failure: list[BaseException] = []

    def drive():
        try:
            run(campaign(tmp_path, rounds=2, delay_s=3.0), out, cluster.address)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failure.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "work").glob("dft/*/*/lock")):
        time.sleep(0.2)  # the first calculations have started
    time.sleep(1.0)
    in_flight = {lock.parent.name for lock in (out / "work").glob("dft/*/*/lock")
                 if not (lock.parent / "result.json").exists()}
    cluster.remove_node(doomed, allow_graceful=False)  # mid-calculation
    cluster.add_node(num_cpus=1, resources={"dft": 1})  # the replacement the autoscaler would start
    driver.join(timeout=600)
    assert not driver.is_alive() and not failure, failure
    status = campaign_status(out)
    with sqlite3.connect(out / "ledger.sqlite") as db:
        submitted = {json.loads(p)["candidate"]["id"] for (p,) in db.execute(
            "select payload from records where kind = 'submission'")}
    final = {e["candidate_id"]: e for e in evaluations(out)}  # the last attempt of each
    assert set(final) == submitted, "every submitted calculation has a result (0 lost)"
    assert all(e["status"] == "ok" for e in final.values())
    assert status["dft_repeated"] == 0
    # the calculations in flight when the node went away finished, on the nodes that were left
    assert in_flight and all(final[cid]["extra"]["ray_node"] != doomed.node_id for cid in in_flight)



def test_driver_sigkill_and_resume_on_a_cluster_loses_and_repeats_nothing(cluster, tmp_path, cli):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from discovery.report import campaign_status

    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"dft": 1})
    cluster.wait_for_nodes()
    path = campaign(tmp_path, rounds=2, delay_s=2.0)
    out = tmp_path / "out"
    binary = Path(sys.executable).parent / "discovery"
    driver = subprocess.Popen([str(binary), "run", str(path), "--out", str(out), "--address", cluster.address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if (out / "ledger.sqlite").exists() and evaluations_safe(out):
            break
        time.sleep(0.3)
    assert driver.poll() is None, "the campaign ended before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    proc = cli("run", path, "--out", out, "--resume", "--address", cluster.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(out / "ledger.sqlite") as db:
        submitted = {json.loads(p)["candidate"]["id"] for (p,) in db.execute(
            "select payload from records where kind = 'submission'")}
    final = {e["candidate_id"]: e for e in evaluations(out)}
    assert set(final) == submitted and all(e["status"] == "ok" for e in final.values())
    assert campaign_status(out)["dft_repeated"] == 0


def evaluations_safe(out) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'ledger.sqlite'}?mode=ro", uri=True, timeout=2) as db:
            return db.execute("select count(*) from records where kind = 'evaluation'").fetchone()[0]
    except sqlite3.Error:
        return 0
