"""Reference phases a campaign computes once to anchor its hulls: known competing phases built from
the prototype library (`build_reference_phase`) and every element in its reference state
(`elemental_reference`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
from pymatgen.core import Structure

from discovery.data.prototypes import _balanced_states, _build, get_prototype
from discovery.errors import DataError

MOLECULE_BOX_A = (11.0, 12.0, 13.0)
MOLECULAR_ELEMENTS = ("H", "N", "O", "F", "Cl", "Br", "I")


def build_reference_phase(formula: str, prototype: str) -> Structure:
    """A known competing phase, e.g. ``("MgCl2", "cdcl2")``, built from a prototype.

    The formula's elements are matched to roles by stoichiometry. When several matches fit (KMgCl3:
    K or Mg on the A site) the charge-balanced one whose contacts agree best is used (for a
    perovskite, the Goldschmidt tolerance factor closest to 1).

    Raises:
        DataError: unknown prototype, unparsable formula, or a formula that does not fit.
    """
    from pymatgen.core import Composition

    proto = get_prototype(prototype)
    try:
        comp = Composition(formula).reduced_composition
    except Exception as exc:  # pymatgen raises several types for bad formulas
        raise DataError(f"reference phase {formula!r}: cannot parse formula ({exc})") from None
    from pymatgen.core import Element

    amounts = {str(getattr(el, "symbol", el)): amt for el, amt in comp.items()}
    unknown = [sym for sym in amounts if not Element.is_valid_symbol(sym)]
    if unknown:
        raise DataError(f"reference phase {formula!r}: unknown element(s) {unknown}")
    role_counts = {r.name: r.count for r in proto.roles}
    g = math.gcd(*role_counts.values())
    fits = []
    if len(amounts) == len(proto.roles):
        for combo in itertools.permutations(amounts, len(proto.roles)):
            species = {r.name: el for r, el in zip(proto.roles, combo, strict=True)}
            if all(abs(amounts[species[r.name]] - r.count / g) < 1e-8 for r in proto.roles):
                fits.append(species)
    if not fits:
        raise DataError(
            f"reference phase {formula}: does not fit prototype {proto.name} "
            f"({proto.formula_pattern}, {proto.description})"
        )
    best: tuple[float, Structure] | None = None
    for species in fits:
        if proto.intermetallic:
            states = None
        else:
            found = _balanced_states(proto, species)
            if not found:
                continue
            states = found[0]
        structure, spread = _build(proto, species, states)
        if best is None or spread < best[0]:
            best = (spread, structure)
    if best is None:
        raise DataError(
            f"reference phase {formula}: no charge-balanced oxidation states place it in "
            f"prototype {proto.name} ({proto.formula_pattern})"
        )
    return best[1]


# ----------------------------------------------------------------------------- elemental references

# Experimental ambient structures for elements whose ASE reference state is not buildable.
# (space group, lattice a, b, c [A], Wyckoff representative); sources: standard crystallographic
# data (alpha-Ga: Sharma & Donohue 1962; black P: Brown & Rundqvist 1965; Se, Te: Cherin & Unger).
_ELEMENT_TABLE: dict[str, tuple[int, tuple[float, float, float], tuple[float, float, float]]] = {
    "Ga": (64, (4.5192, 7.6586, 4.5258), (0.0, 0.1549, 0.0810)),
    "P": (64, (3.3136, 10.478, 4.3763), (0.0, 0.10168, 0.08056)),
    "Se": (152, (4.3662, 4.3662, 4.9536), (0.2254, 0.0, 1 / 3)),
    "Te": (152, (4.4572, 4.4572, 5.9290), (0.2633, 0.0, 1 / 3)),
}
_ASE_SIMPLE = ("bcc", "fcc", "hcp", "diamond", "bct", "rhombohedral", "sc")


def _diatomic_bond_length(symbol: str) -> float:
    from ase.collections import g2
    from ase.data import atomic_numbers, covalent_radii

    name = f"{symbol}2"
    if name in g2.names:
        mol = g2[name]
        return float(mol.get_distance(0, 1))
    return float(2.0 * covalent_radii[atomic_numbers[symbol]])


def elemental_reference(symbol: str) -> tuple[Structure, str]:
    """The elemental ground-state reference of ``symbol`` and a calculation hint.

    Returns:
        ``(structure, hint)`` with hint ``"molecule"`` (diatomic in an 11 x 12 x 13 A box, Gamma
        point, small smearing, O2 as triplet), ``"metal"`` (dense k-points) or ``"crystal"``.
        See the module docstring for the choices.

    Raises:
        DataError: unknown element or no tractable built-in reference.
    """
    from pymatgen.core import Element, Lattice, Structure

    if not Element.is_valid_symbol(symbol):
        raise DataError(f"elemental reference: unknown element {symbol!r}")
    if symbol in MOLECULAR_ELEMENTS:
        d = _diatomic_bond_length(symbol)
        box = np.array(MOLECULE_BOX_A)
        centre = box / 2
        coords = [centre - [0, 0, d / 2], centre + [0, 0, d / 2]]
        s = Structure(Lattice.orthorhombic(*box), [symbol, symbol], coords, coords_are_cartesian=True)
        return s, "molecule"
    hint = "metal" if Element(symbol).is_metal else "crystal"
    if symbol in _ELEMENT_TABLE:
        sg, (a, b, c), xyz = _ELEMENT_TABLE[symbol]
        lattice = Lattice.hexagonal(a, c) if sg in (152,) else Lattice.orthorhombic(a, b, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_spacegroup(sg, lattice, [symbol], [list(xyz)]).get_primitive_structure()
        return s, hint
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    from discovery.structures import from_ase

    state: dict[str, Any] | None = reference_states[atomic_numbers[symbol]]
    if state is None or state.get("symmetry") not in _ASE_SIMPLE:
        what = "none" if state is None else state.get("symmetry")
        raise DataError(
            f"elemental reference: no built-in ground state for {symbol} (ASE reference: {what}); "
            "supply one as a CIF or choose another chemistry"
        )
    try:
        atoms = bulk(symbol)
    except Exception as exc:  # ASE raises ValueError/RuntimeError for missing data
        raise DataError(f"elemental reference: ase.build.bulk({symbol!r}) failed: {exc}") from None
    return from_ase(atoms), hint
