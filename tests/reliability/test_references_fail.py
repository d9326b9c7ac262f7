"""A campaign whose references all fail DFT has no hull to measure anything against: it stops with
one line instead of planning round after round (and a resume stops the same way). A stand-in
oracle that fails every calculation makes it happen; the campaign runs in this process (local
executor, no tracking), so neither Ray nor MLflow starts."""

import signal
import sqlite3
from typing import Literal

import pytest
import yaml

from discovery import registry
from discovery.configbase import Strict
from discovery.kinds import Kind
from discovery.records import Fidelity, failed_evaluation


class BrokenConfig(Strict):
    kind: Literal["broken"] = "broken"


class BrokenOracle:
    name, fidelity, fingerprint = "broken", Fidelity.EMT, "broken-1"

    def __init__(self, config, context):
        self.config = config

    def evaluate(self, candidate):
        return failed_evaluation(candidate.id, fidelity=self.fidelity, oracle=self.name, fingerprint=self.fingerprint,
                                 error_class="SCFNotConverged", message="never converges", retryable=False)


@pytest.fixture
def broken():
    kind = registry.register(Kind(role="dft", name="broken", config=BrokenConfig, factory=BrokenOracle,
                                  fidelity="emt"))
    sigterm = signal.getsignal(signal.SIGTERM)  # the CLI installs its own handler
    yield kind
    signal.signal(signal.SIGTERM, sigterm)
    registry.unregister("dft", "broken")


def test_all_references_failing_stops_the_campaign_with_one_line(broken, tmp_path, capsys):
    from discovery.cli import main

    rounds = 30
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "broken", "seed": 0, "rounds": rounds, "dft_per_round": 2,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 4},
        "generators": [{"kind": "random_symmetric", "n_per_round": 4}], "surrogate": {"kind": "forest"},
        "mlip": {"enabled": False}, "dft": {"kind": "broken"}, "bandit": None,
        "execution": {"backend": "local", "dft_slots": 1}, "tracking": {"enabled": False}}))
    out = tmp_path / "out"
    for args in (["run", str(path), "--out", str(out)], ["run", str(path), "--out", str(out), "--resume"]):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("discovery: error:")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
        line = errors[0]
        assert len(line) < 300 and "Traceback" not in err
        assert "dft: every reference failed" in line and "SCFNotConverged" in line, line
    with sqlite3.connect(out / "ledger.sqlite") as db:
        planned = db.execute("SELECT COUNT(*) FROM records WHERE kind = 'round'").fetchone()[0]
        references = db.execute("SELECT COUNT(*) FROM records WHERE kind = 'evaluation' AND round = -1").fetchone()[0]
    assert references == 3, "each reference is computed once, not again on resume"
    assert planned < rounds, f"{planned} rounds planned after every reference had failed"
