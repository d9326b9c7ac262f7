"""Condition vectors from labels: property deciles, recomputed as labels arrive.

Conditional generators (ICSG3D's Cond-DFC-VAE) are asked for "a crystal in decile d of the
property"; unconditional ones (substitution) use the same deciles to weight their parents. After
each round the campaign hands every generator all labels so far; `DecileConditions.update`
recomputes the edges from them, and `target` moves to the decile where DFT-confirmed hits lie
(the median hit), or the lowest decile while there are none, since lower formation energy is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
            self.edges = np.quantile(v, np.linspace(0, 1, self.n_bins + 1)[1:-1])
        hits = np.asarray(hit_values, dtype=float)
        hits = hits[np.isfinite(hits)]
        self.target = self.bin(float(np.median(hits))) if len(hits) and self.ready else 0

    def bin(self, value: float) -> int:
        """The bin of ``value`` (0 = lowest); 0 before any edges exist."""
        if not self.ready:
            return 0
        return int(np.searchsorted(self.edges, value, side="right"))

    def one_hot(self, b: int) -> np.ndarray:
        """Shapes: (n_bins,)."""
        out = np.zeros(self.n_bins, dtype=np.float32)
        out[int(b)] = 1.0
        return out

    def weight(self, value: float | None, strength: float = 1.0) -> float:
        """Sampling weight of a parent with label ``value``: 1 + strength at the target bin,
        falling linearly to 1 at the farthest bin; 1 without a label."""
        if value is None or not self.ready or not np.isfinite(value):
            return 1.0
        distance = abs(self.bin(value) - self.target) / (self.n_bins - 1)
        return 1.0 + strength * (1.0 - distance)

    def state(self) -> dict:
        return {"n_bins": self.n_bins, "edges": self.edges.tolist(), "target": self.target}
