"""CD-VAE as a campaign generator, with EMT standing in for DFT: the campaign file names the training
data and a (miniature) schedule, the campaign trains the model before its workers start (its own
MLflow run), the generator runs in a Ray actor, its proposals carry their sampling mode and reach DFT,
and a second start reuses the model."""

import json
import sqlite3

import pytest
import yaml
from pymatgen.core import Composition

from cdvae_helpers import TINY_CDVAE, tiny_csv


@pytest.mark.slow
def test_cdvae_generator_trains_itself_and_its_proposals_reach_dft(cli, tmp_path):
    tiny_csv(tmp_path / "binaries.csv", formulas=("CuO", "NiO", "PdO", "PtO"))
    cfg = {
        "name": "cdvae-emt", "seed": 0, "rounds": 2, "dft_per_round": 3,
        "chemistry": {"elements": ["Cu", "Ni", "O"], "max_atoms": 4, "reference_phases": []},
        "generators": [{"kind": "cdvae", "checkpoint_dir": "model", "preset": "cpu", "train_data": "binaries.csv",
                        "train": TINY_CDVAE, "n_per_round": 6, "mode": "random"}],
        "surrogate": {"ensemble_size": 2, "max_epochs": 20},
        "mlip": {"enabled": False},
        "dft": {"kind": "emt", "max_steps": 20},
        "execution": {"backend": "ray", "dft_slots": 2, "num_cpus": 2},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = cli("run", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "model" / "cdvae.json").read_text())
    assert manifest["config"]["preset"] == "cpu" and manifest["config"]["epochs"] == TINY_CDVAE["epochs"]
    with sqlite3.connect(out / "ledger.sqlite") as db:
        rows = {kind: [json.loads(p) for (p,) in db.execute("select payload from records where kind = ?", (kind,))]
                for kind in ("candidate", "evaluation")}
    proposed = {c["id"]: c for c in rows["candidate"] if c["generator"] == "cdvae"}
    assert proposed, "CD-VAE proposed nothing"
    assert all(c["conditions"]["mode"] == "random" for c in proposed.values())
    assert all({e.symbol for e in Composition(c["formula"])} <= {"Cu", "Ni", "O"} for c in proposed.values())
    evaluated = [e for e in rows["evaluation"] if e["candidate_id"] in proposed]
    assert any(e["status"] == "ok" for e in evaluated), "no CD-VAE proposal was evaluated"
    with sqlite3.connect(out / "mlflow.db") as db:  # the training is its own MLflow run
        runs = db.execute("select e.name, r.status from runs r join experiments e "
                          "on r.experiment_id = e.experiment_id").fetchall()
    assert ("cdvae", "FINISHED") in runs and ("cdvae-emt", "FINISHED") in runs

    stamp = (tmp_path / "model" / "model.pt").stat().st_mtime_ns
    cfg["rounds"] = 1
    cfg["execution"] = {"backend": "local", "dft_slots": 2}
    path.write_text(yaml.safe_dump(cfg))
    again = cli("run", str(path), "--out", str(tmp_path / "out2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "model" / "model.pt").stat().st_mtime_ns == stamp
