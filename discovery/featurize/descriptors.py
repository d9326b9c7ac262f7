"""Fixed-length hand-crafted descriptors of any ordered crystal (Magpie-style, plus local geometry).

Every site gets a row of properties: 18 of its element (from pymatgen's ``Element`` data, cached per
element) and 3 of its environment. The rows are then aggregated over the sites in nine ways, and four
global quantities of the cell are appended: 9 x 21 + 4 = 193 values per crystal.

Site properties
    Elemental (`ELEMENT_PROPERTIES`): atomic number, Mendeleev number, group, row, Pauling
    electronegativity, atomic radius (A), mean ionic radius (A), atomic mass (amu), melting point (K),
    first ionisation energy (eV), electron affinity (eV), largest and smallest common oxidation state,
    and the valence electrons (all electrons outside the noble-gas core, e.g. Ga 13, Pb 28) in total
    and per s, p, d, f shell.
    Environment (`ENVIRONMENT_PROPERTIES`): the coordination number, i.e. the neighbours within
    ``CN_FACTOR`` (1.25) times that site's own nearest-neighbour distance; their mean distance (A);
    and their mean electronegativity minus the site's (positive for a cation among anions).

Aggregates over sites (`AGGREGATES`)
    ``mean``/``std``/``min``/``max``: composition-fraction weighted (each site counts once, so the
    statistics are over sites); ``cn_mean``: coordination-number weighted mean; ``maxcn``/``mincn``:
    the site with the highest / lowest coordination number (ties averaged); ``cation_maxcn``/
    ``cation_mincn``: the same among *cation-like* sites, those whose neighbours are on average more
    electronegative than they are (all sites when there is none, as in an elemental metal).

    The cation-restricted pair is what separates the A and B cations of a perovskite ABX3 without
    knowing about perovskites: with the 1.25 rule, A has 12 X plus 8 B neighbours (20), B has 6 X and
    X has 2 B, so over all sites ``maxcn`` is A but ``mincn`` is the anion X; among cation-like sites
    ``cation_maxcn`` is A and ``cation_mincn`` is B.

Global (`GLOBAL_PROPERTIES`)
    volume per atom (A^3), density (g/cm^3), number of elements, packing fraction (atomic-radius
    spheres over cell volume).

Missing elemental data
    Pauling electronegativity (He, Ne, Ar): `ELECTRONEGATIVITY_FILL` (0.0, outside the 0.7-4.0 of
    real values, so trees can split it off); atomic radius: pymatgen's calculated radius, then the
    covalent radius, then `ATOMIC_RADIUS_FILL_A` (1.75 A, that of Am) for Bk-Lr; no common oxidation
    state (noble gases): 0; pymatgen's mean ionic radius is already 0 without data; anything else
    missing: 0.

Speed: one Python pass per structure with NumPy inside; the neighbour search is pymatgen's
``Structure.get_neighbor_list``. Measured on 3,787 generated cubic ABX3 perovskites (5 atoms, built
with ``Structure.from_spacegroup("Pm-3m", ...)``), one process on the 2-core development machine
while other jobs ran (load average about 3.5), best of 3: 5,600 structures/s from ``Structure``
objects and 2,800 structures/s from `Candidate` records (half of that time is
``Structure.from_dict``); the 3,787 relaxed Perov-5 validation crystals: 1,950 structures/s from
`Candidate` records.

Units: lengths in A, volumes in A^3, density in g/cm^3, energies in eV, temperatures in K.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

import numpy as np
from pymatgen.core import Structure
from pymatgen.core.periodic_table import Element

from discovery.errors import DataError
from discovery.records import Candidate

logger = logging.getLogger(__name__)

#: Neighbours within this multiple of a site's nearest-neighbour distance count towards its CN.
CN_FACTOR: float = 1.25
#: Electronegativity used where pymatgen has no Pauling value (He, Ne, Ar).
ELECTRONEGATIVITY_FILL: float = 0.0
#: Atomic radius of elements without an empirical, calculated or covalent radius. Units: A.
ATOMIC_RADIUS_FILL_A: float = 1.75

ELEMENT_PROPERTIES: tuple[str, ...] = (
    "Z", "mendeleev_no", "group", "row", "electronegativity", "atomic_radius_a", "ionic_radius_a",
    "atomic_mass_amu", "melting_point_k", "ionization_energy_ev", "electron_affinity_ev",
    "oxidation_max", "oxidation_min", "valence_electrons", "valence_s", "valence_p", "valence_d",
    "valence_f",
)
ENVIRONMENT_PROPERTIES: tuple[str, ...] = (
    "coordination_number", "neighbor_distance_a", "neighbor_delta_electronegativity",
)
SITE_PROPERTIES: tuple[str, ...] = ELEMENT_PROPERTIES + ENVIRONMENT_PROPERTIES
AGGREGATES: tuple[str, ...] = (
    "mean", "std", "min", "max", "cn_mean", "maxcn", "mincn", "cation_maxcn", "cation_mincn",
)
GLOBAL_PROPERTIES: tuple[str, ...] = (
    "volume_per_atom_a3", "density_g_cm3", "n_elements", "packing_fraction",
)
#: Length of every descriptor vector.
DESCRIPTOR_DIM: int = len(AGGREGATES) * len(SITE_PROPERTIES) + len(GLOBAL_PROPERTIES)

_X = ELEMENT_PROPERTIES.index("electronegativity")
_RADIUS = ELEMENT_PROPERTIES.index("atomic_radius_a")
_MASS = ELEMENT_PROPERTIES.index("atomic_mass_amu")
_CN = len(ELEMENT_PROPERTIES)
_DELTA_X = _CN + 2
_AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660  # 1 amu / A^3 = 1.6605 g / cm^3
_SHELL = re.compile(r"\d+([spdf])(\d+)")
#: Relative slack on distance comparisons, so symmetry-equivalent neighbours are never split.
_TOL = 1e-6


def descriptor_names() -> list[str]:
    """Names of the descriptor entries, in order: ``<aggregate>_<site property>``, then globals.

    Examples:
        >>> names = descriptor_names()
        >>> len(names) == DESCRIPTOR_DIM, names[0], names[-1]
        (True, 'mean_Z', 'packing_fraction')
    """
    return [f"{agg}_{prop}" for agg in AGGREGATES for prop in SITE_PROPERTIES] + list(GLOBAL_PROPERTIES)


def _value(getter: Callable[[], object]) -> float:
    """``float(getter())``, NaN when pymatgen has no value (it warns, raises or returns None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = getter()
        except (KeyError, ValueError, TypeError, AttributeError):
            return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


@lru_cache(maxsize=1)
def _covalent_radii_a() -> dict[str, float]:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return dict(CovalentRadius.radius)


def _valence_shells(el: Element) -> tuple[int, int, int, int]:
    """Electrons outside the noble-gas core per s, p, d, f shell ("[Xe].4f14.5d10.6s2" -> 2, 0, 10, 14)."""
    counts = dict.fromkeys("spdf", 0)
    for token in el.electronic_structure.split("."):
        if m := _SHELL.fullmatch(token):
            counts[m.group(1)] += int(m.group(2))
    return counts["s"], counts["p"], counts["d"], counts["f"]


@lru_cache(maxsize=None)
def element_properties(z: int) -> np.ndarray:
    """The `ELEMENT_PROPERTIES` of the element with atomic number ``z`` (cached per element).

    Missing values are filled as the module docstring says, so the result is always finite.

    Returns:
        A read-only float64 array. Shapes: (len(ELEMENT_PROPERTIES),).
    """
    el = Element.from_Z(int(z))
    x = _value(lambda: el.X)
    radius = _value(lambda: el.atomic_radius)
    if not math.isfinite(radius):
        radius = _value(lambda: el.atomic_radius_calculated)
    if not math.isfinite(radius):
        radius = _covalent_radii_a().get(el.symbol, ATOMIC_RADIUS_FILL_A)
    oxidation = tuple(el.common_oxidation_states) or (0,)
    shells = _valence_shells(el)
    row = np.array([
        el.Z, _value(lambda: el.mendeleev_no), _value(lambda: el.group), _value(lambda: el.row),
        x if math.isfinite(x) else ELECTRONEGATIVITY_FILL, radius,
        _value(lambda: el.average_ionic_radius), _value(lambda: el.atomic_mass),
        _value(lambda: el.melting_point), _value(lambda: el.ionization_energy),
        _value(lambda: el.electron_affinity), max(oxidation), min(oxidation), sum(shells), *shells,
    ], dtype=np.float64)
    row[~np.isfinite(row)] = 0.0
    row.setflags(write=False)
    return row


def _environment(structure: Structure, electronegativity: np.ndarray) -> np.ndarray:
    """Coordination number, mean neighbour distance and mean neighbour electronegativity difference.

    The search radius starts near twice the mean interatomic spacing and grows only for sites whose
    ``CN_FACTOR`` shell does not fit; it never needs more than ``CN_FACTOR`` times the shortest cell
    edge, because every site's own periodic image lies within that edge.

    Shapes: (n_sites, 3). Units: distances in A.
    """
    n = len(structure)
    bound = CN_FACTOR * min(structure.lattice.abc) * (1 + _TOL)
    radius = min(bound, CN_FACTOR * 1.5 * (structure.volume / n) ** (1 / 3))
    while True:
        centres, points, _, dists = structure.get_neighbor_list(radius)
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, centres, dists)
        needed = CN_FACTOR * nearest * (1 + _TOL)
        if np.all(needed <= radius) or radius >= bound:
            break
        grow = needed[np.isfinite(needed)].max(initial=0.0)
        if not np.all(np.isfinite(needed)):
            grow = max(grow, 2.0 * radius)
        radius = min(bound, grow)
    if not np.all(np.isfinite(nearest)):  # only for a cell with a degenerate lattice
        raise DataError(f"{structure.composition.reduced_formula}: a site has no neighbour within "
                        f"{bound:.2f} A; expected a periodic crystal")
    keep = dists <= CN_FACTOR * nearest[centres] * (1 + _TOL)
    c, p, d = centres[keep], points[keep], dists[keep]
    cn = np.bincount(c, minlength=n).astype(np.float64)  # >= 1: the nearest neighbour itself
    mean_distance = np.bincount(c, weights=d, minlength=n) / cn
    delta_x = np.bincount(c, weights=electronegativity[p] - electronegativity[c], minlength=n) / cn
    return np.column_stack([cn, mean_distance, delta_x])


