"""Structures for a given composition: the structure step of composition-first proposals.

`structures_for_composition` turns a formula into candidate structures with two structure
generators:

- ``prototype``: every built-in prototype of matching stoichiometry
  (`discovery.data.prototypes.build_reference_phase`: roles matched by stoichiometry, charge-balanced
  oxidation states, lattice sized from ionic radii);
- ``random_symmetric``: random symmetric structures of the formula (pyxtal, through
  `discovery.generators.random_symmetric.RandomSymmetricGenerator` with ``conditions["composition"]``).

Each returned structure comes with the label of the structure generator that made it
(``prototype:<name>`` or ``random_symmetric:<space group>``). Structures with more than
``max_atoms`` sites or atoms closer than 0.5 A are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from discovery.errors import DataError

if TYPE_CHECKING:
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

STRUCTURE_METHODS = ("prototype", "random_symmetric")
MIN_DISTANCE_A = 0.5


def prototype_structures(formula: str, max_atoms: int) -> list[tuple[Structure, str]]:
    """Every built-in prototype that fits ``formula`` (see the module docstring)."""
    from discovery.data.prototypes import prototype_names
    from discovery.data.references import build_reference_phase
    from discovery.structures import structural_problem

    out = []
    for name in prototype_names():
        try:
            s = build_reference_phase(formula, name)
        except DataError:
            continue
        if (max_atoms and len(s) > max_atoms) or structural_problem(s, MIN_DISTANCE_A):
            continue
        out.append((s, f"prototype:{name}"))
    return out


def random_structures(formula: str, elements: Sequence[str], max_atoms: int, rng: np.random.Generator,
                      n: int = 1, max_attempts: int = 10) -> list[tuple[Structure, str]]:
    """Up to ``n`` random symmetric structures of ``formula`` (pyxtal)."""
    from discovery.generators.random_symmetric import RandomSymmetricGenerator, RandomSymmetricGeneratorConfig

    gen = RandomSymmetricGenerator(RandomSymmetricGeneratorConfig(max_attempts=max_attempts), list(elements),
                                   max_atoms)
    return [(c.pmg, f"random_symmetric:{c.conditions.get('space_group')}")
            for c in gen.propose(n, {"composition": formula}, rng)]


def structures_for_composition(formula: str, elements: Sequence[str], max_atoms: int, rng: np.random.Generator,
                               n_random: int = 1, methods: Sequence[str] = STRUCTURE_METHODS
                               ) -> list[tuple[Structure, str]]:
    """Structures of ``formula``: matching prototypes and ``n_random`` random symmetric ones.

    Args:
        formula: e.g. ``"SrTiO3"`` (reduced or not).
        elements: the campaign's elements (the random generator's element set).
        max_atoms: largest cell (0: no limit besides pyxtal's).
        rng: the only source of randomness.
        n_random: random symmetric structures wanted.
        methods: which of `STRUCTURE_METHODS` to use.

    Returns:
        ``(structure, structure generator label)`` pairs.
    """
    out: list[tuple[Structure, str]] = []
    if "prototype" in methods:
        out += prototype_structures(formula, max_atoms)
    if "random_symmetric" in methods and n_random > 0:
        try:
            out += random_structures(formula, elements, max_atoms or 40, rng, n_random)
        except (ValueError, KeyError) as exc:  # a formula pyxtal cannot place
            logger.debug("random_symmetric failed for %s: %s", formula, exc)
    return out
