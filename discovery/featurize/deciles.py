"""Condition vectors from labels: property deciles, recomputed as labels arrive (the one home of
decile edges, bins and one-hot condition rows).

Conditional generators (ICSG3D's Cond-DFC-VAE) are asked for "a crystal in decile d of the
property"; unconditional ones (substitution) use the same deciles to weight their parents. After
each round the campaign hands every generator all labels so far; `DecileConditions.update`
recomputes the edges from them, and `target` moves to the decile where DFT-confirmed hits lie
(the median hit), or the lowest decile while there are none, since lower formation energy is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def decile_edges(values: Sequence[float], n_deciles: int = 10) -> np.ndarray:
    """Inner quantile edges of ``values``: ``np.quantile`` at 1/n, ..., (n-1)/n (non-finite values
    ignored).

    Shapes: (n_deciles - 1,).

    Example:
        >>> decile_edges(np.arange(11.0), 2).tolist()
        [5.0]
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("decile_edges: no finite values")
    return np.quantile(v, np.arange(1, n_deciles) / n_deciles)


def decile_index(values: Sequence[float] | float, edges: np.ndarray) -> np.ndarray:
    """Decile of each value: bins ``[e_{k-1}, e_k)``, below e_0 in bin 0.

    (The released ICSG3D code's ``pd.qcut`` closes bins on the right instead, which differs only for
    a label equal to an edge.)

    Example:
        >>> decile_index([0.0, 4.9, 5.0, 99.0], np.array([5.0])).tolist()
        [0, 0, 1, 1]
    """
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(v)):
        raise ValueError("decile_index: values must be finite")
    return np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right").astype(np.int64)


def one_hot(index: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """float32 one-hot rows. Shapes: (len(index), n)."""
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"one_hot: index outside 0..{n - 1}")
    return np.eye(n, dtype=np.float32)[idx]


class DecileConditions:
    """Quantile bins of one property and the bin the campaign is aiming for.

    Args:
        n_bins: number of quantile bins (10: deciles, as ICSG3D).
        edges: initial inner edges (``n_bins - 1`` increasing values), e.g. from training labels.

    Units: those of the property (eV/atom for formation energies).
    """

    def __init__(self, n_bins: int = 10, edges: Sequence[float] | None = None):
        if n_bins < 2:
            raise ValueError("n_bins must be at least 2")
        self.n_bins = n_bins
        self.edges = np.asarray(edges, dtype=float) if edges is not None else np.zeros(0)
        if len(self.edges) not in (0, n_bins - 1):
            raise ValueError(f"expected {n_bins - 1} inner edges, got {len(self.edges)}")
        self.target = 0

    @property
    def ready(self) -> bool:
        return len(self.edges) == self.n_bins - 1

    def update(self, values: Sequence[float], hit_values: Sequence[float] = ()) -> None:
        """Recompute edges from all ``values`` (needs at least ``n_bins`` finite values; otherwise
        the old edges stay) and re-target to the median hit's bin (bin 0 without hits)."""
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if len(v) >= self.n_bins:
            self.edges = decile_edges(v, self.n_bins)
        hits = np.asarray(hit_values, dtype=float)
        hits = hits[np.isfinite(hits)]
        self.target = self.bin(float(np.median(hits))) if len(hits) and self.ready else 0

    def bin(self, value: float) -> int:
        """The bin of ``value`` (0 = lowest); 0 before any edges exist."""
        if not self.ready:
            return 0
        return int(decile_index(value, self.edges)[0])

    def one_hot(self, b: int) -> np.ndarray:
        """Shapes: (n_bins,)."""
        return one_hot([b], self.n_bins)[0]

    def weight(self, value: float | None, strength: float = 1.0) -> float:
        """Sampling weight of a parent with label ``value``: 1 + strength at the target bin,
        falling linearly to 1 at the farthest bin; 1 without a label."""
        if value is None or not self.ready or not np.isfinite(value):
            return 1.0
        distance = abs(self.bin(value) - self.target) / (self.n_bins - 1)
        return 1.0 + strength * (1.0 - distance)

    def state(self) -> dict:
        return {"n_bins": self.n_bins, "edges": self.edges.tolist(), "target": self.target}
