"""A tiny CD-VAE + LCOM pair for tests: the miniature CD-VAE of `cdvae_helpers` (prototype binaries,
rock salt lowest) and LCOM trained on its latents through the lcom trainer."""

from __future__ import annotations

from pathlib import Path

from cdvae_helpers import FORMULAS, TINY_CDVAE, tiny_csv

from discovery.lifecycle import training_config

#: LCOM in miniature: 20 epochs on the 24 latents, 5 adversarial steps, an ensemble of two.
TINY_LCOM = {"hidden": 32, "epochs": 20, "batch_size": 8, "lr": 1e-3, "adversarial_steps": 5,
             "ensemble_size": 2, "opt_steps": 5, "val_fraction": 0.2}


def train_tiny(root: Path, lcom_overrides: dict | None = None, formulas: tuple[str, ...] = FORMULAS,
               lcom: bool = True) -> tuple[Path, Path, Path]:
    """Train the tiny CD-VAE (and LCOM, unless ``lcom`` is False) on ``formulas`` under ``root``;
    returns (csv, cdvae folder, lcom folder)."""
    from discovery.models.cdvae.presets import CDVAEConfig
    from discovery.models.cdvae.trainer import TRAINER as CDVAE
    from discovery.models.lcom.presets import LCOMConfig
    from discovery.models.lcom.trainer import TRAINER as LCOM

    root.mkdir(parents=True, exist_ok=True)
    data_csv = tiny_csv(root / "tiny.csv", formulas)
    cdvae_dir, lcom_dir = root / "cdvae", root / "lcom"
    config = training_config(CDVAEConfig, "cpu", TINY_CDVAE, "test")
    CDVAE.train(CDVAE.read_data(data_csv, config), config, cdvae_dir, tracker=None, progress=None, seed=0,
                device="cpu")
    if not lcom:
        return data_csv, cdvae_dir, lcom_dir
    lconfig = training_config(LCOMConfig, "cpu", {**TINY_LCOM, **(lcom_overrides or {}), "cdvae_dir": str(cdvae_dir)},
                              "test")
    LCOM.train(LCOM.read_data(data_csv, lconfig), lconfig, lcom_dir, tracker=None, progress=None, seed=0,
               device="cpu")
    return data_csv, cdvae_dir, lcom_dir
