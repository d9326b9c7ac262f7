"""Small trained models of every model family, for tests that need a model folder (the contract
tests, campaign tests): trained once per session by `conftest.trained_model`."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def train_crystal_gan(folder: Path) -> Path:
    """Five epochs of the cpu preset's networks on synthetic Mg-Mn-O cells (a few seconds): enough to
    spread the generated sites, so some decoded cells are valid."""
    from crystal_gan_helpers import BLOCKS, spinel_like

    from discovery.models.crystal_gan.config import CrystalGANConfig
    from discovery.models.crystal_gan.representation import encode
    from discovery.models.crystal_gan.trainer import TRAINER

    rng = np.random.default_rng(7)
    path = folder / "cells.npy"
    counts = [(2, 4, 8), (1, 2, 4), (2, 2, 6), (1, 1, 3), (1, 2, 3), (2, 1, 4)]
    np.save(path, np.array([encode(spinel_like(rng, c), BLOCKS) for c in counts for _ in range(4)]))
    config = CrystalGANConfig(preset="cpu", epochs=5, samples_per_composition=50, holdout=())
    TRAINER.train(TRAINER.read_data(path, config), config, folder / "model", seed=0)
    return folder / "model"


def train_composition_model(name: str, folder: Path) -> Path:
    """Three epochs on a synthetic table of 24 common compositions."""
    from composition_gan_helpers import synthetic_table

    from discovery import registry

    trainer = registry.trainer(name)
    config = trainer.config_model(preset="cpu", epochs=3, batch_size=8)
    trainer.train(trainer.read_data(synthetic_table(folder), config), config, folder / "model", seed=0)
    return folder / "model"


def train_cdvae(folder: Path) -> Path:
    """A miniature CD-VAE (`cdvae_helpers.TINY_CDVAE`) on 24 prototype binaries: seconds."""
    from cdvae_helpers import train_tiny_cdvae

    return train_tiny_cdvae(folder)


def train_lcom(folder: Path) -> Path:
    """The miniature CD-VAE and an LCOM ensemble of two on its latents (`lcom_helpers.train_tiny`)."""
    from lcom_helpers import train_tiny

    return train_tiny(folder)[2]


TRAINERS = {
    "lcom": train_lcom,
    "cdvae": train_cdvae,
    "crystal_gan": train_crystal_gan,
    "composition_gan": lambda folder: train_composition_model("composition_gan", folder),
    "composition_vae": lambda folder: train_composition_model("composition_vae", folder),
}
