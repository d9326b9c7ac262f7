"""Kill anywhere: SIGKILL the driver at events chosen across a campaign's life (planning, CHGNet,
training, a checkpoint, MLflow, a ledger write, between DFT submissions and results, the resume
itself), resume, and check the finished campaign equals an uninterrupted run of the same file and
seed: the same candidates, selections and results, nothing lost, nothing computed twice. EMT stands
in for DFT so a campaign takes seconds."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from kill_scenarios import (KILL_POINTS, differences, discovery, kill_then_resume, killed_at,  # noqa: E402
                            ledger_summary, resume_to_the_end)

pytestmark = pytest.mark.slow

CAMPAIGN = {
    "name": "kill-anywhere", "seed": 5, "rounds": 3, "dft_per_round": 3,
    "chemistry": {"elements": ["Cu", "Ag", "Au"], "max_atoms": 4, "reference_phases": []},
    "generators": [{"kind": "substitution", "n_per_round": 8}, {"kind": "random_symmetric", "n_per_round": 14}],
    "surrogate": {"ensemble_size": 2, "max_epochs": 10},
    "mlip": {"top_k": 6, "max_steps": 15, "max_e_above_hull_ev": 1.0},
    "dft": {"kind": "emt", "max_steps": 20},
    "policy": {"kind": "thompson"},  # draws from its random stream every round: a resume must redraw the same
    "execution": {"backend": "local", "dft_slots": 2},
}


@pytest.fixture(scope="module")
def campaign_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "campaign.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    return path


@pytest.fixture(scope="module")
def uninterrupted(campaign_file) -> dict:
    out = campaign_file.parent / "uninterrupted"
    proc = discovery(["run", campaign_file, "--out", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = ledger_summary(out, "emt")
    assert summary["fits"] and summary["rounds"] == [0, 1, 2] and summary["lost"] == 0
    return summary


@pytest.mark.parametrize(("point", "n"), KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_killed_then_resumed_equals_uninterrupted(campaign_file, uninterrupted, tmp_path, point, n):
    summary, repeated = kill_then_resume(campaign_file, tmp_path / "out", point, n, "emt")
    assert (summary["lost"], repeated) == (0, 0)
    assert differences(summary, uninterrupted) == []


def test_killed_during_the_resume_itself(campaign_file, uninterrupted, tmp_path):
    out = tmp_path / "out"
    assert discovery(["run", campaign_file, "--out", out], killed_at("between-dft-results", 3)).returncode == -9
    assert discovery(["run", campaign_file, "--out", out, "--resume"], killed_at("during-resume", 1)).returncode == -9
    summary, repeated = resume_to_the_end(campaign_file, out, "emt")
    assert (summary["lost"], repeated) == (0, 0)
    assert differences(summary, uninterrupted) == []
