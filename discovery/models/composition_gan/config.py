"""Training configurations of the composition CondGAN and CondVAE, with their presets (no torch here).

**CondGAN faithful** (MODELS.md 3.2, the authors' ``src/macro.py`` and ``src/main.py``): noise 10-d
U(-1, 1) plus the scaled target; generator Dense 30 -> 60 -> D (sigmoid), discriminator Dense 60 ->
30 with a critic head and a property-regressor head (ReLU); WGAN-GP lambda 10; n_critic 5; Adam lr
1e-4, betas (0.0, 0.9); batch 256; 50,000 epochs of ``floor(n / 256)`` iterations.

**CondGAN cpu** (at most 20 minutes on 2 cores): everything the same except the number of epochs
(MODELS.md 3.5: 200-500; here 200 epochs of 174 iterations on the 44,590-row table, 34,800
generator and 174,000 critic updates). Measured: 0.030 s per iteration with one torch thread on the
shared 2-core machine, 5.2 s per epoch, so 300 epochs would take 26 minutes and 200 take 17.

**CondVAE cpu**: 300 epochs (52,000 updates; 0.0034 s per update, 3 minutes alone, 12 under the
load of other jobs). Measured: the loss is flat after about 150 epochs (32.92 at epoch 151, 32.86
at 171) with a KL term of only 0.6 nats, i.e. the posterior has nearly collapsed, consistent with
the paper's remark that the CondVAE variants collapse to few compositions.

**CondVAE** (the paper's comparator; its architecture is not in the authors' repository and is
*unverified*): a mirror of the GAN's sizes, chosen here: encoder [x, y] -> 60 -> 30 (ReLU) -> mu,
logvar (latent 10); decoder [z, y] -> 30 -> 60 -> D (sigmoid); loss binary cross entropy
(summed over features) + KL; Adam lr 1e-4, betas (0.9, 0.999), batch 256; faithful 50,000 epochs
(the GAN's).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from discovery.configbase import Strict, with_preset

COMPOSITION_GAN_PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {"epochs": 50_000},
    "cpu": {"epochs": 200},
}
COMPOSITION_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {"epochs": 50_000},
    "cpu": {"epochs": 300},
}


class _Preset(Strict):
    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return with_preset(data, cls._table())

    @classmethod
    def _table(cls) -> dict[str, dict[str, Any]]:
        raise NotImplementedError


class CompositionGANConfig(_Preset):
    """The CondGAN (see the module docstring); keys left out come from ``preset``."""

    preset: Literal["cpu", "faithful"] = "cpu"
    noise_dim: int = Field(10, ge=1)
    hidden: tuple[int, int] = Field((30, 60), description="generator widths; the discriminator uses them reversed")
    gp_lambda: float = Field(10.0, ge=0)
    property_weight: float = Field(1.0, ge=0, description="weight of the property-regression losses (lambda_2, 3)")
    n_critic: int = Field(5, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.0, 0.9)
    batch_size: int = Field(256, ge=2)
    epochs: int = Field(..., ge=1)
    descriptors: bool = Field(True, description="append the 58 weighted element descriptors (x^bp; else x^b)")

    @classmethod
    def _table(cls) -> dict[str, dict[str, Any]]:
        return COMPOSITION_GAN_PRESETS


class CompositionVAEConfig(_Preset):
    """The CondVAE comparator (see the module docstring); keys left out come from ``preset``."""

    preset: Literal["cpu", "faithful"] = "cpu"
    latent_dim: int = Field(10, ge=1)
    hidden: tuple[int, int] = Field((30, 60), description="decoder widths; the encoder uses them reversed")
    beta: float = Field(1.0, ge=0, description="weight of the KL term")
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(256, ge=2)
    epochs: int = Field(..., ge=1)
    descriptors: bool = True

    @classmethod
    def _table(cls) -> dict[str, dict[str, Any]]:
        return COMPOSITION_VAE_PRESETS
