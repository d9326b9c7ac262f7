"""Random starting structures for LCOM's crystal structure prediction (no torch).

As in the LCOM paper: a random lattice and random coordinates with a given atom count, which the
caller relaxes to its nearest local minimum. Lattice: lengths of random ratios (0.7-1.4) and angles
60-120 degrees (flat cells redrawn), scaled to the volume of the atoms' covalent-radius spheres at
packing fraction `PACKING_FRACTION`; coordinates uniform, redrawn while two atoms (periodic images
included) are closer than `MIN_COVALENT_FRACTION` x the sum of their covalent radii; after
`MAX_START_TRIES` draws the least crowded one is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from discovery.errors import ConfigError

PACKING_FRACTION = 0.35
MIN_COVALENT_FRACTION = 0.7
MAX_START_TRIES = 500


def random_start(atoms: Sequence[int], rng: np.random.Generator) -> Any:
    """A random crystal of exactly ``atoms`` (atomic numbers): see the module docstring."""
    from ase.data import covalent_radii
    from pymatgen.core import Lattice, Structure

    radii = np.array([covalent_radii[z] for z in atoms])
    volume = float(np.sum(4.0 / 3.0 * np.pi * radii**3) / PACKING_FRACTION)
    best, best_ratio = None, -1.0
    for _ in range(MAX_START_TRIES):
        lengths = rng.uniform(0.7, 1.4, 3)
        angles = rng.uniform(60.0, 120.0, 3)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except Exception:  # impossible angle triples
            continue
        if not lattice.volume > 0.2 * np.prod(lengths):  # too flat
            continue
        lattice = lattice.scale(volume)
        structure = Structure(lattice, list(atoms), rng.random((len(atoms), 3)))
        if len(atoms) == 1:
            return structure
        d = structure.distance_matrix + np.diag(np.full(len(atoms), np.inf))
        limits = MIN_COVALENT_FRACTION * (radii[:, None] + radii[None, :])
        self_images = min(lattice.abc)  # a site's own image
        ratio = min(float((d / limits).min()), self_images / (2 * MIN_COVALENT_FRACTION * radii.max()))
        if ratio >= 1.0:
            return structure
        if ratio > best_ratio:
            best, best_ratio = structure, ratio
    return best


def cell_atoms(text: str, max_atoms: int) -> tuple[str, list[int]]:
    """``(reduced formula, atomic numbers of one cell)`` of a formula whose amounts are one cell.

    Raises:
        ConfigError: not a formula, an unknown element, fractional amounts, or more atoms than
            ``max_atoms`` (what the CD-VAE represents).
    """
    import re

    from pymatgen.core import Composition, Element

    for symbol in re.findall(r"[A-Z][a-z]?", text):
        if not Element.is_valid_symbol(symbol):
            raise ConfigError(f"formula {text!r}: unknown element {symbol!r}")
    try:
        comp = Composition(text)
    except Exception as exc:  # pymatgen raises several types for bad formulas
        raise ConfigError(f"formula {text!r}: not a formula ({' '.join(str(exc).split())[:80]})") from None
    atoms: list[int] = []
    for el, amount in comp.element_composition.items():
        if abs(amount - round(amount)) > 1e-6 or round(amount) < 1:
            raise ConfigError(f"formula {text!r}: {amount:g} {el} is not a whole number of atoms")
        if el.Z > 94:
            raise ConfigError(f"formula {text!r}: {el} (Z = {el.Z}) is beyond what CD-VAE encodes (Z <= 94)")
        atoms += [el.Z] * int(round(amount))
    if not atoms:
        raise ConfigError(f"formula {text!r}: no atoms")
    if len(atoms) > max_atoms:
        raise ConfigError(f"formula {text!r}: {len(atoms)} atoms per cell; the CD-VAE makes 1..{max_atoms}")
    return comp.reduced_formula, atoms