def structure_descriptors(structure: Structure) -> np.ndarray:
    """The descriptor vector of one ordered crystal (names in `descriptor_names`).

    Args:
        structure: a periodic, ordered crystal with at least one site.

    Returns:
        float64 array, always finite. Shapes: (DESCRIPTOR_DIM,).

    Raises:
        DataError: the structure is empty or disordered, or a site has no neighbour at all.
    """
    if len(structure) == 0:
        raise DataError("structure_descriptors: the structure has no sites")
    if not structure.is_ordered:
        raise DataError(f"{structure.composition.formula}: disordered structures are not supported")
    z = np.asarray(structure.atomic_numbers, dtype=np.int64)
    elemental = np.stack([element_properties(int(k)) for k in z])
    sites = np.hstack([elemental, _environment(structure, elemental[:, _X])])  # (n_sites, 21)
    cn = sites[:, _CN]
    cation = sites[:, _DELTA_X] > _TOL
    if not cation.any():
        cation = np.ones_like(cation)
    cn_cation = np.where(cation, cn, np.nan)
    aggregates = [
        sites.mean(axis=0), sites.std(axis=0), sites.min(axis=0), sites.max(axis=0),
        cn @ sites / cn.sum(),
        sites[cn == cn.max()].mean(axis=0), sites[cn == cn.min()].mean(axis=0),
        sites[cn_cation == np.nanmax(cn_cation)].mean(axis=0),
        sites[cn_cation == np.nanmin(cn_cation)].mean(axis=0),
    ]
    volume = float(structure.volume)
    n_sites = len(z)
    radii = elemental[:, _RADIUS]
    glob = np.array([
        volume / n_sites,
        elemental[:, _MASS].sum() / volume * _AMU_PER_A3_IN_G_PER_CM3,
        len(np.unique(z)),
        (4.0 / 3.0) * math.pi * float(np.sum(radii**3)) / volume,
    ])
    return np.concatenate([*aggregates, glob])


