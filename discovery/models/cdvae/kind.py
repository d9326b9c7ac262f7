"""CD-VAE's registry entry as a trainable model family (``discovery train cdvae``); imports no torch."""

from discovery.kinds import Kind
from discovery.models.cdvae.presets import CDVAEConfig

MODEL_KIND = Kind(role="model", name="cdvae", config=CDVAEConfig, factory="discovery.models.cdvae.trainer:TRAINER",
                  summary="CD-VAE: DimeNet++ encoder, denoising score decoder, annealed Langevin (Xie et al. 2022)")
