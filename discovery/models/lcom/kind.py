"""LCOM's registry entry as a trainable model family (``discovery train lcom``), and the config fields
every component that loads an LCOM model shares; imports no torch."""

from typing import Any, ClassVar

from discovery.kinds import Kind
from discovery.lifecycle import TrainedModelFields
from discovery.models.lcom.presets import LCOMConfig

MODEL_KIND = Kind(role="model", name="lcom", config=LCOMConfig, factory="discovery.models.lcom.trainer:TRAINER",
                  summary="LCOM: conservative (COMs) formation-energy model on CD-VAE latents (Qi, Geng et al.)",
                  models=("cdvae",))


class LCOMModelFields(TrainedModelFields):
    """`TrainedModelFields` of an LCOM model: its CD-VAE is checked before a campaign starts."""

    model_name: ClassVar[str] = "lcom"
    training_model: ClassVar[type] = LCOMConfig

    def check_built_on(self, manifest: dict[str, Any]) -> None:
        from discovery.models.lcom.trainer import cdvae_folder

        cdvae_folder(self.checkpoint_dir, manifest.get("cdvae"))
