"""Canonical ids, validity checks, de-duplication and novelty, pymatgen <-> ase.

Everything here works on pymatgen ``Structure`` objects and `Candidate` records. The heavy lifting
is done by spglib (standardisation, Niggli reduction, lattice automorphisms; called directly
because it is ~3x faster than going through pymatgen's ``SpacegroupAnalyzer``), pymatgen
(``StructureMatcher``, primitive cells) and smact (charge neutrality and electronegativity).

Canonical ids
    `candidate_id` hashes a canonical text form of a crystal. The form is the same for every
    description of the same crystal: any site order, any choice of (super)cell, any origin,
    wrapped or unwrapped coordinates and numeric noise far below the rounding grid. Steps:

    1. drop oxidation states and site properties;
    2. spglib primitive standard cell (``symprec=0.01`` A, which also idealises positions of
       symmetric structures), falling back to pymatgen's ``get_primitive_structure`` when spglib
       fails or changes the composition;
    3. Niggli reduction (spglib);
    4. over every automorphism of the reduced lattice (the rotations of its holohedry, proper and
       improper, at most 48, from spglib) and every origin on a site of the rarest element,
       express the fractional coordinates in that setting, round them to a 1/48 grid (about
       0.1 A on a 5 A axis) and sort them; the lexicographically smallest list wins;
    5. hash ``formula | rounded lattice parameters | that list`` with sha256.

    A supercell therefore gets the id of its primitive cell, and mirror images (enantiomorphs)
    share an id, as they do under ``StructureMatcher``. The grid 1/48 has no rounding boundary on a
    special position (multiples of 1/24), lattice lengths round to 0.01 A and angles to 0.1 degree.
    Noise that happens to straddle a rounding boundary can still change the id of a low-symmetry
    structure; `CandidateFilter` catches those cases with ``StructureMatcher``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery.records import Candidate

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure


logger = logging.getLogger(__name__)

ID_PREFIX = "c"
ID_HEX_CHARS = 16
SYMPREC_A = 0.01
ANGLE_TOLERANCE_DEG = 5.0
FRAC_GRID = 48
LENGTH_DECIMALS = 2
ANGLE_DECIMALS = 1



@contextmanager
def quiet_spglib() -> Iterator[None]:
    """Silence spglib's C-level warnings and Python warnings for the duration of a block."""
    old = os.environ.get("SPGLIB_WARNING")
    os.environ["SPGLIB_WARNING"] = "OFF"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if old is None:
            os.environ.pop("SPGLIB_WARNING", None)
        else:
            os.environ["SPGLIB_WARNING"] = old


def _plain(structure: Structure) -> Structure:
    """A copy without oxidation states or site properties (structure-level properties are kept)."""
    from pymatgen.core import Structure

    return Structure(
        structure.lattice,
        [site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie) for site in structure],
        structure.frac_coords,
        properties=dict(getattr(structure, "properties", None) or {}),
    )


