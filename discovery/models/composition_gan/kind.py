"""The ``model`` kinds of the composition CondGAN and CondVAE (light: imports only the configs)."""

from __future__ import annotations

from discovery.kinds import Kind
from discovery.models.composition_gan.config import CompositionGANConfig, CompositionVAEConfig

GAN_MODEL_KIND = Kind(role="model", name="composition_gan", config=CompositionGANConfig,
                      factory="discovery.models.composition_gan.trainer:COMPOSITION_GAN_TRAINER",
                      summary="composition CondGAN with a property head (Sawada et al. 2019), WGAN-GP")
VAE_MODEL_KIND = Kind(role="model", name="composition_vae", config=CompositionVAEConfig,
                      factory="discovery.models.composition_gan.trainer:COMPOSITION_VAE_TRAINER",
                      summary="conditional VAE on compositions (the CondGAN paper's comparator; sizes mirror the GAN)")
MODEL_KINDS = (GAN_MODEL_KIND, VAE_MODEL_KIND)
