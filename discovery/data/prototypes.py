"""Built-in prototype library, seed structures, reference phases and elemental references.

Every prototype is generated offline from its space group and Wyckoff positions with pymatgen's
``Structure.from_spacegroup``; nothing is downloaded. A prototype declares *site roles* (for the
perovskite ABX3: A cation x1, B cation x1, X anion x3), the oxidation-state sign of each role and
a Shannon coordination number per role.

Lattice constants
    Ionic prototypes: radii are Shannon *crystal* radii of the assigned oxidation state at the
    role's coordination number (nearest tabulated coordination when the exact one is missing),
    falling back to pymatgen's ``Species.ionic_radius`` (also a crystal radius) and then to the
    atomic radius. Each cation-anion contact of the prototype, measured in a trial cell, asks for a
    scale at which it equals ``r_cation + r_anion``; the largest of these scales is used, so no
    bond starts compressed (the others start stretched; relaxation fixes them).
    Intermetallic prototypes (Heuslers): every nearest-neighbour contact asks for
    ``r_i + r_j`` with 12-coordinate metallic radii (atomic radius where pymatgen has none); the
    mean of the requested scales is used.

Intermetallics
    Heusler roles carry sign 0: no charge balance is required. To keep seeds chemically sensible,
    their X/Y roles take transition metals or rare earths and their Z role a main-group element of
    groups 13-15 (Al, Ga, In, Si, Ge, Sn, Sb, Bi, ...), as in known Heusler compounds.

Seeds
    `seed_structures` decorates every prototype whose primitive cell fits ``max_atoms`` with every
    assignment of distinct campaign elements to its roles that has a charge-balanced choice of
    pymatgen common oxidation states of the right signs and passes the Pauling electronegativity
    order (every anion more electronegative than every cation). All such assignments are kept
    (KMgCl3 and MgKCl3 perovskites both appear); the surrogate and DFT decide which is better.

Elemental references (`elemental_reference`)
    * ``"molecule"``: H, N, O, F, Cl, Br, I as diatomic molecules centred in an 11 x 12 x 13 A
      periodic box; bond lengths from ASE's G2 set (H2, N2, O2, F2, Cl2) or, for Br2 and I2
      (not in G2), twice ASE's covalent radius. O2 must be computed as a triplet (DFT worker).
    * ``"metal"``: elements pymatgen calls metals; ``"crystal"``: the others (C, Si, Ge, As, Sb,
      Se, Te, P, noble-gas solids...). Both use ``ase.build.bulk`` with ASE's reference state
      when that is a simple bulk (bcc, fcc, hcp, diamond, bct, rhombohedral, sc). Where ASE's
      reference is not a buildable ground state, a small built-in table of experimental
      structures is used: alpha-Ga (Cmce), black P (Cmce), trigonal Se and Te (P3_121).
    * Elements with no tractable built-in reference (B, S, Mn and the actinides, whose ground
      states have tens to hundreds of atoms or no ASE data) raise `DataError`.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from discovery.errors import DataError

if TYPE_CHECKING:
    from pymatgen.core import Lattice, Structure

    from discovery.records import Candidate

logger = logging.getLogger(__name__)

_HEUSLER_Z_GROUPS = (13, 14, 15)
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10,
          "XI": 11, "XII": 12, "XIV": 14}


@dataclass(frozen=True)
class Role:
    """One site role of a prototype.

    Attributes:
        name: label used in ``species`` mappings ("A", "B", "X", ...).
        count: atoms of this role per formula unit.
        kind: ``cation`` (positive oxidation state), ``anion`` (negative), or, for intermetallic
            prototypes, ``tm`` (transition metal or rare earth) or ``pblock`` (groups 13-15
            metal or metalloid).
        cn: Shannon coordination number (Roman numeral) used to look up ionic radii.
    """

    name: str
    count: int
    kind: str
    cn: str = "VI"

    @property
    def sign(self) -> int:
        """+1 for cations, -1 for anions, 0 for intermetallic roles (no charge balance)."""
        return {"cation": 1, "anion": -1}.get(self.kind, 0)


@dataclass(frozen=True)
class Prototype:
    """A structure type: space group, lattice shape, one Wyckoff site per role.

    Attributes:
        name: library key.
        description: human-readable name and a known example.
        spacegroup: international number.
        lattice: function of the scale ``a`` returning the conventional lattice.
        sites: ``(role name, fractional coordinates)`` of one representative per Wyckoff site.
        roles: the roles, in formula order.
        n_atoms: atoms in the primitive cell.
    """

    name: str
    description: str
    spacegroup: int
    lattice: Callable[[float], Lattice]
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    roles: tuple[Role, ...]
    n_atoms: int

    @property
    def intermetallic(self) -> bool:
        return all(r.sign == 0 for r in self.roles)

    def role(self, name: str) -> Role:
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def formula_pattern(self) -> str:
        """E.g. ``A1B1X3``."""
        return "".join(f"{r.name}{r.count}" for r in self.roles)


def _cubic(a: float) -> Lattice:
    from pymatgen.core import Lattice

    return Lattice.cubic(a)


def _hex(c_over_a: float) -> Callable[[float], Lattice]:
    def make(a: float) -> Lattice:
        from pymatgen.core import Lattice

        return Lattice.hexagonal(a, a * c_over_a)

    return make


def _tetragonal(c_over_a: float) -> Callable[[float], Lattice]:
    def make(a: float) -> Lattice:
        from pymatgen.core import Lattice

        return Lattice.tetragonal(a, a * c_over_a)

    return make


_IDEAL_HCP = math.sqrt(8.0 / 3.0)

_PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in (
        Prototype("rocksalt", "rock salt (B1), NaCl", 225, _cubic,
                  (("A", (0, 0, 0)), ("X", (0.5, 0.5, 0.5))),
                  (Role("A", 1, "cation", "VI"), Role("X", 1, "anion", "VI")), 2),
        Prototype("cscl", "caesium chloride (B2), CsCl", 221, _cubic,
                  (("A", (0, 0, 0)), ("X", (0.5, 0.5, 0.5))),
                  (Role("A", 1, "cation", "VIII"), Role("X", 1, "anion", "VIII")), 2),
        Prototype("zincblende", "zinc blende (B3), ZnS", 216, _cubic,
                  (("A", (0, 0, 0)), ("X", (0.25, 0.25, 0.25))),
                  (Role("A", 1, "cation", "IV"), Role("X", 1, "anion", "IV")), 2),
        Prototype("wurtzite", "wurtzite (B4), ZnO; ideal c/a and u = 3/8", 186, _hex(_IDEAL_HCP),
                  (("A", (1 / 3, 2 / 3, 0)), ("X", (1 / 3, 2 / 3, 0.375))),
                  (Role("A", 1, "cation", "IV"), Role("X", 1, "anion", "IV")), 4),
        Prototype("nias", "nickel arsenide (B8_1), NiAs; ideal c/a", 194, _hex(_IDEAL_HCP),
                  (("A", (0, 0, 0)), ("X", (1 / 3, 2 / 3, 0.25))),
                  (Role("A", 1, "cation", "VI"), Role("X", 1, "anion", "VI")), 4),
        Prototype("fluorite", "fluorite (C1), CaF2", 225, _cubic,
                  (("A", (0, 0, 0)), ("X", (0.25, 0.25, 0.25))),
                  (Role("A", 1, "cation", "VIII"), Role("X", 2, "anion", "IV")), 3),
        Prototype("antifluorite", "antifluorite, Li2O / K2S", 225, _cubic,
                  (("A", (0.25, 0.25, 0.25)), ("X", (0, 0, 0))),
                  (Role("A", 2, "cation", "IV"), Role("X", 1, "anion", "VIII")), 3),
        Prototype("rutile", "rutile (C4), TiO2; u = 0.305, c/a = 0.644", 136, _tetragonal(0.644),
                  (("A", (0, 0, 0)), ("X", (0.305, 0.305, 0))),
                  (Role("A", 1, "cation", "VI"), Role("X", 2, "anion", "III")), 6),
        Prototype("cdcl2", "cadmium chloride (C19), layered AX2, R-3m; ccp anions", 166, _hex(4.54),
                  (("A", (0, 0, 0)), ("X", (0, 0, 0.25))),
                  (Role("A", 1, "cation", "VI"), Role("X", 2, "anion", "III")), 3),
        Prototype("cdi2", "cadmium iodide (C6), layered AX2, P-3m1; hcp anions", 164, _hex(_IDEAL_HCP),
                  (("A", (0, 0, 0)), ("X", (1 / 3, 2 / 3, 0.25))),
                  (Role("A", 1, "cation", "VI"), Role("X", 2, "anion", "III")), 3),
        Prototype("reo3", "rhenium trioxide (D0_9), ReO3 / ScF3", 221, _cubic,
                  (("A", (0, 0, 0)), ("X", (0.5, 0, 0))),
                  (Role("A", 1, "cation", "VI"), Role("X", 3, "anion", "II")), 4),
        Prototype("perovskite", "cubic perovskite (E2_1), ABX3, SrTiO3", 221, _cubic,
                  (("A", (0.5, 0.5, 0.5)), ("B", (0, 0, 0)), ("X", (0.5, 0, 0))),
                  (Role("A", 1, "cation", "XII"), Role("B", 1, "cation", "VI"),
                   Role("X", 3, "anion", "VI")), 5),
        Prototype("antiperovskite", "inverse (anti-)perovskite M3BA, Li3OCl", 221, _cubic,
                  (("M", (0.5, 0, 0)), ("B", (0, 0, 0)), ("A", (0.5, 0.5, 0.5))),
                  (Role("M", 3, "cation", "VI"), Role("B", 1, "anion", "VI"),
                   Role("A", 1, "anion", "XII")), 5),
        Prototype("corundum", "corundum (D5_1), Al2O3; 10 atoms", 167, _hex(2.730),
                  (("A", (0, 0, 0.3523)), ("X", (0.3064, 0, 0.25))),
                  (Role("A", 2, "cation", "VI"), Role("X", 3, "anion", "IV")), 10),
        Prototype("half_heusler", "half-Heusler (C1_b), XYZ, TiNiSn; intermetallic", 216, _cubic,
                  (("X", (0.5, 0.5, 0.5)), ("Y", (0.25, 0.25, 0.25)), ("Z", (0, 0, 0))),
                  (Role("X", 1, "tm"), Role("Y", 1, "tm"), Role("Z", 1, "pblock")), 3),
        Prototype("full_heusler", "full Heusler (L2_1), X2YZ, Cu2MnAl; intermetallic", 225, _cubic,
                  (("X", (0.25, 0.25, 0.25)), ("Y", (0.5, 0.5, 0.5)), ("Z", (0, 0, 0))),
                  (Role("X", 2, "tm"), Role("Y", 1, "tm"), Role("Z", 1, "pblock")), 4),
    )
}

_ALIASES = {
    "b1": "rocksalt", "rock_salt": "rocksalt", "nacl": "rocksalt",
    "b2": "cscl", "cesium_chloride": "cscl", "caesium_chloride": "cscl",
    "b3": "zincblende", "zinc_blende": "zincblende", "sphalerite": "zincblende",
    "b4": "wurtzite", "caf2": "fluorite", "anti_fluorite": "antifluorite",
    "tio2": "rutile", "anti_perovskite": "antiperovskite", "inverse_perovskite": "antiperovskite",
    "l21": "full_heusler", "heusler": "full_heusler", "c1b": "half_heusler",
}


def prototype_names() -> list[str]:
    """Names of the built-in prototypes, sorted by primitive-cell size then name."""
    return sorted(_PROTOTYPES, key=lambda n: (_PROTOTYPES[n].n_atoms, n))


def get_prototype(name: str) -> Prototype:
    """Look up a prototype by name or alias (case-insensitive).

    Raises:
        DataError: unknown name.
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _PROTOTYPES:
        raise DataError(f"unknown prototype {name!r}; expected one of {', '.join(prototype_names())}")
    return _PROTOTYPES[key]