def _spglib_cell(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return np.array(structure.lattice.matrix, dtype=float), np.array(structure.frac_coords, dtype=float), numbers


def _standard_cell(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """spglib primitive standard cell, Niggli reduced; fallbacks as in `standardize`.

    Returns:
        ``(lattice rows, fractional coordinates in [0, 1), atomic numbers)``.
    """
    import spglib

    lattice, frac, numbers = _spglib_cell(structure)
    cell = None
    with quiet_spglib():
        try:
            cell = spglib.standardize_cell((lattice, frac, numbers), to_primitive=True, symprec=SYMPREC_A,
                                           angle_tolerance=ANGLE_TOLERANCE_DEG)
        except Exception:  # spglib >= 2.5 may raise instead of returning None
            cell = None
        if cell is not None:
            lat2, frac2, num2 = (np.asarray(x) for x in cell)
            same = sorted(np.unique(num2, return_counts=True)[1] / len(num2)) == sorted(
                np.unique(numbers, return_counts=True)[1] / len(numbers))
            cell = (lat2, frac2, num2) if same else None
        if cell is None:
            try:
                prim = _plain(structure).get_primitive_structure()
            except Exception:
                prim = structure
            cell = _spglib_cell(prim)
        lat, frac, numbers = cell
        try:
            reduced = spglib.niggli_reduce(lat)
        except Exception:
            reduced = None
        if reduced is not None and abs(np.linalg.det(reduced)) > 1e-8:
            frac = frac @ lat @ np.linalg.inv(reduced)
            lat = np.asarray(reduced)
    return lat, np.mod(frac, 1.0), np.asarray(numbers)


def standardize(structure: Structure) -> Structure:
    """Primitive, standardised, Niggli-reduced copy of ``structure`` (species as plain elements).

    Args:
        structure: any periodic, ordered structure.

    Returns:
        The spglib primitive standard cell (positions idealised within ``SYMPREC_A``), Niggli
        reduced with spglib. When spglib fails, pymatgen's ``get_primitive_structure`` (and,
        failing that, the structure itself) is reduced instead.
    """
    from pymatgen.core import Structure

    lat, frac, numbers = _standard_cell(structure)
    return Structure(lat, [int(z) for z in numbers], frac)


def _lattice_automorphisms(lattice: np.ndarray) -> tuple[np.ndarray, ...]:
    """Integer matrices W (acting on fractional column vectors) that map the lattice onto itself.

    These are the rotations of the lattice's holohedry found by spglib on a one-atom cell, proper
    and improper (at most 48). They depend only on the metric tensor up to scale, so results are
    cached by the scale-normalised metric rounded to 1e-4.
    """
    metric = lattice @ lattice.T
    key = tuple(np.round(metric / metric[0, 0], 4).ravel().tolist())
    found = _AUTOMORPHISMS.get(key)
    if found is None:
        found = _spglib_automorphisms(lattice)
        if len(_AUTOMORPHISMS) >= _AUTOMORPHISMS_MAX:
            _AUTOMORPHISMS.clear()
        _AUTOMORPHISMS[key] = found
    return found


_AUTOMORPHISMS: dict[tuple[float, ...], tuple[np.ndarray, ...]] = {}
_AUTOMORPHISMS_MAX = 20000


def _spglib_automorphisms(lattice: np.ndarray) -> tuple[np.ndarray, ...]:
    import spglib

    with quiet_spglib():
        try:
            sym = spglib.get_symmetry((lattice, [[0.0, 0.0, 0.0]], [1]), symprec=SYMPREC_A,
                                      angle_tolerance=ANGLE_TOLERANCE_DEG)
        except Exception:
            sym = None
    if not sym:
        return (np.eye(3, dtype=np.int64),)
    return tuple(np.unique(np.asarray(sym["rotations"]), axis=0))


def canonical_text(structure: Structure) -> str:
    """The canonical text form hashed by `candidate_id` (see the module docstring)."""
    from pymatgen.core import Element, Lattice

    lat, frac, numbers = _standard_cell(structure)
    symbols = [Element.from_Z(int(z)).symbol for z in numbers]
    elements = sorted(set(symbols))
    codes = np.array([elements.index(x) for x in symbols])
    counts = np.bincount(codes)
    rarest = int(np.argmin(counts))  # ties resolve to the alphabetically first element
    origins = frac[codes == rarest]

    best: tuple | None = None
    for w in _lattice_automorphisms(lat):
        for origin in origins:
            shifted = (frac - origin) @ w.T
            grid = np.mod(np.rint(shifted * FRAC_GRID).astype(np.int64), FRAC_GRID)
            key = tuple(sorted(zip(codes.tolist(), *grid.T.tolist())))
            if best is None or key < best:
                best = key
    lattice = Lattice(lat)
    formula = "".join(f"{el}{int(n)}" for el, n in zip(elements, counts // np.gcd.reduce(counts)))
    lengths = ",".join(f"{x:.{LENGTH_DECIMALS}f}" for x in lattice.abc)
    angles = ",".join(f"{x:.{ANGLE_DECIMALS}f}" for x in lattice.angles)
    sites = ";".join(f"{elements[c]}:{i},{j},{k}" for c, i, j, k in best or ())
    return f"{formula}|{lengths}|{angles}|{sites}"


def candidate_id(structure: Structure) -> str:
    """Canonical content hash of a crystal: ``"c"`` + 16 hex characters of sha256.

    Invariant to site order, cell choice (supercells included), translations, wrapping and tiny
    numeric noise; different for different compositions or clearly different structures.

    Args:
        structure: a pymatgen Structure.

    Returns:
        The id, e.g. ``"c3f1a0e2b9c4d5e6f"``.
    """
    digest = hashlib.sha256(canonical_text(structure).encode()).hexdigest()
    return ID_PREFIX + digest[:ID_HEX_CHARS]


def make_candidate(
    structure: Structure,
    generator: str,
    generator_version: str = "0",
    parent_ids: Sequence[str] = (),
    conditions: dict[str, Any] | None = None,
    round: int = -1,  # noqa: A002 - the record's field name
) -> Candidate:
    """Wrap a structure into a `Candidate` with its canonical id and reduced formula.

    Oxidation states and site properties are dropped from the stored structure.
    """
    plain = _plain(structure)
    return Candidate(
        id=candidate_id(plain),
        structure=plain.as_dict(),
        formula=plain.composition.reduced_formula,
        generator=generator,
        generator_version=generator_version,
        parent_ids=tuple(parent_ids),
        conditions=dict(conditions or {}),
        round=round,
    )


# ----------------------------------------------------------------------------- validity


def closest_pair(structure: Structure, min_distance_a: float = 0.5,
                 covalent_fraction: float = 0.0) -> tuple[float, float, str] | None:
    """The pair of sites closest relative to its threshold, when it is closer than that threshold.

    A pair's threshold is ``max(min_distance_a, covalent_fraction * (r_i + r_j))`` with ASE's
    covalent radii (``covalent_fraction = 0``: a plain minimum distance). Periodic images count,
    a site's own images included. This is the one pair-distance check of the house: generation
    validity (`structural_problem`) and the DFT pre-check (with covalent radii) both use it.

    Returns:
        ``(distance, threshold, "A-B")`` in A for the worst pair, or None.
    """
    radii = None
    cutoff = min_distance_a
    if covalent_fraction > 0:
        from ase.data import covalent_radii

        radii = np.array([covalent_radii[site.specie.Z] for site in structure])
        cutoff = max(cutoff, 2 * covalent_fraction * float(radii.max()))
    centers, points, _, dists = structure.get_neighbor_list(cutoff, exclude_self=True)
    if not len(dists):
        return None
    limits = np.full(len(dists), min_distance_a)
    if radii is not None:
        limits = np.maximum(limits, covalent_fraction * (radii[centers] + radii[points]))
    ratio = dists / limits
    k = int(np.argmin(ratio))
    if ratio[k] >= 1.0:
        return None
    pair = f"{structure[int(centers[k])].specie.symbol}-{structure[int(points[k])].specie.symbol}"
    return float(dists[k]), float(limits[k]), pair


def structural_problem(structure: Structure, min_distance_a: float = 0.5) -> str | None:
    """Why a structure is not physically sensible, or None when it is.

    Checks: at least one site, finite lattice and coordinates, positive finite volume, and every
    pair distance (periodic images and a site's own images included) at least ``min_distance_a``
    (`closest_pair`).

    Units: min_distance_a in A.
    """
    if structure is None or len(structure) == 0:
        return "no sites"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)):
        return "lattice has NaN or infinite entries"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "coordinates have NaN or infinite entries"
    volume = abs(float(np.linalg.det(matrix)))  # left-handed cells are valid descriptions
    if not np.isfinite(volume) or volume < 1e-6:
        return f"cell volume {volume:.3g} A^3 is not positive"
    if volume / len(structure) > 1e4:
        return f"volume per atom {volume / len(structure):.3g} A^3 is absurd"
    try:
        close = closest_pair(structure, min_distance_a)
    except Exception as exc:  # neighbour search fails on degenerate cells
        return f"neighbour search failed: {exc}"
    if close is not None:
        d, _, pair = close
        return f"atoms {pair} only {d:.3f} A apart (minimum {min_distance_a} A)"
    return None


def composition_problem(structure: Structure) -> str | None:
    """Why a composition is chemically implausible per SMACT, or None when it passes.

    Uses ``smact.screening.smact_validity``: some assignment of SMACT's (ICSD-2024) oxidation
    states must be charge neutral and pass the Pauling electronegativity test (anions more
    electronegative than cations). Decisions:

    * elemental compositions are valid (nothing to balance);
    * all-metal compositions (intermetallics, Heuslers) are valid (``include_alloys=True``);
    * mixed valence (Fe3O4, Mn3O4) is allowed (``mixed_valence=True``).
    """
    from smact.screening import smact_validity

    comp = structure.composition.element_composition
    if len(comp.elements) <= 1:
        return None
    formula = comp.reduced_formula
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = smact_validity(comp, use_pauling_test=True, include_alloys=True, mixed_valence=True)
    except Exception as exc:  # smact has no data for some elements
        return f"{formula}: SMACT cannot check this composition ({type(exc).__name__}: {exc})"
    if not ok:
        return f"{formula}: no charge-neutral, electronegativity-ordered oxidation states (SMACT)"
    return None


# ----------------------------------------------------------------------------- matching



#: StructureMatcher tolerances that decide "the same crystal" for de-duplication, novelty and
#: rediscovery (pymatgen's defaults). Generation metrics use CD-VAE's looser ones
#: (`discovery.metrics`), a different question.
NOVELTY_MATCHER: dict[str, float] = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


def structure_matcher(**overrides: Any):
    """A pymatgen ``StructureMatcher`` with `NOVELTY_MATCHER` tolerances (``overrides`` win)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**{**NOVELTY_MATCHER, **overrides})


# ----------------------------------------------------------------------------- ase


def to_ase(structure: Structure) -> Atoms:
    """pymatgen Structure -> ase Atoms (via pymatgen's AseAtomsAdaptor)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def from_ase(atoms: Atoms) -> Structure:
    """ase Atoms -> pymatgen Structure (via pymatgen's AseAtomsAdaptor)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


def symmetrized(structure: Structure, symprec: float = 1e-3) -> Structure:
    """The primitive standard cell with positions snapped to the symmetry found within ``symprec`` (A).

    An MLIP relaxation leaves symmetric structures symmetric only to ~1e-4 A; DFT codes detect
    symmetry far more strictly, so without snapping a cubic perovskite is treated as P1 and its
    k-point set is several times larger. Returns the input unchanged when spglib finds nothing.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with quiet_spglib():
            return SpacegroupAnalyzer(structure, symprec=symprec).get_primitive_standard_structure()
    except Exception:  # noqa: BLE001 - spglib failures leave the structure as it is
        return structure


def space_group_symbol(structure: Any, symprec: float = 0.1) -> str | None:
    """Hermann-Mauguin symbol of ``structure`` (spglib via pymatgen), or None where spglib fails
    (degenerate generated cells)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_symbol()
    except Exception:  # noqa: BLE001 - spglib raises several types on degenerate cells
        return None
