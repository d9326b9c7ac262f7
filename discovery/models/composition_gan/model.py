"""Trained composition models that propose compositions for a target formation energy (MODELS.md 3.3).

`CompositionModel.propose`: the generator (CondGAN: noise U(-1, 1) of ``noise_dim``; CondVAE:
z ~ N(0, I) through the decoder) at the scaled target, the bag-of-atoms part un-scaled and cleaned
(entries below 0.03 dropped, renormalised), Metropolis-Hastings valence correction
(`discovery.models.composition_gan.valence`), the smallest integer formula, and SMACT's
neutrality + electronegativity check of that formula.

Units: targets in eV/atom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from discovery.models.composition_gan.features import Featurizer
from discovery.models.composition_gan.valence import Corrected, clean_fractions, correct_many, integer_formula, smact_problem

#: Rows generated per forward pass.
BATCH = 4096


@dataclass
class ProposedComposition:
    """One proposed composition.

    Attributes:
        raw: element -> fraction after cleaning, before valence correction.
        corrected: the valence correction's result.
        counts: the integer formula (element -> count), or None when none fits ``max_atoms``.
        formula: reduced formula of ``counts`` ("" without counts).
        smact: why SMACT rejects ``counts`` (None: it passes).
        target: the condition (eV/atom).
    """

    raw: dict[str, float]
    corrected: Corrected
    counts: dict[str, int] | None
    formula: str
    smact: str | None
    target: float

    @property
    def valid(self) -> bool:
        """An integer formula that SMACT accepts."""
        return self.counts is not None and self.smact is None


@dataclass
class CompositionModel:
    """A trained CondGAN or CondVAE.

    Attributes:
        kind: ``composition_gan`` or ``composition_vae``.
        config: its training config.
        network: the generator (GAN) or the VAE.
        featurizer: features and scaling of the training table.
        manifest: the model folder's manifest.
        discriminator: the GAN's discriminator (its property head), when loaded.
    """

    kind: str
    config: Any
    network: torch.nn.Module
    featurizer: Featurizer
    manifest: dict[str, Any] = field(default_factory=dict)
    discriminator: torch.nn.Module | None = None

    def __post_init__(self) -> None:
        self.network.eval()

    @property
    def name(self) -> str:
        return self.kind

    @property
    def training_formulas(self) -> set[str]:
        return set(self.manifest.get("training_formulas", []))

    @torch.no_grad()
    def sample_features(self, target_ev: float | Sequence[float], n: int, rng: np.random.Generator) -> np.ndarray:
        """Scaled feature vectors generated at a target. Shapes: ``(n, D)``."""
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        t = np.broadcast_to(np.asarray(target_ev, dtype=float), (n,))
        y = torch.as_tensor(self.featurizer.scale_y(t), dtype=torch.float32)
        out = []
        for start in range(0, n, BATCH):
            yb = y[start:start + BATCH]
            if self.kind == "composition_gan":
                z = torch.rand(len(yb), self.network.noise_dim, generator=gen) * 2 - 1
                out.append(self.network(z, yb))
            else:
                z = torch.randn(len(yb), self.network.latent_dim, generator=gen)
                out.append(self.network.decode(z, yb))
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, self.featurizer.dim))

    def raw_compositions(self, target_ev: float, n: int, rng: np.random.Generator,
                         allowed: Sequence[str] | None = None) -> list[dict[str, float]]:
        """Cleaned (thresholded, renormalised) compositions before valence correction.

        ``allowed`` zeroes every other element before the threshold (our campaign restriction,
        not the paper's).
        """
        bag = np.clip(self.featurizer.inverse_fractions(self.sample_features(target_ev, n, rng)), 0.0, None)
        if allowed is not None:
            keep = np.isin(np.array(self.featurizer.elements), list(allowed))
            bag = bag * keep
            s = bag.sum(axis=1, keepdims=True)
            bag = np.divide(bag, s, out=np.zeros_like(bag), where=s > 0)
        bag = clean_fractions(bag)
        els = self.featurizer.elements
        return [{els[j]: float(row[j]) for j in np.flatnonzero(row)} for row in bag]

    def propose(self, target_ev: float, n: int, rng: np.random.Generator, max_atoms: int = 20,
                iterations: int | None = None, allowed: Sequence[str] | None = None,
                assignments: str = "columns") -> list[ProposedComposition]:
        """``n`` proposals at ``target_ev`` (see the module docstring); ``allowed`` restricts elements;
        ``assignments`` is the valence-column scheme (`~discovery.models.composition_gan.valence.valence_matrix`)."""
        from pymatgen.core import Composition

        raw = self.raw_compositions(target_ev, n, rng, allowed)
        kwargs = {} if iterations is None else {"iterations": iterations}
        fixed = correct_many(raw, rng, assignments=assignments, **kwargs)
        out = []
        for r, c in zip(raw, fixed, strict=True):
            counts = integer_formula(c.fractions, max_atoms) if c.fractions else None
            formula = Composition(counts).reduced_formula if counts else ""
            out.append(ProposedComposition(r, c, counts, formula, smact_problem(counts) if counts else "no formula",
                                           float(target_ev)))
        return out
