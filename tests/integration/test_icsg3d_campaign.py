"""ICSG3D as a campaign generator, with EMT standing in for DFT (as the name says): the trained
model is hosted in its worker next to the random-structure generator, the bandit shares proposals between them,
and the campaign's labels reach the generator's update."""

import json
import sqlite3

import pytest
import yaml

from icsg3d_helpers import train_tiny


@pytest.mark.slow
def test_icsg3d_generator_runs_inside_a_short_emt_campaign(cli, tmp_path):
    train_tiny(tmp_path)
    cfg = {
        "name": "icsg3d-emt", "seed": 0, "rounds": 2, "dft_per_round": 2,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 6, "reference_phases": []},
        "generators": [{"kind": "random_symmetric", "n_per_round": 6},
                       {"kind": "icsg3d", "checkpoint_dir": str(tmp_path / "model"), "n_per_round": 4,
                        "mode": "random"}],
        "surrogate": {"ensemble_size": 2, "max_epochs": 20},
        "mlip": {"enabled": False},
        "dft": {"kind": "emt", "max_steps": 20},
        "execution": {"backend": "local", "dft_slots": 2},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = cli("run", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(out / "ledger.sqlite") as db:
        bandit = [json.loads(p) for (p,) in db.execute("select payload from records where kind = 'bandit'")]
        rounds = [json.loads(p) for (p,) in db.execute("select payload from records where kind = 'round'")]
    assert len(rounds) == 2
    assert bandit and all(set(b["quotas"]) == {"random_symmetric|", "icsg3d|"} for b in bandit)
    assert all(sum(b["quotas"].values()) == 10 and b["quotas"]["icsg3d|"] >= 2 for b in bandit)
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert status["dft_completed"] >= 2 and status["dft_repeated"] == 0
