"""A trained crystal GAN: sample matrices for target counts and decode them (MODELS.md 2.5).

Sampling: z ~ N(0, I) (a `torch.Generator` seeded from the caller's numpy rng), the condition of the
target per-role counts, G in evaluation mode (BatchNorm running statistics). Decoding: the 0.4 row
rule (``decoder="threshold"``), the Q-network's per-row occupancy argmax (``decoder="qnet"``, the
original's ``view_atoms_classifier``) or, our addition, the rows with the largest sums up to the
conditioned counts (``decoder="forced"``: the cell has exactly the composition asked for, whatever
the generator learned about counts), then `~discovery.models.crystal_gan.representation.decode`
with the training elements or a role -> element substitution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from discovery.models.crystal_gan.networks import CrystalGenerator, CrystalQNetwork
from discovery.models.crystal_gan.representation import Blocks, Decoded, decode, forced_occupancy
from discovery.models.crystal_gan.training import condition_tensor

#: Matrices generated per forward pass.
SAMPLE_BATCH = 512


@dataclass
class CrystalGANModel:
    """Generator and Q-network of a trained crystal GAN, with what they were trained on.

    Attributes:
        config: the `CrystalGANConfig`.
        generator: the generator (evaluation mode).
        qnet: the Q-network (evaluation mode).
        blocks: the representation's blocks.
        manifest: the model folder's manifest (empty for a model not read from a folder).
    """

    config: Any
    generator: CrystalGenerator
    qnet: CrystalQNetwork
    blocks: Blocks
    manifest: dict[str, Any]

    def __post_init__(self) -> None:
        self.generator.eval()
        self.qnet.eval()

    @property
    def holdout(self) -> list[tuple[int, ...]]:
        """Per-role counts of the compositions held out of training."""
        return [tuple(h) for h in self.manifest.get("holdout_counts", [])]

    def check_counts(self, counts: np.ndarray) -> np.ndarray:
        """``counts`` as an int array ``(n, n_roles)`` within 1..max_count.

        Raises:
            ValueError: a count outside its block's range.
        """
        c = np.atleast_2d(np.asarray(counts, dtype=np.int64))
        maxes = np.array(self.blocks.max_counts)
        if c.shape[1] != len(maxes) or (c < 1).any() or (c > maxes).any():
            raise ValueError(f"counts {c[:3].tolist()}... must be 1..{maxes.tolist()} per role")
        return c

    @torch.no_grad()
    def sample_matrices(self, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Generated matrices and the Q-network's row occupancy for the given per-role counts.

        Shapes: counts ``(n, n_roles)`` -> matrices ``(n, rows, 3)``, occupancy ``(n, rows - 2)`` bool.
        """
        c = torch.as_tensor(self.check_counts(counts))
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        mats, occs = [], []
        for start in range(0, len(c), SAMPLE_BATCH):
            cb = c[start:start + SAMPLE_BATCH]
            z = torch.randn(len(cb), self.generator.latent_dim, generator=gen)
            x = self.generator(z, condition_tensor(cb, self.blocks.max_counts))
            occ_logits, _ = self.qnet(x)
            mats.append(x[:, 0].numpy().astype(np.float64))
            occs.append(torch.cat([o.argmax(1) == 1 for o in occ_logits], dim=1).numpy())
        return np.concatenate(mats), np.concatenate(occs)

    def generate(self, counts: Sequence[int] | np.ndarray, n: int, rng: np.random.Generator,
                 species: Mapping[str, str] | None = None, decoder: str = "threshold") -> list[Decoded]:
        """``n`` decoded samples of one composition (per-role counts), elements per ``species``."""
        c = np.tile(np.asarray(counts, dtype=np.int64).reshape(1, -1), (n, 1))
        mats, occ = self.sample_matrices(c, rng)
        if decoder == "forced":
            occ = np.array([forced_occupancy(m, self.blocks, k) for m, k in zip(mats, c, strict=True)])
        return self.decode(mats, species=species, occupancy=occ if decoder in ("qnet", "forced") else None)

    def decode(self, matrices: np.ndarray, species: Mapping[str, str] | None = None,
               occupancy: np.ndarray | None = None) -> list[Decoded]:
        """Decode matrices (the 0.4 rule, or ``occupancy`` from the Q-network)."""
        return [decode(m, self.blocks, species=species, occupancy=None if occupancy is None else occupancy[i],
                       threshold=self.config.row_threshold) for i, m in enumerate(matrices)]
