"""Both executors refill a DFT slot the moment it frees (no batch barrier), with EMT standing in
for DFT and per-candidate delays emulating calculations of unequal length."""

import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from discovery.build import ComponentSpec
from discovery.oracles.emt_oracle import EMTConfig
from discovery.generators.random_symmetric import RandomSymmetricGeneratorConfig
from discovery.executor import LocalExecutor
from discovery.structures import make_candidate


def copper(a: float, delay: float):
    s = Structure(Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return make_candidate(s, "test", conditions={"delay_s": delay})


def run_pool(executor, tmp_path):
    # one slot takes the 8 s job; the other must chew through the four 1 s jobs meanwhile
    delays = [8.0, 1.0, 1.0, 1.0, 1.0]
    dft = ComponentSpec("dft", EMTConfig(relax=False), workdir=tmp_path / "dft")
    gen = ComponentSpec("generator", RandomSymmetricGeneratorConfig(n_per_round=2), ("Na", "Cl"), 4, seed=1)
    executor.start({"generator:random_symmetric": gen}, dft, dft_slots=2)
    try:
        start = time.time()
        for i, d in enumerate(delays):
            executor.submit_dft(copper(3.55 + 0.01 * i, d))
        assert executor.outstanding == 5
        done = []
        while len(done) < 5 and time.time() - start < 120:
            done += executor.completed(timeout_s=0.5)
        wall = time.time() - start
        assert executor.outstanding == 0
        proposals = executor.call("generator:random_symmetric", "propose", 2, {}, np.random.default_rng(0))
    finally:
        executor.shutdown()
    assert all(e.ok and e.fidelity == "emt" for e in done)
    slow = next(e for e in done if e.candidate_id == copper(3.55, 8.0).id)
    slow_end = slow.provenance.started_at + slow.provenance.wall_s
    started_meanwhile = [e for e in done if e is not slow and e.provenance.started_at < slow_end]
    # a batch barrier of 2 would start only one short job while the slow one runs
    assert len(started_meanwhile) >= 3, [e.provenance for e in done]
    return wall, proposals


@pytest.mark.slow
def test_emt_local_executor_refills_slots(tmp_path):
    _, proposals = run_pool(LocalExecutor(), tmp_path)
    assert len(proposals) == 2


@pytest.mark.slow
@pytest.mark.ray
def test_emt_ray_executor_refills_slots(tmp_path):
    from discovery.actors.executor import RayExecutor

    _, proposals = run_pool(RayExecutor(num_cpus=2), tmp_path)
    assert len(proposals) == 2
