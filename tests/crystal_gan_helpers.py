"""Shared helpers of the crystal GAN tests: the paper's blocks, narrow networks, synthetic cells."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from discovery.models.crystal_gan.representation import Blocks

BLOCKS = Blocks(("A", "B", "X"), ("Mg", "Mn", "O"), (8, 8, 12), ("cation", "cation", "anion"))
# narrow networks, same losses: the training tests run in seconds
TINY = dict(latent_dim=16, g_fc=8, g_channels=(16, 16, 16), d_channels=(16, 16, 16), d_fc=(32, 16),
            q_channels=(16, 16, 16), q_fc=(32, 16), batch_size=16)


def spinel_like(rng: np.random.Generator, counts=(2, 4, 8)) -> Structure:
    """A triclinic Mg-Mn-O cell with well separated random sites."""
    lattice = Lattice.from_parameters(5.2, 5.9, 7.1, 84.0, 97.0, 103.0)
    species = ["Mg"] * counts[0] + ["Mn"] * counts[1] + ["O"] * counts[2]
    coords: list[np.ndarray] = []
    while len(coords) < len(species):
        f = rng.random(3)
        trial = Structure(lattice, ["H"] * (len(coords) + 1), [*coords, f])
        if not coords or min(trial.get_distance(len(coords), j) for j in range(len(coords))) > 1.2:
            coords.append(f)
    return Structure(lattice, species, coords)