class DescriptorCache:
    """Descriptors of `Candidate` records, computed once per candidate id and kept in memory.

    One cache can be shared by several surrogates (for instance every policy of a retrospective
    benchmark over the same pool), so a pool is featurised once per process.

    Examples:
        >>> cache = DescriptorCache()
        >>> len(cache)
        0
    """

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._rows

    def descriptors_for(self, candidates: Iterable[Candidate]) -> np.ndarray:
        """Descriptor matrix of ``candidates``, in order.

        Returns:
            float64 array. Shapes: (n, DESCRIPTOR_DIM).

        Raises:
            DataError: a structure cannot be described (names the candidate).
        """
        rows = []
        for cand in candidates:
            row = self._rows.get(cand.id)
            if row is None:
                try:
                    row = structure_descriptors(cand.pmg)
                except DataError as exc:
                    raise DataError(f"candidate {cand.id} ({cand.formula}): {exc}") from exc
                row.setflags(write=False)
                self._rows[cand.id] = row
            rows.append(row)
        if not rows:
            return np.zeros((0, DESCRIPTOR_DIM))
        return np.stack(rows)


def descriptors_for(candidates: Sequence[Candidate], cache: DescriptorCache | None = None) -> np.ndarray:
    """Descriptor matrix of ``candidates`` (through ``cache`` when given). Shapes: (n, DESCRIPTOR_DIM)."""
    return (cache if cache is not None else DescriptorCache()).descriptors_for(candidates)
