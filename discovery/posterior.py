"""What the surrogates believe about a pool of candidates, in the form policies consume.

Per property: a mean and a std per candidate and, when the surrogate is an ensemble, every member's
prediction. Policies that need samples (Thompson sampling, utilities of several properties) use the
members when there are any and Gaussian draws otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Posterior:
    """Beliefs over ``n`` pool candidates.

    Attributes:
        mean: property -> (n,) predicted means.
        std: property -> (n,) predicted standard deviations (calibrated where the surrogate is).
        members: property -> (m, n) predictions of the ensemble members, where available.
        embeddings: (n, d) learned per-candidate features for batch diversity, or None.
        model: name of what produced it ("cgcnn-ensemble", "forest", "mlip-prior", ...).
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    members: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    model: str = ""

    def __post_init__(self) -> None:
        sizes = {len(v) for v in self.mean.values()} | {len(v) for v in self.std.values()}
        sizes |= {v.shape[1] for v in self.members.values()}
        if self.embeddings is not None:
            sizes.add(len(self.embeddings))
        if len(sizes) > 1:
            raise ValueError(f"posterior arrays disagree on the pool size: {sorted(sizes)}")
        if set(self.std) != set(self.mean):
            raise ValueError("posterior needs a std for every mean")

    @property
    def size(self) -> int:
        return len(next(iter(self.mean.values()))) if self.mean else 0

    def samples(self, n_draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Joint draws per property, shape (n_draws, n): ensemble members when there are any
        (drawn at random, with repeats when ``n_draws`` exceeds the members), independent Gaussians
        otherwise."""
        out = {}
        for prop, mu in self.mean.items():
            members = self.members.get(prop)
            if members is not None and len(members):
                idx = rng.choice(len(members), size=n_draws, replace=n_draws > len(members))
                out[prop] = members[idx]
            else:
                out[prop] = mu[None, :] + self.std[prop][None, :] * rng.standard_normal((n_draws, len(mu)))
        return out

    def subset(self, idx: np.ndarray) -> Posterior:
        """The posterior of ``pool[idx]``."""
        return Posterior(
            mean={k: v[idx] for k, v in self.mean.items()},
            std={k: v[idx] for k, v in self.std.items()},
            members={k: v[:, idx] for k, v in self.members.items()},
            embeddings=None if self.embeddings is None else self.embeddings[idx],
            model=self.model,
        )