# ----------------------------------------------------------------------------- radii


def _cn_number(cn: str) -> int:
    return _ROMAN.get(cn.rstrip("SQPY"), 6)


def ionic_radius(symbol: str, oxidation_state: int, cn: str = "VI") -> float:
    """Shannon crystal radius of an ion at a coordination number, with fallbacks.

    Looks up the exact coordination, else the nearest tabulated one (high spin preferred for
    transition metals), else pymatgen's ``Species.ionic_radius``, else the atomic radius.

    Units: A.
    """
    from pymatgen.core import Element, Species

    el = Element(symbol)
    table = (el.data.get("Shannon radii") or {}).get(str(int(oxidation_state)))
    if table:
        want = _cn_number(cn)
        best = min(table, key=lambda c: (abs(_cn_number(c) - want), c != cn, c))
        spins = table[best]
        for spin in ("", "High Spin", "Low Spin", *spins):
            if spin in spins:
                return float(spins[spin]["crystal_radius"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = Species(symbol, oxidation_state).ionic_radius
        except Exception:
            r = None
        if r is None:
            r = el.atomic_radius
    if r is None:
        raise DataError(f"no radius known for {symbol}{oxidation_state:+d}")
    return float(r)


def metallic_radius(symbol: str) -> float:
    """12-coordinate metallic radius, or the atomic radius where pymatgen has none. Units: A."""
    from pymatgen.core import Element

    el = Element(symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = el.metallic_radius or el.atomic_radius
    if r is None:
        raise DataError(f"no metallic or atomic radius known for {symbol}")
    return float(r)


# ----------------------------------------------------------------------------- building


_BUILD_SCALE_A = 5.0  # build at a realistic size: pymatgen's primitive-cell search has absolute tolerances


def _unit_structure(proto: Prototype, species: dict[str, str]) -> Structure:
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = Structure.from_spacegroup(
            proto.spacegroup,
            proto.lattice(_BUILD_SCALE_A),
            [species[role] for role, _ in proto.sites],
            [list(xyz) for _, xyz in proto.sites],
        )
        prim = conv.get_primitive_structure()
    if len(prim) != proto.n_atoms:
        raise DataError(f"prototype {proto.name}: built {len(prim)} atoms, expected {proto.n_atoms}")
    return prim


def _role_distances(structure: Structure, role_of: dict[str, str]) -> dict[tuple[str, str], float]:
    """Shortest distance between each pair of roles (unordered), at the structure's scale."""
    centers, points, _, dists = structure.get_neighbor_list(1.2 * _BUILD_SCALE_A, exclude_self=True)
    out: dict[tuple[str, str], float] = {}
    for i, j, d in zip(centers, points, dists, strict=True):
        ri = role_of[structure[int(i)].specie.symbol]
        rj = role_of[structure[int(j)].specie.symbol]
        key = tuple(sorted((ri, rj)))
        if d > 1e-6 and d < out.get(key, np.inf):
            out[key] = float(d)
    return out


def _radii(proto: Prototype, species: dict[str, str], oxidation_states: dict[str, int] | None) -> dict[str, float]:
    if proto.intermetallic:
        return {r.name: metallic_radius(species[r.name]) for r in proto.roles}
    return {r.name: ionic_radius(species[r.name], oxidation_states[r.name], r.cn) for r in proto.roles}


def _scales(proto: Prototype, unit: Structure, species: dict[str, str], radii: dict[str, float]) -> list[float]:
    """Factors on the lattice of ``unit`` requested by the prototype's contacts (module docstring)."""
    role_of = {species[r.name]: r.name for r in proto.roles}
    dist = _role_distances(unit, role_of)
    requested = []
    if proto.intermetallic:
        for r in proto.roles:
            near = {k: d for k, d in dist.items() if r.name in k}
            dmin = min(near.values())
            for (a, b), d in near.items():
                if d <= dmin * 1.01:
                    requested.append((radii[a] + radii[b]) / d)
    else:
        for (a, b), d in dist.items():
            if proto.role(a).sign * proto.role(b).sign < 0:
                requested.append((radii[a] + radii[b]) / d)
    if not requested:
        raise DataError(f"prototype {proto.name}: no contacts to scale from")
    return requested


def _check_species(proto: Prototype, species: dict[str, str]) -> None:
    from pymatgen.core import Element

    missing = [r.name for r in proto.roles if r.name not in species]
    extra = sorted(set(species) - {r.name for r in proto.roles})
    if missing or extra:
        raise DataError(
            f"prototype {proto.name} has roles {[r.name for r in proto.roles]}; "
            f"missing {missing}, unknown {extra}"
        )
    for role, sym in species.items():
        if not Element.is_valid_symbol(sym):
            raise DataError(f"prototype {proto.name}: role {role}: unknown element {sym!r}")
    if len(set(species.values())) != len(species):
        raise DataError(f"prototype {proto.name}: each role needs a different element, got {species}")


def _balanced_states(proto: Prototype, species: dict[str, str]) -> list[dict[str, int]]:
    """Charge-balanced, electronegativity-ordered common oxidation states for an ionic decoration."""
    from pymatgen.core import Element

    options = []
    for r in proto.roles:
        states = [s for s in Element(species[r.name]).common_oxidation_states if s * r.sign > 0]
        if not states:
            return []
        options.append(states)
    found = []
    for combo in itertools.product(*options):
        if sum(r.count * s for r, s in zip(proto.roles, combo, strict=True)) != 0:
            continue
        found.append({r.name: s for r, s in zip(proto.roles, combo, strict=True)})
    if not found:
        return []
    en = {r.name: Element(species[r.name]).X for r in proto.roles}
    if any(math.isnan(x) for x in en.values()):
        return []
    cations = [en[r.name] for r in proto.roles if r.sign > 0]
    anions = [en[r.name] for r in proto.roles if r.sign < 0]
    if max(cations) >= min(anions):
        return []
    return found


def _fits_intermetallic(proto: Prototype, species: dict[str, str]) -> bool:
    from pymatgen.core import Element

    for r in proto.roles:
        el = Element(species[r.name])
        if r.kind == "tm" and not (el.is_transition_metal or el.is_rare_earth):
            return False
        if r.kind == "pblock" and not (el.group in _HEUSLER_Z_GROUPS and (el.is_metal or el.is_metalloid)):
            return False
    return True


def _build(proto: Prototype, species: dict[str, str], states: dict[str, int] | None) -> tuple[Structure, float]:
    """Build and scale; returns the structure and the spread of requested scales (log ratio)."""
    unit = _unit_structure(proto, species)
    requested = _scales(proto, unit, species, _radii(proto, species, states))
    scale = float(np.mean(requested)) if proto.intermetallic else max(requested)
    structure = unit.copy()
    structure.scale_lattice(unit.volume * scale**3)
    spread = math.log(max(requested) / min(requested))
    structure.properties = {"prototype": proto.name, "species": dict(species),
                            "oxidation_states": dict(states or {})}
    return structure, spread


def build_prototype(name: str, species: dict[str, str], oxidation_states: dict[str, int] | None = None) -> Structure:
    """Decorate a prototype and size its lattice from radii.

    Args:
        name: prototype name or alias (`prototype_names`).
        species: role -> element symbol, one distinct element per role.
        oxidation_states: role -> oxidation state for the radius look-up (ionic prototypes). When
            omitted, the first charge-balanced combination of common oxidation states is used;
            when none exists, the most common state of the role's sign (a warning is logged).

    Returns:
        The primitive cell, with ``properties`` recording prototype, species and states.

    Raises:
        DataError: unknown prototype, wrong roles, unknown or repeated elements, or an element
            with no oxidation state of its role's sign.
    """
    from pymatgen.core import Element

    proto = get_prototype(name)
    species = dict(species)
    _check_species(proto, species)
    if not proto.intermetallic:
        if oxidation_states is None:
            found = _balanced_states(proto, species)
            if found:
                oxidation_states = found[0]
            else:
                oxidation_states = {}
                for r in proto.roles:
                    states = [s for s in Element(species[r.name]).common_oxidation_states if s * r.sign > 0]
                    if not states:
                        raise DataError(
                            f"prototype {proto.name}: role {r.name} needs a {r.kind}, but "
                            f"{species[r.name]} has no common oxidation state of that sign"
                        )
                    oxidation_states[r.name] = min(states, key=abs)
                logger.warning("%s in %s: no charge-balanced oxidation states; using %s",
                               species, proto.name, oxidation_states)
        else:
            missing = [r.name for r in proto.roles if r.name not in oxidation_states]
            if missing:
                raise DataError(f"prototype {proto.name}: oxidation states missing for roles {missing}")
    structure, _ = _build(proto, species, oxidation_states)
    return structure


def _assignments(proto: Prototype, elements: Sequence[str]) -> Iterable[tuple[dict[str, str], dict[str, int] | None]]:
    """Every valid decoration of a prototype with distinct elements (see the module docstring)."""
    for combo in itertools.permutations(elements, len(proto.roles)):
        species = {r.name: el for r, el in zip(proto.roles, combo, strict=True)}
        if proto.intermetallic:
            if _fits_intermetallic(proto, species):
                yield species, None
            continue
        found = _balanced_states(proto, species)
        if found:
            yield species, found[0]


def seed_structures(elements: Sequence[str], max_atoms: int) -> list[Structure]:
    """Every prototype decorated with every valid assignment of the campaign's elements.

    Args:
        elements: the campaign's element symbols.
        max_atoms: largest primitive cell to include.

    Returns:
        Structures in prototype order (see `prototype_names`), each with ``properties`` naming
        its prototype, species and oxidation states.
    """
    out = []
    for name in prototype_names():
        proto = _PROTOTYPES[name]
        if proto.n_atoms > max_atoms:
            continue
        for species, states in _assignments(proto, list(dict.fromkeys(elements))):
            try:
                structure, _ = _build(proto, species, states)
            except DataError as exc:
                logger.debug("skipping %s %s: %s", name, species, exc)
                continue
            out.append(structure)
    logger.info("built %d prototype seeds for %s (max %d atoms)", len(out), "-".join(elements), max_atoms)
    return out


def seed_candidates(elements: Sequence[str], max_atoms: int) -> list[Candidate]:
    """`seed_structures` as `Candidate` records (generator ``"seed"``, prototype in conditions)."""
    from discovery.structures import make_candidate

    out = []
    for s in seed_structures(elements, max_atoms):
        cond = {"prototype": s.properties["prototype"], "oxidation_states": s.properties["oxidation_states"]}
        out.append(make_candidate(s, generator="seed", generator_version="1", conditions=cond))
    return out
