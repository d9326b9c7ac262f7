"""Cost-aware multi-fidelity selection: screen with a cheap oracle, fuse it with the surrogate, pick.

A cheap oracle (an MLIP energy, a low-accuracy DFT setting) is ~100 times cheaper than the expensive
one. Per batch of k, the policy spends ``screen_factor * k`` cheap calls on the candidates with the
best UCB under the surrogate, treats each cheap value as a noisy measurement of the expensive
property, fuses it with the surrogate's Gaussian by precision weighting, and picks the k best by UCB
on the fused beliefs.

The cheap oracle's error is learned from pairs (cheap value, expensive label) of candidates that
went through both: with at least `MIN_PAIRS` pairs, its bias is the mean of ``cheap - expensive``
(subtracted before fusing) and its noise std the RMS of what remains; with fewer, the bias is 0 and
the noise std is the configured prior ``cheap_noise_std``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from discovery.policies.base import BatchPolicy, scales_of, utility_moments
from discovery.posterior import Posterior
from discovery.records import Candidate, Selection

log = logging.getLogger(__name__)

MIN_PAIRS = 5


def cheap_error(pairs: tuple[np.ndarray, np.ndarray] | None, prior_std: float) -> tuple[float, float]:
    """Bias and noise std of a cheap oracle from its (cheap, expensive) pairs.

    Args:
        pairs: (cheap values, expensive labels) of the same candidates, or None; non-finite pairs
            are ignored.
        prior_std: noise std to assume with fewer than `MIN_PAIRS` pairs.

    Returns:
        ``(bias, std)``: ``mean(cheap - expensive)`` and the RMS of ``cheap - expensive - bias``
        with enough pairs, else ``(0, prior_std)``. Units: those of the property.
    """
    if pairs is None:
        return 0.0, prior_std
    cheap, expensive = (np.asarray(a, dtype=float).ravel() for a in pairs)
    if cheap.shape != expensive.shape:
        raise ValueError(f"cheap_pairs: {cheap.shape[0]} cheap values for {expensive.shape[0]} labels")
    diff = (cheap - expensive)[np.isfinite(cheap) & np.isfinite(expensive)]
    if len(diff) < MIN_PAIRS:
        return 0.0, prior_std
    bias = float(diff.mean())
    return bias, float(np.sqrt(np.mean((diff - bias) ** 2)))


def fuse_gaussian(mean: np.ndarray, std: np.ndarray, cheap: np.ndarray, cheap_std: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Precision-weighted fusion of the surrogate's Gaussian with a cheap measurement.

    ``mean' = mean + w (cheap - mean)``, ``var' = (1 - w) var`` with ``w = var / (var + cheap_std^2)``;
    exact measurements (cheap_std 0) replace the mean, NaN measurements leave it unchanged.

    Shapes: (n,) arrays in, two (n,) arrays out.
    """
    mean = np.asarray(mean, dtype=float)
    var = np.asarray(std, dtype=float) ** 2
    cheap = np.asarray(cheap, dtype=float)
    total = var + cheap_std**2
    weight = np.divide(var, total, out=np.ones_like(var), where=total > 0)
    weight = np.where(np.isfinite(cheap), weight, 0.0)
    fused = mean + weight * (np.where(np.isfinite(cheap), cheap, mean) - mean)
    return fused, np.sqrt((1.0 - weight) * var)


class MultiFidelityPolicy(BatchPolicy):
    """UCB on the surrogate fused with cheap-oracle estimates of the best screened candidates.

    Context keys: ``"cheap_oracle"`` (callable(list[int] pool indices) -> property -> array, NaN
    where it failed) and ``"cheap_pairs"`` (property -> (cheap values, expensive labels)). Without a
    cheap oracle it selects by UCB on the surrogate and logs that it did.
    """

    name = "multi_fidelity"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        """UCB of the utility (the screening score)."""
        mean, std = utility_moments(self.objective, posterior, scales_of(context), self.rng)
        return mean + self.config.kappa * std

    def select(self, pool: Sequence[Candidate], posterior: Posterior, k: int,
               context: dict[str, Any] | None = None) -> Selection:
        context = context or {}
        self._check(pool, posterior)
        n = len(pool)
        if not pool or k <= 0:
            return self._selection(pool, posterior, [], np.zeros(n), context)
        formulas = [c.formula for c in pool]
        ucb = self.scores(posterior, context)
        oracle = context.get("cheap_oracle")
        if oracle is None:
            log.info("multi_fidelity: no cheap oracle in the context; "
                     "selecting by UCB on the surrogate alone")
            chosen = self.diversifier.choose(ucb, k, formulas, posterior.embeddings)
            return self._selection(pool, posterior, chosen, ucb, context)

        screened = np.argsort(-ucb, kind="stable")[: min(n, self.config.screen_factor * k)]
        cheap = oracle([int(i) for i in screened])
        fused = self.fuse(posterior.subset(screened), cheap, context.get("cheap_pairs") or {})
        fused_scores = self.scores(fused, context)
        local = self.diversifier.choose(fused_scores, k, [formulas[i] for i in screened], fused.embeddings)
        scores = np.full(n, -np.inf)
        scores[screened] = fused_scores
        return self._selection(pool, posterior, [int(screened[j]) for j in local], scores, context,
                               cheap_evaluations=len(screened))

    def fuse(self, posterior: Posterior, cheap: Mapping[str, np.ndarray],
             pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Posterior:
        """The posterior after fusing cheap estimates of the properties the cheap oracle returned.

        Members of a fused property are dropped: they describe the surrogate alone.
        """
        mean, std, members = dict(posterior.mean), dict(posterior.std), dict(posterior.members)
        for prop, values in cheap.items():
            if prop not in mean:
                continue
            values = np.asarray(values, dtype=float)
            if values.shape != mean[prop].shape:
                raise ValueError(f"cheap oracle returned {values.shape} values of {prop!r} "
                                 f"for {mean[prop].shape[0]} candidates")
            bias, noise = cheap_error(pairs.get(prop), self.config.cheap_noise_std)
            mean[prop], std[prop] = fuse_gaussian(mean[prop], std[prop], values - bias, noise)
            members.pop(prop, None)
            log.debug("multi_fidelity: fused %d cheap estimates of %s (bias %.4g, noise std %.4g)",
                     int(np.isfinite(values).sum()), prop, bias, noise)
        return Posterior(mean=mean, std=std, members=members, embeddings=posterior.embeddings,
                         model=f"{posterior.model}+cheap")

    def cost(self, selection: Selection) -> float:
        """What a selection costs in expensive calls: its batch plus its cheap calls at ``cheap_cost``."""
        return len(selection.candidate_ids) + self.config.cheap_cost * selection.cheap_evaluations
