"""The ``cdvae`` generator's config and registry entry (imports no torch).

See `discovery.generators.cdvae.generator` for what the modes do and how feedback re-targets them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND
from discovery.kinds import BuildContext, Kind
from discovery.lifecycle import TrainedModelFields
from discovery.models.cdvae.presets import CDVAEConfig


class CDVAEGeneratorConfig(TrainedModelFields):
    """CD-VAE sampling in a campaign. The model is trained with ``discovery train cdvae`` or by the
    campaign (`~discovery.lifecycle.TrainedModelFields`: ``checkpoint_dir``, ``preset``,
    ``train_data``, ``train`` -- any key of `CDVAEConfig`, e.g. ``{dataset: perov_5, epochs: 50}``
    --, ``train_seed``, ``device``).

    Langevin settings left None take the trained preset's values.
    """

    model_name: ClassVar[str] = "cdvae"
    training_model: ClassVar[type] = CDVAEConfig

    kind: Literal["cdvae"] = "cdvae"
    n_per_round: int = Field(20, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    mode: Literal["random", "targeted", "optimize"] = Field(
        "targeted", description="random: z ~ N(0, I); targeted: z ~ N(mu_base, latent_scale^2); optimize: "
                                "gradient descent on z through the property head from the bases")
    latent_scale: float = Field(0.5, gt=0, description="std of targeted samples (and optimisation starts) "
                                                       "around a base's latent mean")
    opt_steps: int = Field(200, ge=1, description="Adam steps on z in optimize mode (CD-VAE's opt: 5000)")
    opt_lr: float = Field(1e-3, gt=0, description="Adam rate on z in optimize mode (CD-VAE: 1e-3)")
    restrict_species: bool = Field(True, description="decode only the campaign's elements (masks type logits)")
    n_step_each: int | None = Field(None, ge=1, description="Langevin steps per noise level")
    step_lr: float | None = Field(None, gt=0, description="Langevin step size at the smallest sigma")
    min_sigma: float | None = Field(None, ge=0, description="skip noise levels below this")
    sample_batch_size: int | None = Field(None, ge=1, description="crystals sampled together")

    def langevin_overrides(self) -> dict[str, Any]:
        """The Langevin settings this config overrides (`~discovery.models.cdvae.presets.LangevinConfig` keys)."""
        pairs = {"n_step_each": self.n_step_each, "step_lr": self.step_lr, "min_sigma": self.min_sigma,
                 "batch_size": self.sample_batch_size}
        return {k: v for k, v in pairs.items() if v is not None}


def build(config: CDVAEGeneratorConfig, context: BuildContext) -> Any:
    """The generator of ``config`` (loads the model; imports torch)."""
    from discovery.generators.cdvae.generator import CDVAEGenerator

    return CDVAEGenerator(config, context.elements, context.max_atoms)


GENERATOR_KIND = Kind(role="generator", name="cdvae", config=CDVAEGeneratorConfig,
                      factory="discovery.generators.cdvae.kind:build",
                      summary="samples a trained CD-VAE: random, around hits, or optimised through its property head",
                      models=("cdvae",), takes_composition=True)
