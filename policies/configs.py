"""Config models of the acquisition policies and the generator bandit, and their registry entries.

Every policy takes ``diversity`` (`DiversityConfig`, applied after scoring); ``policy: {kappa: 2}``
without a kind means UCB (the campaign and benchmark schemas default the kind). The classes live in
`discovery.policies.acquisition` and `discovery.policies.multi_fidelity`; this module imports
nothing heavy, so the registry can read it when a campaign file is validated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from discovery.configbase import Strict
from discovery.kinds import Kind

class DiversityConfig(Strict):
    """How a batch is spread out once candidates are scored (applied by every policy).

    ``method`` picks the rule among the top ``candidates_factor * k`` candidates by score:
    ``kcenter`` (greedy k-center in the embedding, starting from the best score), ``dpp`` (greedy MAP
    of a determinantal point process, quality = exp(standardised score), RBF similarity),
    ``min_distance`` (walk by score, skip those closer than ``min_distance`` to a chosen one) or
    ``none`` (score order). ``max_per_formula`` holds in every method. Embeddings are the
    surrogate's (`Posterior.embeddings`); without them every method falls back to score order.
    """

    method: Literal["none", "kcenter", "dpp", "min_distance"] = "none"
    candidates_factor: int = Field(5, ge=1, description="diversify among the top factor * k by score")
    min_distance: float = Field(0.0, ge=0, description="in embedding units (method min_distance)")
    dpp_bandwidth: float | None = Field(
        None, gt=0, description="RBF length scale in embedding units; default: median pairwise distance")
    max_per_formula: int = Field(1, ge=1)

    @property
    def needs_embeddings(self) -> bool:
        return self.method in ("kcenter", "dpp", "min_distance")


class RandomPolicyConfig(Strict):
    """Uniformly random batch (the baseline; needs no surrogate)."""

    kind: Literal["random"] = "random"
    diversity: DiversityConfig = DiversityConfig()


class GreedyPolicyConfig(Strict):
    """Highest utility of the predicted means."""

    kind: Literal["greedy"] = "greedy"
    diversity: DiversityConfig = DiversityConfig()


class UCBPolicyConfig(Strict):
    """Upper confidence bound on the utility: mean + kappa * std."""

    kind: Literal["ucb"] = "ucb"
    kappa: float = Field(1.0, ge=0, description="exploration weight on the utility's std")
    diversity: DiversityConfig = DiversityConfig()


class EIPolicyConfig(Strict):
    """Expected improvement of the utility over an incumbent (Gaussian closed form)."""

    kind: Literal["ei"] = "ei"
    incumbent: Literal["threshold", "best"] = Field(
        "threshold", description="threshold: utility 0 (the hit boundary); best: best labelled utility")
    xi: float = Field(0.0, ge=0, description="required margin over the incumbent, in utility units")
    diversity: DiversityConfig = DiversityConfig()


class PIPolicyConfig(Strict):
    """Probability that the utility beats an incumbent (Gaussian closed form)."""

    kind: Literal["pi"] = "pi"
    incumbent: Literal["threshold", "best"] = "threshold"
    xi: float = Field(0.0, ge=0)
    diversity: DiversityConfig = DiversityConfig()


class ThompsonPolicyConfig(Strict):
    """Batch Thompson sampling: one posterior draw per batch slot."""

    kind: Literal["thompson"] = "thompson"
    diversity: DiversityConfig = DiversityConfig()


class ConstraintPolicyConfig(Strict):
    """Probability that every bound of the objective holds (window constraints on several properties)."""

    kind: Literal["constraint"] = "constraint"
    diversity: DiversityConfig = DiversityConfig()


class MultiFidelityPolicyConfig(Strict):
    """Cost-aware selection: screen with a cheap oracle, fuse with the surrogate, then UCB."""

    kind: Literal["multi_fidelity"] = "multi_fidelity"
    screen_factor: int = Field(5, ge=1, description="cheap calls per batch slot")
    kappa: float = Field(1.0, ge=0)
    cheap_noise_std: float = Field(
        0.1, ge=0, description="prior std of cheap - expensive, in property units, until 5 pairs are seen")
    cheap_cost: float = Field(0.01, ge=0, description="cost of one cheap call per expensive call (reporting)")
    diversity: DiversityConfig = DiversityConfig()


class GeneratorBanditConfig(Strict):
    """Sharing a proposal budget among generator arms ("generator|condition") by their DFT hit rate."""

    kind: Literal["thompson", "ucb1"] = "thompson"
    min_share: float = Field(0.05, ge=0, lt=1, description="budget share every arm gets, so none starves")
    prior_hits: float = Field(1.0, gt=0, description="Beta prior pseudo-count of hits")
    prior_misses: float = Field(1.0, gt=0, description="Beta prior pseudo-count of misses")
    exploration: float = Field(1.0, ge=0, description="UCB1 bonus weight")


def _policy(config: type, cls: str, summary: str) -> Kind:
    name = config.model_fields["kind"].default
    return Kind(role="policy", name=name, config=config, summary=summary,
                factory=f"discovery.policies.{cls}.build")


KINDS = [
    _policy(RandomPolicyConfig, "acquisition:RandomPolicy", "uniform draw (the baseline)"),
    _policy(GreedyPolicyConfig, "acquisition:GreedyPolicy", "mean utility"),
    _policy(UCBPolicyConfig, "acquisition:UCBPolicy", "mean + kappa x std of the utility"),
    _policy(EIPolicyConfig, "acquisition:EIPolicy", "expected improvement over an incumbent"),
    _policy(PIPolicyConfig, "acquisition:PIPolicy", "probability of improvement over an incumbent"),
    _policy(ThompsonPolicyConfig, "acquisition:ThompsonPolicy", "one posterior draw per batch slot"),
    _policy(ConstraintPolicyConfig, "acquisition:ConstraintPolicy", "probability that every bound holds"),
    _policy(MultiFidelityPolicyConfig, "multi_fidelity:MultiFidelityPolicy",
            "cheap-fidelity screen, precision-weighted fusion, then UCB"),
]
