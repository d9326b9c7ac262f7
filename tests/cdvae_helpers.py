"""A miniature CD-VAE for tests that need a trained one: a CDVAE CSV of prototype binaries (2-4
atoms) with made-up formation energies (rock salt lowest), trained for seconds through the cdvae
trainer with tiny sizes and a short sampler."""

from __future__ import annotations

import csv
from pathlib import Path

from discovery.lifecycle import training_config

#: Compositions x prototypes of the tiny set (24 structures).
FORMULAS = ("NaCl", "KCl", "RbCl", "KBr", "LiF", "MgO")
PROTOTYPES = {"rocksalt": -2.0, "cscl": -1.8, "zincblende": -1.7, "wurtzite": -1.72}

#: CD-VAE in miniature: 40 epochs of 24 crystals, a short sampler (2 steps per level, sigma >= 0.05).
TINY_CDVAE = {
    "epochs": 40, "batch_size": 8, "val_every": 5, "teacher_forcing_max_epoch": 20, "val_fraction": 0.2,
    "latent_dim": 16, "hidden_dim": 32,
    "encoder": {"hidden": 16, "num_blocks": 1, "int_emb": 8, "basis_emb": 4, "out_emb": 16},
    "decoder": {"hidden": 16, "num_blocks": 1, "num_radial": 16},
    "langevin": {"n_step_each": 2, "min_sigma": 0.05, "batch_size": 16},
}


def tiny_csv(path: Path, formulas: tuple[str, ...] = FORMULAS) -> Path:
    """Write the tiny CDVAE CSV (material_id, formula, cif, formation_energy_per_atom) of ``formulas``
    in each of `PROTOTYPES`."""
    from pymatgen.io.cif import CifWriter

    from discovery.data.references import build_reference_phase

    rows = []
    for k, formula in enumerate(formulas):
        for proto, energy in PROTOTYPES.items():
            s = build_reference_phase(formula, proto)
            rows.append({"material_id": f"{formula}-{proto}", "formula": formula, "cif": str(CifWriter(s)),
                         "formation_energy_per_atom": f"{energy - 0.1 * k:.4f}"})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def train_tiny_cdvae(root: Path) -> Path:
    """Train the miniature CD-VAE under ``root``; its model folder."""
    from discovery.models.cdvae.presets import CDVAEConfig
    from discovery.models.cdvae.trainer import TRAINER

    root.mkdir(parents=True, exist_ok=True)
    data_csv = tiny_csv(root / "tiny.csv")
    config = training_config(CDVAEConfig, "cpu", TINY_CDVAE, "test")
    TRAINER.train(TRAINER.read_data(data_csv, config), config, root / "model", tracker=None, progress=None, seed=0,
                  device="cpu")
    return root / "model"
