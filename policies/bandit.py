"""Sharing the proposal budget among generators by how often their proposals become DFT hits.

An *arm* is one generator under one condition, named ``"generator|condition"`` (`GeneratorBandit.arm`).
Each arm's hit rate has a Beta posterior ``Beta(prior_hits + hits, prior_misses + evaluations - hits)``
over DFT-confirmed hits per DFT evaluation. Every arm first gets ``min_share`` of the budget (so no
generator starves and a late bloomer can still show itself); the rest goes by Thompson sampling
(one posterior draw per proposal, the proposal to the arm with the best draw) or by UCB1 (one
proposal at a time to the arm with the highest index, counting proposals already given as pulls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from discovery.policies.configs import GeneratorBanditConfig

STATE_VERSION = 1


class GeneratorBandit:
    """A Beta-Bernoulli bandit that splits a proposal budget among generator arms.

    Args:
        config: allocation rule, floor share and Beta prior.
        arms: initial arm names (more can come with `add_arm`).
        rng: source of the Thompson draws.
    """

    def __init__(self, config: GeneratorBanditConfig, arms: Sequence[str], rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.evaluations: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.last_allocation: dict[str, int] = {}
        for arm in arms:
            self.add_arm(arm)

    @staticmethod
    def arm(generator: str, condition: str = "") -> str:
        """The arm name of a generator under a condition: ``"generator|condition"``."""
        return f"{generator}|{condition}"

    @property
    def arms(self) -> list[str]:
        return list(self.evaluations)

    def add_arm(self, arm: str) -> None:
        """Start tracking a new arm, with no evaluations yet.

        Raises:
            ValueError: the arm exists, or ``min_share`` leaves no room for one more arm.
        """
        if arm in self.evaluations:
            raise ValueError(f"bandit arm {arm!r} exists already")
        if self.config.min_share * (len(self.evaluations) + 1) > 1.0:
            raise ValueError(f"min_share {self.config.min_share} is too large for "
                             f"{len(self.evaluations) + 1} arms (their floors would exceed the budget)")
        self.evaluations[arm] = 0
        self.hits[arm] = 0

    def update(self, arm: str, evaluations: int, hits: int) -> None:
        """Record ``evaluations`` DFT results of the arm's proposals, ``hits`` of them confirmed hits."""
        if arm not in self.evaluations:
            raise KeyError(f"unknown bandit arm {arm!r} (known: {self.arms}); add it with add_arm")
        if evaluations < 0 or not 0 <= hits <= evaluations:
            raise ValueError(f"bandit update for {arm!r}: need 0 <= hits <= evaluations, "
                             f"got {hits} hits of {evaluations}")
        self.evaluations[arm] += int(evaluations)
        self.hits[arm] += int(hits)

    def posterior(self, arm: str) -> tuple[float, float]:
        """``(alpha, beta)`` of the arm's Beta posterior on its hit rate."""
        h, e = self.hits[arm], self.evaluations[arm]
        return self.config.prior_hits + h, self.config.prior_misses + e - h

    def allocate(self, total: int) -> dict[str, int]:
        """Split ``total`` proposals among the arms; the counts sum exactly to ``total``.

        Every arm gets ``round(min_share * total)`` first (less only when the floors of all arms
        would exceed the total); the rest goes by the configured rule.
        """
        if total < 0:
            raise ValueError(f"cannot allocate a negative budget ({total})")
        arms = self.arms
        if not arms:
            raise ValueError("the bandit has no arms")
        floor = min(int(np.floor(self.config.min_share * total + 0.5)), total // len(arms))
        counts = np.full(len(arms), floor, dtype=int)
        rest = total - int(counts.sum())
        if rest > 0:
            counts += self._thompson(rest) if self.config.kind == "thompson" else self._ucb1(rest)
        self.last_allocation = {a: int(c) for a, c in zip(arms, counts)}
        return dict(self.last_allocation)

    def weights(self) -> dict[str, float]:
        """Shares of the latest allocation (equal shares before the first), e.g. for MLflow."""
        total = sum(self.last_allocation.values())
        if not total or set(self.last_allocation) != set(self.arms):
            return {a: 1.0 / len(self.arms) for a in self.arms} if self.arms else {}
        return {a: self.last_allocation[a] / total for a in self.arms}

    def _thompson(self, rest: int) -> np.ndarray:
        alpha, beta = np.array([self.posterior(a) for a in self.arms]).T
        draws = self.rng.beta(alpha, beta, size=(rest, len(alpha)))
        return np.bincount(np.argmax(draws, axis=1), minlength=len(alpha))

    def _ucb1(self, rest: int) -> np.ndarray:
        alpha, beta = np.array([self.posterior(a) for a in self.arms]).T
        rate = alpha / (alpha + beta)
        pulls = alpha + beta  # evaluations plus the prior's pseudo-counts
        given = np.zeros(len(alpha), dtype=int)
        for _ in range(rest):
            n = pulls + given
            index = rate + self.config.exploration * np.sqrt(2.0 * np.log(n.sum()) / n)
            given[int(np.argmax(index))] += 1
        return given

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: config, counts, last allocation and the rng's state."""
        return {
            "version": STATE_VERSION,
            "config": self.config.model_dump(mode="json"),
            "arms": {a: {"evaluations": self.evaluations[a], "hits": self.hits[a]} for a in self.arms},
            "last_allocation": dict(self.last_allocation),
            "rng": self.rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], rng: np.random.Generator | None = None) -> GeneratorBandit:
        """Rebuild a bandit from `state`; without ``rng`` it continues the saved random stream."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"bandit state version {state.get('version')!r}, expected {STATE_VERSION}")
        if rng is None:
            saved = state["rng"]
            bit_generator = getattr(np.random, saved["bit_generator"])()
            bit_generator.state = saved
            rng = np.random.Generator(bit_generator)
        bandit = cls(GeneratorBanditConfig.model_validate(state["config"]), list(state["arms"]), rng)
        for arm, counts in state["arms"].items():
            bandit.update(arm, counts["evaluations"], counts["hits"])
        bandit.last_allocation = {a: int(c) for a, c in state.get("last_allocation", {}).items()}
        return bandit
