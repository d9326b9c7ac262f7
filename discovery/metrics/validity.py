"""CD-VAE's validity of a generated crystal: structural and compositional (MODELS.md 4.5).

Follows ``scripts/compute_metrics.py: Crystal`` and ``scripts/eval_utils.py`` of txie-93/cdvae
(snapshot f857f598; CD-VAE ran pymatgen 2020.12.31 and smact 2.2.1).

Structural validity (`structurally_valid`), as CD-VAE:

- the crystal can be built (`crystal_from_arrays` returns None otherwise; a generator that fails
  to decode passes None) and its lattice lengths are positive;
- volume >= 0.1 A^3;
- every pair distance >= 0.5 A. The distance part is the house's single definition,
  `discovery.structures.structural_problem`, which deviates from CD-VAE's
  ``structure.distance_matrix`` check in three small ways: it also counts a site's distance to its
  *own* periodic images (so a lattice vector shorter than 0.5 A is invalid; CD-VAE pads the
  diagonal and would accept it), it searches neighbours exactly with ``get_neighbor_list`` (pymatgen's
  ``distance_matrix`` looks at adjacent images of the reduced cell only), and it rejects more than
  1e4 A^3 per atom and non-finite coordinates. None of these occurs in a sensible crystal.

Compositional validity (`compositionally_valid` / `smact_valid`), as CD-VAE's ``smact_validity``:

- the element counts are reduced by their gcd, elements ordered by atomic number;
- a single element is valid; if every element is in ``smact.metals`` (an alloy) it is valid;
- otherwise some combination of SMACT oxidation states must be charge neutral
  (``smact.neutral_ratios`` with ``stoichs = [(count,), ...]`` and ``threshold = max(count)``) and
  pass the Pauling electronegativity test.

Pinned to smact 2.2.1's semantics (we run smact 4.0.2, whose defaults changed):

- oxidation states: 2.2.1's ``Element.oxidation_states`` was the SMACT 2014 list
  (``oxidation_states.txt``); smact >= 3.0 (WMD-group/SMACT PR #346, Dec 2024) made the ICSD-24 list
  the default and kept the old one as ``Element.oxidation_states_smact14``, which we use. The data
  file may carry small corrections made after 2.2.1 (not checked line by line);
- Pauling test: in 2.2.1 a missing electronegativity made ``pauling_test`` raise ``TypeError``,
  which CD-VAE caught and counted as *passing*; 4.0.2 returns False instead. `_pauling_ok`
  reproduces 2.2.1 (pairs in order, first opposite-charge pair with a missing electronegativity
  passes the whole test). ``smact.metals`` is used as shipped.

Differences from the house's `discovery.structures.composition_problem` (the campaign filter): that one
uses smact 4's ICSD-24 states and allows mixed valence; this module is for numbers comparable with
the CD-VAE paper. A composition SMACT has no data for (``smact.Element`` raises) is invalid here
(CD-VAE would crash).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

#: CD-VAE's structural thresholds. Units: A and A^3.
MIN_DISTANCE_A = 0.5
MIN_VOLUME_A3 = 0.1


def crystal_from_arrays(frac_coords, atom_types, lengths, angles):
    """Build a pymatgen Structure as CD-VAE's ``Crystal.get_structure`` does, or None.

    None when a lattice length is not positive or pymatgen cannot build the crystal (CD-VAE then
    counts the crystal structurally invalid).

    Args:
        frac_coords: fractional coordinates. Shapes: (n_atoms, 3).
        atom_types: atomic numbers. Shapes: (n_atoms,).
        lengths: a, b, c. Units: A. Shapes: (3,).
        angles: alpha, beta, gamma. Units: degrees. Shapes: (3,).

    Returns:
        The Structure (lattice from the six parameters), or None.
    """
    from pymatgen.core import Lattice, Structure

    lengths = np.asarray(lengths, dtype=float).reshape(-1)
    angles = np.asarray(angles, dtype=float).reshape(-1)
    if lengths.size != 3 or angles.size != 3 or not np.all(np.isfinite(lengths)) or lengths.min() <= 0:
        return None
    try:
        return Structure(Lattice.from_parameters(*lengths.tolist(), *angles.tolist()),
                         [int(z) for z in np.asarray(atom_types).reshape(-1)],
                         np.asarray(frac_coords, dtype=float).reshape(-1, 3), coords_are_cartesian=False)
    except Exception:  # noqa: BLE001 - any construction failure means "not buildable", as in CD-VAE
        return None


def structurally_valid(structure, min_distance_a: float = MIN_DISTANCE_A,
                       min_volume_a3: float = MIN_VOLUME_A3) -> bool:
    """CD-VAE's structural validity (module docstring): built, positive lengths, volume, distances.

    Args:
        structure: a pymatgen Structure, or None (a failed decode: invalid).
        min_distance_a: smallest allowed pair distance. Units: A.
        min_volume_a3: smallest allowed cell volume. Units: A^3.
    """
    from discovery.structures import structural_problem

    if structure is None or len(structure) == 0:
        return False
    try:
        lengths = np.asarray(structure.lattice.abc, dtype=float)
        volume = float(structure.volume)
    except Exception:  # noqa: BLE001 - degenerate lattices make pymatgen raise
        return False
    if not np.all(np.isfinite(lengths)) or lengths.min() <= 0:
        return False
    if not math.isfinite(volume) or volume < min_volume_a3:
        return False
    return structural_problem(structure, min_distance_a) is None


def reduced_counts(composition) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols (by atomic number) and their gcd-reduced integer counts, as CD-VAE builds them.

    Args:
        composition: a pymatgen Structure, Composition or formula string.
    """
    from pymatgen.core import Composition

    comp = composition.composition if hasattr(composition, "composition") else Composition(composition)
    comp = comp.element_composition
    amounts = np.array([comp[el] for el in comp.elements], dtype=float)
    if np.allclose(amounts, np.round(amounts), atol=1e-6):
        counts = np.round(amounts).astype(np.int64)
    else:  # fractional amounts (a formula like Fe0.5O0.5): the smallest integer formula
        formula, _ = comp.get_integer_formula_and_factor()
        comp = Composition(formula).element_composition
        counts = np.array([round(comp[el]) for el in comp.elements], dtype=np.int64)
    order = np.argsort([el.Z for el in comp.elements], kind="stable")
    counts = counts[order]
    g = int(np.gcd.reduce(counts)) if counts.size else 1
    return tuple(comp.elements[i].symbol for i in order), tuple(int(c) // max(g, 1) for c in counts)


def _pauling_ok(ox_states: Sequence[int], enegs: Sequence[float | None]) -> bool:
    """smact 2.2.1's ``eneg_states_test`` as CD-VAE used it (a missing value passes; docstring)."""
    for (ox1, en1), (ox2, en2) in itertools.combinations(zip(ox_states, enegs, strict=True), 2):
        if (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0):
            if en1 is None or en2 is None:
                return True  # 2.2.1 raised TypeError here; CD-VAE caught it as "electronegativity OK"
            if (ox1 > 0 and en1 >= en2) or (ox1 < 0 and en1 <= en2):
                return False
    return True


@lru_cache(maxsize=65536)
def smact_valid(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    """CD-VAE's ``smact_validity`` on reduced counts (module docstring), with smact 2.2.1 semantics.

    Args:
        symbols: element symbols, ordered by atomic number.
        counts: their gcd-reduced integer counts.
    """
    import smact

    if len(set(symbols)) <= 1:
        return len(symbols) == 1
    if all(s in smact.metals for s in symbols):
        return True
    try:
        elements = [smact.Element(s) for s in symbols]
    except Exception as exc:  # noqa: BLE001 - smact has no data for the element
        log.debug("SMACT cannot check %s: %s", symbols, exc)
        return False
    enegs = [e.pauling_eneg for e in elements]
    ox_lists = [list(e.oxidation_states_smact14 or []) for e in elements]
    stoichs = [(int(c),) for c in counts]
    threshold = int(max(counts))
    for ox_states in itertools.product(*ox_lists):
        if smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold) and _pauling_ok(ox_states, enegs):
            return True
    return False


def compositionally_valid(structure) -> bool:
    """CD-VAE's SMACT compositional validity (module docstring).

    Args:
        structure: a pymatgen Structure, Composition or formula string; None (a failed decode) is invalid.
    """
    if structure is None:
        return False
    try:
        symbols, counts = reduced_counts(structure)
    except Exception:  # noqa: BLE001 - unparsable formula or empty structure
        return False
    return bool(symbols) and smact_valid(symbols, counts)
