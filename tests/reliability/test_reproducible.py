"""Same campaign file and seed, same campaign, whatever the timing: two EMT campaigns whose
calculations take different times (so results arrive in different orders while later rounds are
planned) record the same candidates, selections and results."""

import json
import sqlite3

import pytest
import yaml

pytestmark = pytest.mark.slow

CAMPAIGN = {
    "name": "timing", "seed": 3, "rounds": 5, "dft_per_round": 3,
    "chemistry": {"elements": ["Cu", "Ag", "Au"], "max_atoms": 4, "reference_phases": []},
    "generators": [{"kind": "substitution", "n_per_round": 10}, {"kind": "random_symmetric", "n_per_round": 6}],
    "surrogate": {"ensemble_size": 2, "max_epochs": 15},
    "mlip": {"enabled": False},
    "execution": {"backend": "local", "dft_slots": 2},
    "tracking": {"enabled": False},
}


def run(cli, folder, dft) -> dict:
    folder.mkdir()
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump({**CAMPAIGN, "dft": dft}))
    proc = cli("run", path, "--out", folder / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(folder / "out" / "ledger.sqlite") as db:
        rows = [(kind, rnd, json.loads(p)) for kind, rnd, p in
                db.execute("select kind, round, payload from records where kind in "
                           "('candidate', 'selection', 'submission', 'evaluation', 'fit')")]
    arrival = [p["candidate_id"] for kind, _, p in rows if kind == "evaluation"]
    return {
        "candidates": sorted((rnd, p["id"]) for kind, rnd, p in rows if kind == "candidate"),
        "selections": sorted((rnd, tuple(p["candidate_ids"])) for kind, rnd, p in rows if kind == "selection"),
        "results": sorted((p["candidate_id"], p["status"], round(p["energy_per_atom"] or 0.0, 6))
                          for kind, _, p in rows if kind == "evaluation"),
        "fits": sorted((rnd, p["n_train"]) for kind, rnd, p in rows if kind == "fit"),
        "arrival": arrival,
    }


def test_the_outcome_does_not_depend_on_how_long_calculations_take(cli, tmp_path):
    fast = run(cli, tmp_path / "fast", {"kind": "emt", "max_steps": 20})
    # delays are no numeric setting (not in the oracle's fingerprint): the same campaign, run slower
    # and with calculations of very unequal length
    slow = run(cli, tmp_path / "slow", {"kind": "emt", "max_steps": 20, "delay_s": 0.6, "delay_sigma": 1.2})
    assert fast["arrival"] != slow["arrival"], "the delays did not change the order results arrived in"
    assert len({rnd for rnd, _ in fast["fits"]}) >= 2, "the surrogate should have trained in later rounds"
    for key in ("candidates", "selections", "results", "fits"):
        assert fast[key] == slow[key], key
