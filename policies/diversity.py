"""Batch diversity: spread a batch over the surrogate's embedding once candidates are scored.

Every policy hands its scores to a `BatchDiversifier`, which applies `DiversityConfig`:

- ``none``: score order.
- ``min_distance``: score order, skipping candidates closer than ``min_distance`` to one already chosen.
- ``kcenter``: among the top ``candidates_factor * k`` by score, greedy k-center (farthest-first
  traversal) starting from the best score.
- ``dpp``: among the same top candidates, the greedy MAP of a determinantal point process with
  kernel ``L_ij = q_i S_ij q_j``, quality ``q = exp(standardised score)`` and RBF similarity
  ``S_ij = exp(-|x_i - x_j|^2 / (2 l^2))`` (Chen, Zhang & Zhou, NeurIPS 2018, incremental Cholesky).

``max_per_formula`` holds in every method. When a method runs out of admissible candidates among
the top ones, the batch is filled in score order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from discovery.policies.configs import DiversityConfig

log = logging.getLogger(__name__)


class FormulaCap:
    """At most ``cap`` picks per formula."""

    def __init__(self, formulas: Sequence[str], cap: int):
        self.formulas = formulas
        self.cap = cap
        self.count: Counter[str] = Counter()

    def allows(self, i: int) -> bool:
        return self.count[self.formulas[i]] < self.cap

    def take(self, i: int) -> None:
        self.count[self.formulas[i]] += 1


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances. Shapes: (n, d) -> (n, n)."""
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def dpp_kernel(scores: np.ndarray, embeddings: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """The DPP kernel ``L = diag(q) S diag(q)`` of a shortlist.

    Args:
        scores: (m,) acquisition scores; quality ``q = exp((s - mean) / std)`` (q = 1 if all equal).
        embeddings: (m, d) features.
        bandwidth: RBF length scale in embedding units; None: the median pairwise distance (1 when
            all points coincide).

    Shapes: (m, m).
    """
    scores = np.asarray(scores, dtype=float)
    spread = scores.std()
    z = (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
    q = np.exp(z)
    dist = pairwise_distances(np.asarray(embeddings, dtype=float))
    if bandwidth is None:
        upper = dist[np.triu_indices(len(dist), k=1)]
        bandwidth = float(np.median(upper)) if upper.size else 1.0
        bandwidth = bandwidth if bandwidth > 0 else 1.0
    sim = np.exp(-dist**2 / (2.0 * bandwidth**2))
    return q[:, None] * sim * q[None, :]


def greedy_dpp(kernel: np.ndarray, k: int, groups: Sequence[str] | None = None,
               max_per_group: int | None = None) -> list[int]:
    """Greedy MAP of a DPP: repeatedly add the item that most increases ``log det L[S, S]``.

    Exact greedy on the log-determinant, in O(m k^2): ``d2[i]`` is the Schur complement of item i
    given the chosen set, so ``log det L[S + i] = log det L[S] + log d2[i]``; it is updated by one
    incremental Cholesky row per pick. Stops early when every remaining item is (numerically)
    spanned by the chosen ones. Ties go to the lower index.

    Args:
        kernel: (m, m) positive semi-definite kernel.
        k: how many to pick.
        groups: optional (m,) labels (formulas); at most ``max_per_group`` picks per label.
        max_per_group: the cap on picks per label.

    Returns:
        Picked indices into the kernel, in pick order.
    """
    m = len(kernel)
    cap = FormulaCap(groups, max_per_group) if groups is not None and max_per_group else None
    d2 = np.diag(kernel).astype(float).copy()
    eps = 1e-10 * max(float(d2.max(initial=0.0)), 1e-300)
    rows = np.zeros((min(k, m), m))
    picked: list[int] = []
    while len(picked) < min(k, m):
        gain = d2.copy()
        gain[picked] = -np.inf
        if cap is not None:
            gain[[i for i in range(m) if not cap.allows(i)]] = -np.inf
        j = int(np.argmax(gain))
        if not gain[j] > eps:
            break
        t = len(picked)
        e = (kernel[j] - rows[:t].T @ rows[:t, j]) / np.sqrt(d2[j])
        rows[t] = e
        d2 = d2 - e**2
        picked.append(j)
        if cap is not None:
            cap.take(j)
    return picked


def greedy_kcenter(embeddings: np.ndarray, k: int, groups: Sequence[str] | None = None,
                   max_per_group: int | None = None) -> list[int]:
    """Greedy k-center (farthest-first traversal): start from item 0, then repeatedly add the item
    farthest from everything chosen. Items are expected in score order, so ties go to the better score.

    Args:
        embeddings: (m, d) features, best score first.
        k: how many to pick.
        groups: optional (m,) labels (formulas); at most ``max_per_group`` picks per label.
        max_per_group: the cap on picks per label.

    Returns:
        Picked indices, in pick order.
    """
    m = len(embeddings)
    cap = FormulaCap(groups, max_per_group) if groups is not None and max_per_group else None
    min_dist = np.full(m, np.inf)
    picked: list[int] = []
    while len(picked) < min(k, m):
        far = min_dist.copy()
        far[picked] = -np.inf
        if cap is not None:
            far[[i for i in range(m) if not cap.allows(i)]] = -np.inf
        j = int(np.argmax(far))
        if far[j] == -np.inf:
            break
        picked.append(j)
        if cap is not None:
            cap.take(j)
        min_dist = np.minimum(min_dist, np.linalg.norm(embeddings - embeddings[j], axis=1))
    return picked


class BatchDiversifier:
    """Applies a `DiversityConfig` to scored candidates.

    Logs one warning (per diversifier) when a method needs embeddings and gets none.
    """

    def __init__(self, config: DiversityConfig):
        self.config = config
        self._warned = False

    def effective_method(self, embeddings: np.ndarray | None) -> str:
        """The configured method, or "none" (with a one-time warning) when it needs absent embeddings."""
        method = self.config.method
        if method != "none" and embeddings is None:
            if not self._warned:
                log.warning("diversity method %r needs embeddings and the posterior has none; "
                            "choosing in score order", method)
                self._warned = True
            return "none"
        return method

    def choose(self, scores: np.ndarray, k: int, formulas: Sequence[str],
               embeddings: np.ndarray | None = None) -> list[int]:
        """Indices of the batch, in pick order.

        Args:
            scores: (n,) acquisition scores, higher is better.
            k: batch size.
            formulas: (n,) reduced formulas, for ``max_per_formula``.
            embeddings: (n, d) surrogate features, or None.
        """
        cfg = self.config
        scores = np.asarray(scores, dtype=float)
        order = np.argsort(-scores, kind="stable")
        cap = FormulaCap(formulas, cfg.max_per_formula)
        method = self.effective_method(embeddings)
        if method == "none":
            return self._walk(order, k, cap, [])
        emb = np.asarray(embeddings, dtype=float)
        if method == "min_distance":
            return self._walk(order, k, cap, [], emb, cfg.min_distance)
        short = order[: cfg.candidates_factor * k]
        short_formulas = [formulas[i] for i in short]
        if method == "kcenter":
            local = greedy_kcenter(emb[short], k, short_formulas, cfg.max_per_formula)
        else:
            kernel = dpp_kernel(scores[short], emb[short], cfg.dpp_bandwidth)
            local = greedy_dpp(kernel, k, short_formulas, cfg.max_per_formula)
        picks = [int(short[j]) for j in local]
        for i in picks:
            cap.take(i)
        return self._walk(order, k, cap, picks)

    @staticmethod
    def _walk(order: np.ndarray, k: int, cap: FormulaCap, chosen: list[int],
              emb: np.ndarray | None = None, min_distance: float = 0.0) -> list[int]:
        """Fill ``chosen`` up to k in score order under the formula cap (and the distance rule)."""
        taken = set(chosen)
        for i in order:
            if len(chosen) >= k:
                break
            i = int(i)
            if i in taken or not cap.allows(i):
                continue
            if emb is not None and min_distance > 0 and chosen:
                if np.linalg.norm(emb[chosen] - emb[i], axis=1).min() < min_distance:
                    continue
            chosen.append(i)
            taken.add(i)
            cap.take(i)
        return chosen
