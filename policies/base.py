"""Shared machinery of batch policies: score the pool, spread the batch out, record the choice.

A policy never looks at raw properties. It scores the objective's *utility* (`Objective.utility`:
>= 0 exactly for hits, larger is better) under the surrogate's `Posterior`, then hands the scores to
the shared diversity step (`BatchDiversifier`). The ``context`` of `BatchPolicy.select` may carry:

- ``"round"`` (int): the campaign round, copied into the `Selection`.
- ``"scales"`` (property -> float): typical spread of each property, for `Objective.utility`.
- ``"best_utility"`` (float): best utility among the labelled candidates so far (EI/PI incumbent).
- ``"cheap_oracle"`` (callable(list[int]) -> property -> (len,) array): cheap estimates for pool
  indices, NaN where the cheap calculation failed (multi-fidelity).
- ``"cheap_pairs"`` (property -> (cheap values, expensive labels)): pairs seen so far, to estimate
  the cheap oracle's error (multi-fidelity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from discovery.objective import Objective
from discovery.policies.diversity import BatchDiversifier
from discovery.posterior import Posterior
from discovery.records import Candidate, Evaluation, Selection

N_UTILITY_DRAWS = 64


def scales_of(context: Mapping[str, Any]) -> dict[str, float]:
    """The property scales of a selection context (empty: every scale is 1)."""
    return dict(context.get("scales") or {})


def _scale(scales: Mapping[str, float], prop: str) -> float:
    return float(scales.get(prop, 1.0)) or 1.0  # the same rule as Objective.utility


def utility_moments(objective: Objective, posterior: Posterior, scales: Mapping[str, float],
                    rng: np.random.Generator, n_draws: int = N_UTILITY_DRAWS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the utility of every pool candidate under the posterior.

    - One property with a one-sided bound: the utility is linear in the property, so its moments
      are exact: ``u = margin(mean) / scale``, ``std_u = std / scale``.
    - One property with a window and no ensemble members: the plug-in ``u(mean)``, ``std / scale``.
    - One property with a window and members: the moments of every member's utility (exact for
      the ensemble, no sampling noise).
    - Several properties: moments over ``posterior.samples(n_draws, rng)`` (members when there
      are any, Gaussian draws otherwise).

    Shapes: two (n,) arrays.
    """
    props = objective.properties
    if len(props) == 1:
        prop = props[0]
        linear = len(objective.bounds) == 1 and (objective.bounds[0].min is None
                                                 or objective.bounds[0].max is None)
        members = posterior.members.get(prop)
        if linear or members is None or not len(members):
            mean = objective.utility({prop: posterior.mean[prop]}, scales)
            return mean, np.asarray(posterior.std[prop], dtype=float) / _scale(scales, prop)
        u = objective.utility({prop: members}, scales)
        return u.mean(axis=0), u.std(axis=0)
    u = objective.utility(posterior.samples(n_draws, rng), scales)
    return u.mean(axis=0), u.std(axis=0)


class BatchPolicy:
    """Scores a pool under the surrogate's posterior and picks a diverse batch of the best.

    Subclasses implement `scores` (higher is better); those whose batch is not "top scores, then
    diversity" (Thompson sampling, multi-fidelity) override `select`.

    Attributes:
        name: registry kind of the policy.
        needs_surrogate: False when the policy can select without a posterior (random).
    """

    name = "base"
    needs_surrogate = True

    def __init__(self, config: Any, objective: Objective, rng: np.random.Generator):
        self.config = config
        self.objective = objective
        self.rng = rng
        self.diversifier = BatchDiversifier(config.diversity)

    @classmethod
    def build(cls, config: Any, context: Any) -> BatchPolicy:
        """The registry's factory: ``context`` carries the objective and the random stream."""
        return cls(config, context.objective, context.rng)

    def scores(self, posterior: Posterior, context: Mapping[str, Any]) -> np.ndarray:
        """Acquisition value of every pool candidate, higher is better. Shapes: (n,)."""
        raise NotImplementedError

    def select(self, pool: Sequence[Candidate], posterior: Posterior | None, k: int,
               context: dict[str, Any] | None = None) -> Selection:
        """Pick up to ``k`` candidates of ``pool`` (fewer when the pool or diversity rules run out).

        Args:
            pool: candidates, in the order of the posterior's arrays.
            posterior: the surrogate's beliefs over ``pool`` (may be None only when
                ``needs_surrogate`` is False).
            k: batch size.
            context: optional keys, see the module docstring.
        """
        context = context or {}
        self._check(pool, posterior)
        if not pool or k <= 0:
            return self._selection(pool, posterior, [], np.zeros(len(pool)), context)
        scores = self._pool_scores(pool, posterior, context)
        chosen = self.diversifier.choose(scores, k, [c.formula for c in pool], _embeddings(posterior))
        return self._selection(pool, posterior, chosen, scores, context)

    def observe(self, evaluations: Sequence[Evaluation]) -> None:
        """Learn from new labels. The acquisitions here are stateless: the surrogate learns."""

    # ------------------------------------------------------------------ helpers for subclasses

    def _pool_scores(self, pool: Sequence[Candidate], posterior: Posterior | None,
                     context: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(self.scores(posterior, context), dtype=float)

    def _check(self, pool: Sequence[Candidate], posterior: Posterior | None) -> None:
        if posterior is None:
            if self.needs_surrogate:
                raise ValueError(f"policy {self.name!r} needs a surrogate posterior, got None")
            return
        if posterior.size != len(pool):
            raise ValueError(f"posterior covers {posterior.size} candidates, the pool has {len(pool)}")
        missing = [p for p in self.objective.properties if p not in posterior.mean]
        if missing and self.needs_surrogate:
            raise ValueError(f"posterior has no prediction of {missing} "
                             f"(objective {self.objective.describe()})")

    def _selection(self, pool: Sequence[Candidate], posterior: Posterior | None, chosen: Sequence[int],
                   scores: np.ndarray, context: Mapping[str, Any], cheap_evaluations: int = 0) -> Selection:
        first = self.objective.properties[0]
        predictions = {}
        if posterior is not None and first in posterior.mean:
            predictions = {pool[i].id: (float(posterior.mean[first][i]), float(posterior.std[first][i]))
                           for i in chosen}
        return Selection(
            round=int(context.get("round", -1)), policy=self.name,
            candidate_ids=tuple(pool[i].id for i in chosen),
            scores=tuple(float(scores[i]) for i in chosen),
            predictions=predictions, cheap_evaluations=cheap_evaluations,
        )


def _embeddings(posterior: Posterior | None) -> np.ndarray | None:
    return None if posterior is None else posterior.embeddings
