"""The ``lcom`` generator's config and registry entry (imports no torch).

See `discovery.generators.lcom.generator` for how it proposes and how DFT labels retrain it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND
from discovery.kinds import BuildContext, Kind
from discovery.models.lcom.kind import LCOMModelFields


class LCOMGeneratorConfig(LCOMModelFields):
    """LCOM latent optimisation in a campaign. The model is trained with ``discovery train lcom``
    (its training config names the CD-VAE folder, ``cdvae_dir``) or by the campaign
    (`~discovery.lifecycle.TrainedModelFields`: ``checkpoint_dir``, ``preset``, ``train_data``,
    ``train`` -- e.g. ``{cdvae_dir: /abs/path/cdvae, ensemble_size: 3}`` --, ``train_seed``, ``device``).

    Langevin settings left None take the CD-VAE preset's values.
    """

    kind: Literal["lcom"] = "lcom"
    n_per_round: int = Field(20, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    steps: int | None = Field(None, ge=0, le=10_000, description="latent gradient steps (None: the model's opt_steps)")
    latent_noise: float = Field(0.3, ge=0, description="std of the start around a base's standardised latent")
    n_bases: int = Field(16, ge=1, le=10_000, description="bases sampled from: the best hits / labels / seeds / training rows")
    fine_tune_steps: int = Field(50, ge=0, le=100_000, description="conservative steps on the DFT labels after each update "
                                                       "with new labels (0: never retrain)")
    replay: int = Field(256, ge=0, le=1_000_000, description="training rows mixed into each fine-tuning")
    fine_tune_lr: float = Field(1e-3, gt=0, description="Adam rate of the fine-tuning (the paper trains at 3e-5; "
                                                        "a few steps at that rate barely move the model)")
    n_step_each: int | None = Field(None, ge=1, description="Langevin steps per noise level")
    step_lr: float | None = Field(None, gt=0, description="Langevin step size at the smallest sigma")
    min_sigma: float | None = Field(None, ge=0, description="skip noise levels below this")
    sample_batch_size: int | None = Field(None, ge=1, description="crystals decoded together")

    def langevin_overrides(self) -> dict[str, Any]:
        """The CD-VAE Langevin settings this config overrides."""
        pairs = {"n_step_each": self.n_step_each, "step_lr": self.step_lr, "min_sigma": self.min_sigma,
                 "batch_size": self.sample_batch_size}
        return {k: v for k, v in pairs.items() if v is not None}


def build(config: LCOMGeneratorConfig, context: BuildContext) -> Any:
    """The generator of ``config`` (loads LCOM and its CD-VAE; imports torch)."""
    from discovery.generators.lcom.generator import LCOMGenerator

    return LCOMGenerator(config, context.elements, context.max_atoms, context.seed)


GENERATOR_KIND = Kind(role="generator", name="lcom", config=LCOMGeneratorConfig,
                      factory="discovery.generators.lcom.kind:build",
                      summary="LCOM: descends a conservative energy model in CD-VAE latent space from the best DFT "
                              "structures and seeds, decodes with their composition",
                      models=("lcom", "cdvae"), takes_composition=True)
