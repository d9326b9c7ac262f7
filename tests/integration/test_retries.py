"""Retryable DFT failures (a lost worker, a timeout on a preempted node) are submitted again up to
``execution.max_attempts``, each attempt its own ledger record; permanent failures stay failures;
``--resume`` re-queues retryable failures that still have attempts left. A stand-in oracle (it
fails every candidate's first attempt with a lost worker) makes the failures happen on purpose."""

import json
import sqlite3
from typing import Literal

import pytest
import yaml
from pydantic import Field

from discovery import registry
from discovery.configbase import Strict
from discovery.kinds import Kind
from discovery.records import Evaluation, Fidelity, Provenance, failed_evaluation

FAILED_ONCE: set[str] = set()


class FlakyConfig(Strict):
    kind: Literal["flaky"] = "flaky"
    permanent: list[str] = Field(default_factory=list, description="formulas that always fail, not retryably")


class FlakyOracle:
    name, fidelity, fingerprint = "flaky", Fidelity.EMT, "flaky-1"

    def __init__(self, config, context):
        self.config = config

    def evaluate(self, candidate):
        if candidate.formula in self.config.permanent:
            return failed_evaluation(candidate.id, fidelity=self.fidelity, oracle=self.name, fingerprint=self.fingerprint,
                                     error_class="SCFNotConverged", message="never converges", retryable=False)
        if candidate.id not in FAILED_ONCE:
            FAILED_ONCE.add(candidate.id)
            return failed_evaluation(candidate.id, fidelity=self.fidelity, oracle=self.name, fingerprint=self.fingerprint,
                                     error_class="WorkerLost", message="node went away", retryable=True)
        energy = -1.0 - 0.1 * len(candidate.pmg.composition.elements)
        return Evaluation(candidate_id=candidate.id, fidelity=self.fidelity, oracle=self.name,
                          oracle_fingerprint=self.fingerprint, status="ok", energy_per_atom=energy,
                          relaxed_structure=candidate.structure,
                          provenance=Provenance(code="flaky", code_version="1", settings_fingerprint=self.fingerprint))


@pytest.fixture
def flaky():
    FAILED_ONCE.clear()
    kind = registry.register(Kind(role="dft", name="flaky", config=FlakyConfig, factory=FlakyOracle, fidelity="emt"))
    yield kind
    registry.unregister("dft", "flaky")


def campaign(tmp_path, max_attempts, **dft):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "retries", "seed": 0, "rounds": 1, "dft_per_round": 3,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 4},
        "generators": [{"kind": "random_symmetric", "n_per_round": 6}], "surrogate": {"kind": "forest"},
        "mlip": {"enabled": False}, "dft": {"kind": "flaky", **dft},
        "execution": {"backend": "local", "dft_slots": 2, "max_attempts": max_attempts},
        "tracking": {"enabled": False}}))
    return path


def run(path, out, resume=False):
    from discovery.config import load_config
    from discovery.launch import prepare

    prepared = prepare(load_config(path), out, resume=resume)
    try:
        prepared.campaign.run()
    finally:
        prepared.ledger.close()


def evaluations(out):
    with sqlite3.connect(out / "ledger.sqlite") as db:
        return [(k, json.loads(p)) for k, p in db.execute("select key, payload from records where kind = 'evaluation'")]


def test_retryable_failures_are_retried_and_permanent_ones_are_not(flaky, tmp_path):
    from discovery.report import campaign_status

    out = tmp_path / "out"
    run(campaign(tmp_path, max_attempts=2, permanent=["O2"]), out)
    rows = evaluations(out)
    by_candidate: dict[str, list[dict]] = {}
    for key, ev in rows:
        by_candidate.setdefault(ev["candidate_id"], []).append(ev)
        assert key.endswith("|2") == (ev["attempt"] == 2)  # each attempt is its own record
    for cid, evs in by_candidate.items():
        if evs[0]["failure"] and evs[0]["failure"]["error_class"] == "SCFNotConverged":
            assert len(evs) == 1  # permanent: never retried
        else:
            assert [e["attempt"] for e in evs] == [1, 2] and [e["status"] for e in evs] == ["failed", "ok"]
    status = campaign_status(out)
    assert status["dft_attempts"] == len(rows) and status["dft_retried"] == len(by_candidate) - 1
    assert status["nodes_lost"] == len(by_candidate) - 1 and status["dft_repeated"] == 0
    assert status["dft_references_completed"] == 2 and status["dft_references_failed"] == 1  # Cu, Ag; O2 permanent


def test_resume_requeues_retryable_failures_with_attempts_left(flaky, tmp_path):
    from discovery.report import campaign_status

    out = tmp_path / "out"
    run(campaign(tmp_path, max_attempts=1), out)
    first = campaign_status(out)
    assert first["dft_completed"] == 0 and first["dft_references_completed"] == 0  # every first attempt lost
    run(campaign(tmp_path, max_attempts=3), out, resume=True)
    after = campaign_status(out)
    assert after["dft_references_completed"] == 3 and after["dft_completed"] == first["dft_failed"]
    assert after["dft_retried"] == first["dft_failed"] + 3 and after["dft_repeated"] == 0
