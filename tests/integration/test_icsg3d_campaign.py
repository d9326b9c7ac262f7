"""ICSG3D as a campaign generator, with EMT standing in for DFT (as the name says): the campaign file
selects the preset and training data, the campaign trains the model before its workers start, the
generator is hosted in a Ray actor next to the random-structure generator, a second start reuses the
model, and the bandit shares proposals between them. With a model that decodes valid crystals, ICSG3D
proposals reach DFT and their labels reach the generator's update (its recorded conditions)."""

import json
import sqlite3

import pytest
import yaml

from icsg3d_helpers import tiny_overrides, write_perovskite_csv


@pytest.mark.slow
def test_icsg3d_generator_trains_itself_and_runs_inside_a_short_emt_campaign(cli, tmp_path):
    write_perovskite_csv(tmp_path / "perov.csv")
    cfg = {
        "name": "icsg3d-emt", "seed": 0, "rounds": 2, "dft_per_round": 2,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 6, "reference_phases": []},
        "generators": [{"kind": "random_symmetric", "n_per_round": 6},
                       {"kind": "icsg3d", "checkpoint_dir": "model", "preset": "cpu", "train_data": "perov.csv",
                        "train": tiny_overrides(), "n_per_round": 4, "mode": "random"}],
        "surrogate": {"ensemble_size": 2, "max_epochs": 20},
        "mlip": {"enabled": False},
        "dft": {"kind": "emt", "max_steps": 20},
        "execution": {"backend": "ray", "dft_slots": 2, "num_cpus": 2},  # generators in Ray actors
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
    manifest = json.loads((tmp_path / "model" / "icsg3d.json").read_text())
    assert manifest["config"]["preset"] == "cpu" and manifest["config"]["vae"]["epochs"] == 1
    assert "training the cpu preset" in " ".join((proc.stderr + proc.stdout).split())  # rich wraps lines
    with sqlite3.connect(out / "mlflow.db") as db:  # the training is its own MLflow run, next to the campaign's
        runs = db.execute("select e.name, r.status from runs r join experiments e "
                          "on r.experiment_id = e.experiment_id").fetchall()
    assert ("icsg3d", "FINISHED") in runs and ("icsg3d-emt", "FINISHED") in runs

    # a second campaign on the same folder loads the model instead of training again
    stamp = (tmp_path / "model" / "vae.pt").stat().st_mtime_ns
    cfg["rounds"] = 1
    cfg["execution"] = {"backend": "local", "dft_slots": 2}
    path.write_text(yaml.safe_dump(cfg))
    again = cli("run", str(path), "--out", str(tmp_path / "out2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "model" / "vae.pt").stat().st_mtime_ns == stamp
    assert "training the cpu preset" not in " ".join((again.stderr + again.stdout).split())


@pytest.mark.slow
def test_icsg3d_proposals_reach_dft_and_their_labels_reach_the_generator(cli, tmp_path, icsg3d_memorized):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(icsg3d_memorized, model)
    cfg = {
        "name": "icsg3d-labels", "seed": 0, "rounds": 3, "dft_per_round": 3,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 6, "reference_phases": []},
        "generators": [{"kind": "icsg3d", "checkpoint_dir": "model", "n_per_round": 6, "latent_scale": 0.1}],
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
        rows = {kind: [(r, json.loads(p)) for r, p in db.execute("select round, payload from records where kind = ?",
                                                                    (kind,))]
                for kind in ("candidate", "evaluation", "conditions")}
    proposed = {c["id"] for _, c in rows["candidate"] if c["generator"] == "icsg3d"}
    assert proposed, "ICSG3D proposed nothing"
    evaluated = [e for _, e in rows["evaluation"] if e["candidate_id"] in proposed]
    assert any(e["status"] == "ok" for e in evaluated), "no ICSG3D proposal was evaluated"
    conditions = sorted((r, c) for r, c in rows["conditions"] if c["generator"] == "icsg3d")
    assert len(conditions) == 3 and conditions[0][1]["n_labels_own"] == 0
    assert conditions[-1][1]["n_labels_own"] >= 1  # the DFT labels of its own proposals reached update
