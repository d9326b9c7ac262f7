"""Random, greedy and UCB policies over predicted e_above_hull (to be minimised)."""

from __future__ import annotations

import numpy as np

from discovery.config import DiversityConfig, PolicyConfig
from discovery.policies.base import ScoredBatchPolicy


class RandomPolicy(ScoredBatchPolicy):
    """Uniformly random batch (the baseline every other policy must beat)."""

    name = "random"

    def acquisition(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return self.rng.random(len(mean))


class GreedyPolicy(ScoredBatchPolicy):
    """Pure exploitation: lowest predicted mean first."""

    name = "greedy"

    def acquisition(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return -mean


class UCBPolicy(ScoredBatchPolicy):
    """Optimism under uncertainty: lowest ``mean - kappa * std`` first (a lower confidence bound
    on the quantity we minimise, i.e. UCB on its negative)."""

    name = "ucb"

    def __init__(self, diversity: DiversityConfig, rng: np.random.Generator, kappa: float = 1.0):
        super().__init__(diversity, rng)
        self.kappa = kappa

    def acquisition(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return -(mean - self.kappa * std)


POLICIES: dict[str, type[ScoredBatchPolicy]] = {
    "random": RandomPolicy, "greedy": GreedyPolicy, "ucb": UCBPolicy,
}


def make_policy(config: PolicyConfig, rng: np.random.Generator) -> ScoredBatchPolicy:
    cls = POLICIES[config.kind]
    if cls is UCBPolicy:
        return UCBPolicy(config.diversity, rng, kappa=config.kappa)
    return cls(config.diversity, rng)
