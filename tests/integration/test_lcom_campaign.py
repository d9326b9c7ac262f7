"""LCOM in a campaign, with EMT standing in for DFT: the campaign trains LCOM on a (miniature) CD-VAE's
latents before its workers start, the lcom generator proposes crystals whose latents it descended,
they reach DFT, and the lcom surrogate is fine-tuned on those labels (its checkpoint after every fit)."""

import json
import sqlite3

import pytest
import yaml
from pymatgen.core import Composition

from lcom_helpers import TINY_LCOM, train_tiny


@pytest.mark.slow
def test_lcom_generator_and_surrogate_learn_from_the_campaign(cli, tmp_path):
    data_csv, cdvae_dir, _ = train_tiny(tmp_path / "tiny", formulas=("CuO", "NiO", "PdO", "PtO"), lcom=False)
    model = {"checkpoint_dir": "lcom", "preset": "cpu", "train_data": str(data_csv),
             "train": {**TINY_LCOM, "cdvae_dir": str(cdvae_dir)}}
    cfg = {
        "name": "lcom-emt", "seed": 0, "rounds": 4, "dft_per_round": 2,
        "chemistry": {"elements": ["Cu", "Ni", "O"], "max_atoms": 4, "reference_phases": []},
        "generators": [{"kind": "lcom", **model, "n_per_round": 6, "steps": 3}],
        "surrogate": {"kind": "lcom", **model, "checkpoint_dir": "lcom-surrogate", "fine_tune_steps": 5},
        "mlip": {"enabled": False},
        "dft": {"kind": "emt", "max_steps": 20},
        "execution": {"backend": "local", "dft_slots": 2},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = cli("run", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "lcom" / "lcom.json").read_text())
    assert manifest["cdvae"]["dir"] == str(cdvae_dir.resolve()) and manifest["config"]["conservative"] is True
    with sqlite3.connect(out / "ledger.sqlite") as db:
        rows = {kind: [json.loads(p) for (p,) in db.execute("select payload from records where kind = ?", (kind,))]
                for kind in ("candidate", "evaluation")}
    proposed = {c["id"]: c for c in rows["candidate"] if c["generator"] == "lcom"}
    assert proposed, "LCOM proposed nothing"
    assert all("predicted_formation_energy" in c["conditions"] for c in proposed.values())
    assert all({e.symbol for e in Composition(c["formula"])} <= {"Cu", "Ni", "O"} for c in proposed.values())
    evaluated = [e for e in rows["evaluation"] if e["candidate_id"] in proposed]
    assert any(e["status"] == "ok" for e in evaluated), "no LCOM proposal was evaluated"
    checkpoints = sorted((out / "checkpoints").glob("*")) if (out / "checkpoints").exists() else []
    assert checkpoints, "the lcom surrogate saved no checkpoint after its fits"
