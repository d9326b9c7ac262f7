"""LCOM's registry entry as a trainable model family (``discovery train lcom``); imports no torch."""

from discovery.kinds import Kind
from discovery.models.lcom.presets import LCOMConfig

MODEL_KIND = Kind(role="model", name="lcom", config=LCOMConfig, factory="discovery.models.lcom.trainer:TRAINER",
                  summary="LCOM: conservative (COMs) formation-energy model on CD-VAE latents (Qi, Geng et al.)",
                  models=("cdvae",))
