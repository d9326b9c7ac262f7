"""The ``model`` kind of the crystal GAN (light: imports only the config)."""

from __future__ import annotations

from discovery.kinds import Kind
from discovery.models.crystal_gan.config import CrystalGANConfig

MODEL_KIND = Kind(role="model", name="crystal_gan", config=CrystalGANConfig,
                  factory="discovery.models.crystal_gan.trainer:TRAINER",
                  summary="composition-conditioned crystal GAN (Kim et al. 2020) on 30 x 3 matrices of A-B-X cells")
