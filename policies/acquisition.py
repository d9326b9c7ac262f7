"""The policy menu: single-fidelity acquisitions on the objective's utility (random, greedy, UCB, EI,
PI, Thompson sampling, probability of satisfying every bound). Their configs and registry entries
are in `discovery.policies.configs`; the multi-fidelity policy is `discovery.policies.multi_fidelity`.

Utilities are scaled signed margins (`Objective.utility`): >= 0 exactly for hits, larger is better,
so "threshold" incumbents are utility 0 ("how likely / by how much is this a hit").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from discovery.policies.base import BatchPolicy, scales_of, utility_moments
from discovery.policies.diversity import FormulaCap
from discovery.posterior import Posterior
from discovery.records import Candidate, Selection


def expected_improvement(mean: np.ndarray, std: np.ndarray, incumbent: float = 0.0,
                         xi: float = 0.0) -> np.ndarray:
    """``E[max(u - incumbent - xi, 0)]`` for ``u ~ N(mean, std^2)``.

    Closed form ``(mean - f) Phi(z) + std phi(z)`` with ``f = incumbent + xi``, ``z = (mean - f) / std``;
    ``max(mean - f, 0)`` where std is 0.

    Shapes: (n,) in, (n,) out.

    Example:
        >>> round(float(expected_improvement(np.array([0.0]), np.array([1.0]))[0]), 4)
        0.3989
    """
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    gap = mean - (incumbent + xi)
    out = np.maximum(gap, 0.0)
    pos = std > 0
    z = gap[pos] / std[pos]
    out[pos] = gap[pos] * norm.cdf(z) + std[pos] * norm.pdf(z)
    return out


def probability_of_improvement(mean: np.ndarray, std: np.ndarray, incumbent: float = 0.0,
                               xi: float = 0.0) -> np.ndarray:
    """``P(u > incumbent + xi)`` for ``u ~ N(mean, std^2)``; a step function where std is 0.

    Shapes: (n,) in, (n,) out.

    Example:
        >>> float(probability_of_improvement(np.array([0.0]), np.array([1.0]))[0])
        0.5
    """
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    gap = mean - (incumbent + xi)
    out = (gap > 0).astype(float)
    pos = std > 0
    out[pos] = norm.cdf(gap[pos] / std[pos])
    return out


class RandomPolicy(BatchPolicy):
    """Uniformly random batch: the baseline every other policy must beat. Needs no surrogate."""

    name = "random"
    needs_surrogate = False

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        return self.rng.random(posterior.size)

    def _pool_scores(self, pool, posterior, context) -> np.ndarray:
        return self.rng.random(len(pool))


class GreedyPolicy(BatchPolicy):
    """Pure exploitation: the utility of the predicted means."""

    name = "greedy"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        return self.objective.utility(posterior.mean, scales_of(context))


class UCBPolicy(BatchPolicy):
    """Optimism under uncertainty: ``mean_u + kappa * std_u`` of the utility (`utility_moments`)."""

    name = "ucb"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        mean, std = utility_moments(self.objective, posterior, scales_of(context), self.rng)
        return mean + self.config.kappa * std


class _ImprovementPolicy(BatchPolicy):
    """EI/PI: a Gaussian on the utility against an incumbent (0 = the hit boundary, or the best)."""

    def incumbent(self, context: Mapping[str, Any]) -> float:
        """Utility 0 for ``threshold``; ``context["best_utility"]`` (else 0) for ``best``."""
        if self.config.incumbent == "best" and context.get("best_utility") is not None:
            return float(context["best_utility"])
        return 0.0


class EIPolicy(_ImprovementPolicy):
    """Expected improvement of the utility over the incumbent (closed form)."""

    name = "ei"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        mean, std = utility_moments(self.objective, posterior, scales_of(context), self.rng)
        return expected_improvement(mean, std, self.incumbent(context), self.config.xi)


class PIPolicy(_ImprovementPolicy):
    """Probability that the utility beats the incumbent (closed form)."""

    name = "pi"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        mean, std = utility_moments(self.objective, posterior, scales_of(context), self.rng)
        return probability_of_improvement(mean, std, self.incumbent(context), self.config.xi)


class ConstraintPolicy(BatchPolicy):
    """Probability that every bound holds (`Objective.probability`): the acquisition for a window
    of constraints on several properties. Independent Gaussians per property; scale free."""

    name = "constraint"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        return self.objective.probability(posterior.mean, posterior.std)


class ThompsonPolicy(BatchPolicy):
    """Batch Thompson sampling: each slot draws one posterior sample (an ensemble member when there
    are members, a Gaussian draw otherwise) and takes the best not-yet-chosen candidate under that
    draw's utility.

    With ``kcenter`` or ``dpp`` diversity, ``candidates_factor * k`` slots are drawn and the method
    chooses k among them, scored by the utility each was drawn with; otherwise the slots respect
    ``max_per_formula`` (and ``min_distance``) directly. `Selection.scores` are the drawn utilities.
    """

    name = "thompson"

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        """The utility under one posterior draw."""
        return self.objective.utility(posterior.samples(1, self.rng), scales_of(context))[0]

    def select(self, pool: Sequence[Candidate], posterior: Posterior, k: int,
               context: dict[str, Any] | None = None) -> Selection:
        context = context or {}
        self._check(pool, posterior)
        n = len(pool)
        drawn = np.full(n, -np.inf)
        if not pool or k <= 0:
            return self._selection(pool, posterior, [], drawn, context)
        div = self.config.diversity
        formulas = [c.formula for c in pool]
        emb = posterior.embeddings
        method = self.diversifier.effective_method(emb)
        shortlist = method in ("kcenter", "dpp")
        n_slots = min(n, div.candidates_factor * k if shortlist else k)
        utilities = self.objective.utility(posterior.samples(n_slots, self.rng), scales_of(context))
        cap = FormulaCap(formulas, n if shortlist else div.max_per_formula)
        min_distance = div.min_distance if method == "min_distance" else 0.0
        chosen: list[int] = []
        for u in utilities:
            for i in np.argsort(-u, kind="stable"):
                i = int(i)
                if drawn[i] > -np.inf or not cap.allows(i):
                    continue
                if min_distance > 0 and chosen and \
                        np.linalg.norm(emb[chosen] - emb[i], axis=1).min() < min_distance:
                    continue
                chosen.append(i)
                cap.take(i)
                drawn[i] = u[i]
                break
            else:
                break  # nothing admissible is left
        if shortlist:
            local = self.diversifier.choose(drawn[chosen], k, [formulas[i] for i in chosen], emb[chosen])
            chosen = [chosen[j] for j in local]
        return self._selection(pool, posterior, chosen, drawn, context)
