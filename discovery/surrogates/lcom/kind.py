"""The ``lcom`` surrogate's config and registry entry (imports no torch).

See `discovery.surrogates.lcom.surrogate` for what it predicts and how ``fit`` retrains it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from discovery.kinds import BuildContext, Kind
from discovery.models.lcom.kind import LCOMModelFields


class LCOMSurrogateConfig(LCOMModelFields):
    """Formation energy through CD-VAE latents with a trained LCOM ensemble (``discovery train lcom``
    or trained by the campaign: `~discovery.lifecycle.TrainedModelFields`). The ensemble's spread is
    the uncertainty, so train it with ``ensemble_size`` >= 2 (the cpu preset has 3).
    """

    kind: Literal["lcom"] = "lcom"
    property: Literal["formation_energy_per_atom"] = "formation_energy_per_atom"
    fine_tune_steps: int = Field(100, ge=0, le=100_000, description="conservative steps on the DFT labels at every fit "
                                                        "(0: predictions never change)")
    replay: int = Field(256, ge=0, le=1_000_000, description="training rows mixed into each fine-tuning")
    fine_tune_lr: float = Field(1e-3, gt=0, description="Adam rate of the fine-tuning (the paper trains at 3e-5; "
                                                        "a few steps at that rate barely move the model)")
    unencodable_std: float = Field(1.0, gt=0, description="std reported for a crystal the CD-VAE cannot encode "
                                                          "(its mean is the training mean); eV/atom")


def build(config: LCOMSurrogateConfig, context: BuildContext) -> Any:
    """The surrogate of ``config`` (loads LCOM and its CD-VAE; imports torch)."""
    from discovery.surrogates.lcom.surrogate import LCOMSurrogate

    return LCOMSurrogate(config, seed=context.seed)


KIND = Kind(role="surrogate", name="lcom", config=LCOMSurrogateConfig, factory="discovery.surrogates.lcom.kind:build",
            checkpoints=True, models=("lcom", "cdvae"),
            summary="LCOM ensemble on CD-VAE latents: formation energy, member spread; fine-tuned on DFT labels")
