"""Shared machinery of batch policies: score, then fill a batch under diversity constraints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from discovery.config import DiversityConfig
from discovery.records import Candidate, Evaluation, Prediction, Selection


class ScoredBatchPolicy:
    """A policy that ranks candidates by an acquisition score (higher is better) and fills the batch
    greedily, skipping candidates that break the diversity constraints.

    Subclasses implement `acquisition`. Predictions are of the objective to *minimise*
    (predicted e_above_hull, eV/atom); ``context["embeddings"]`` (n, d) enables the distance rule.
    """

    name = "base"

    def __init__(self, diversity: DiversityConfig, rng: np.random.Generator):
        self.diversity = diversity
        self.rng = rng

    def acquisition(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def select(self, pool: Sequence[Candidate], predictions: Sequence[Prediction], k: int,
               context: dict[str, Any] | None = None) -> Selection:
        context = context or {}
        round_ = int(context.get("round", -1))
        if not pool:
            return Selection(round=round_, policy=self.name, candidate_ids=(), scores=())
        mean = np.array([p.mean for p in predictions], dtype=float)
        std = np.array([p.std for p in predictions], dtype=float)
        scores = self.acquisition(mean, std)
        order = np.argsort(-scores, kind="stable")
        chosen = diverse_top_k(pool, order, k, self.diversity, context.get("embeddings"))
        return Selection(
            round=round_, policy=self.name,
            candidate_ids=tuple(pool[i].id for i in chosen),
            scores=tuple(float(scores[i]) for i in chosen),
            predictions={pool[i].id: (float(mean[i]), float(std[i])) for i in chosen},
        )

    def observe(self, evaluations: Sequence[Evaluation]) -> None:
        """Stateless acquisitions learn nothing here; the surrogate carries the knowledge."""


def diverse_top_k(pool: Sequence[Candidate], order: np.ndarray, k: int, diversity: DiversityConfig,
                  embeddings: np.ndarray | None) -> list[int]:
    """Walk candidates in ``order`` and keep those that respect the diversity constraints.

    Constraints: at most ``max_per_formula`` per reduced formula, and (when embeddings are given
    and ``min_embedding_distance`` > 0) a minimum Euclidean distance to every member already chosen.
    """
    chosen: list[int] = []
    per_formula: Counter[str] = Counter()
    for i in order:
        if len(chosen) == k:
            break
        formula = pool[i].formula
        if per_formula[formula] >= diversity.max_per_formula:
            continue
        if embeddings is not None and diversity.min_embedding_distance > 0 and chosen:
            d = np.linalg.norm(embeddings[chosen] - embeddings[i], axis=1).min()
            if d < diversity.min_embedding_distance:
                continue
        chosen.append(int(i))
        per_formula[formula] += 1
    return chosen
