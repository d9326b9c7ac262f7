"""LCOM trained for real on a tiny CD-VAE (seconds), then ``csp`` on NaCl: a valid 2-atom NaCl comes
back with CIFs, a table and a trajectory plot; bad input is one line and exit code 2."""

from __future__ import annotations

import shutil

import pytest
import torch
from lcom_helpers import train_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train_tiny(tmp_path_factory.mktemp("lcom-csp"))
    finally:
        torch.set_num_threads(threads)


def test_training_writes_a_model_tied_to_its_cdvae(tiny, tmp_path):
    from discovery.errors import DataError
    from discovery.models.lcom.trainer import TRAINER

    _, cdvae_dir, lcom_dir = tiny
    model = TRAINER.load(lcom_dir)
    m = model.manifest
    assert m["kind"] == "lcom" and m["config"]["conservative"] is True and len(model.members) == 2
    assert m["data"]["n_train"] + m["data"]["n_val"] == 24 and m["cdvae"]["dir"] == str(cdvae_dir.resolve())
    assert m["metrics"]["val_mae"] < 1.0 and "held-out MAE" in TRAINER.describe(model)
    # the optimiser lowers the model's own prediction from every start
    z = model.encode([model.cdvae.decode(model.unstandardise(model.train_latents[0][:1]), None,
                                         atom_types=[[11, 17]])[0]])
    _, energies = model.optimize(z, model.conditions(["NaCl"]), 5)
    assert energies[-1, 0] < energies[0, 0]
    with pytest.raises(DataError, match="missing"):
        TRAINER.load(lcom_dir, cdvae_dir=tmp_path)
    other = tmp_path / "other-cdvae"
    shutil.copytree(cdvae_dir, other)
    (other / "cdvae.json").write_text((other / "cdvae.json").read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(DataError, match="another CD-VAE"):
        TRAINER.load(lcom_dir, cdvae_dir=other)


def test_csp_on_nacl_returns_a_valid_two_atom_structure(tiny, tmp_path):
    from pymatgen.core import Structure

    from discovery.csp import run_csp
    from discovery.models.lcom.trainer import TRAINER
    from discovery.structures import structural_problem

    _, _, lcom_dir = tiny
    results = run_csp(TRAINER.load(lcom_dir), ["NaCl"], tmp_path, starts=3, steps=4, relax="chgnet", seed=1)
    r = results["formulas"]["NaCl"]
    assert r["best_start"] is not None and r["n_sound"] >= 1
    best = Structure.from_file(tmp_path / "NaCl" / "best.cif")
    assert len(best) == 2 and best.composition.reduced_formula == "NaCl" and structural_problem(best, 0.5) is None
    assert -4.5 < r["best_energy_per_atom"] < -3.0  # CHGNet: NaCl polymorphs lie near -3.6 eV/atom
    assert all(len(e["predicted_path"]) == 5 for e in r["entries"])
    for name in ("csp.csv", "csp.json", "NaCl/trajectory.png", "NaCl/start-0.cif"):
        assert (tmp_path / name).is_file(), name
    assert r["seconds_per_structure_optimise"] > 0


def test_train_command_takes_the_cdvae_folder(tiny, tmp_path):
    from lcom_helpers import TINY_LCOM

    from discovery.cli import main
    from discovery.models.lcom.trainer import TRAINER

    data_csv, cdvae_dir, _ = tiny
    sets = [x for key, value in {**TINY_LCOM, "epochs": 2, "ensemble_size": 1}.items()
            for x in ("--set", f"{key}={value}")]
    out = tmp_path / "lcom"
    assert main(["train", "lcom", "--data", str(data_csv), "--cdvae", str(cdvae_dir), "--out", str(out),
                 "--no-tracking", *sets]) == 0
    assert TRAINER.load(out).manifest["cdvae"]["dir"] == str(cdvae_dir.resolve())


@pytest.mark.parametrize("args, expected", [
    (["Xx2O"], "unknown element 'Xx'"),
    (["Na3Cl3"], "6 atoms per cell; the CD-VAE makes 1..4"),
    (["NaCl", "--lcom", "MISSING"], "no such model folder"),
    (["NaCl", "--starts", "0"], "--starts 0: expected 1 to 1000"),
    (["NaCl", "Na1Cl1"], "Na1Cl1: the same cell as NaCl"),
])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys, args, expected):
    from discovery.cli import main

    _, _, lcom_dir = tiny
    argv = [a.replace("MISSING", str(tmp_path / "nothing")) for a in args]
    if "--lcom" not in argv:
        argv += ["--lcom", str(lcom_dir)]
    code = main(["csp", *argv, "--out", str(tmp_path / "out"), "--no-tracking", "--relax", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_campaign_refuses_an_lcom_model_whose_cdvae_is_gone(tiny, tmp_path, capsys):
    import json

    import yaml

    from discovery.cli import main

    _, _, lcom_dir = tiny
    moved = tmp_path / "lcom"
    shutil.copytree(lcom_dir, moved)
    manifest = json.loads((moved / "lcom.json").read_text())
    manifest["cdvae"].update(dir=str(tmp_path / "gone"), relative="../gone")
    (moved / "lcom.json").write_text(json.dumps(manifest))
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump({"name": "lcom-check", "chemistry": {"elements": ["Na", "Cl"]},
                                        "generators": [{"kind": "lcom", "checkpoint_dir": "lcom"}]}))
    assert main(["validate", str(campaign)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generators.0.checkpoint_dir" in err[0] and "CD-VAE folder" in err[0], err
