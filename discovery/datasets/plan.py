"""What a data set build relaxes: compositions, their starting structures and the elemental references.

Compositions (`compositions`):

- **binaries** A_a X_x: a cation A and an anion X (``cations`` / ``anions``; an element may be in
  both lists, e.g. Si in SiO2 and Mg2Si) with pymatgen common oxidation states that balance
  (every positive common state of the cation, the most negative one of the anion), A less electronegative than X (Pauling), a + x <= ``max_formula_atoms``;
- **ternaries**: two cations and an anion, or a cation and two anions (both from
  ``ternary_anions`` when given), with small whole amounts
  (sum <= ``max_formula_atoms``, greatest common divisor 1) balanced by common oxidation states and
  every cation less electronegative than every anion; a seeded subset of ``max_ternaries``;
- **unary**: the ``unary`` elements as elemental crystals;
- formulas in ``exclude_formulas`` (reduced) are never planned.

Starting structures per composition (`plan_jobs`):

- every prototype of `discovery.data.prototypes` whose stoichiometry fits (built with
  `discovery.data.references.build_reference_phase`, lattice from radii), when ``prototypes``;
- ``random_per_composition`` pyxtal random symmetric structures: Z formula units with
  Z * atoms per formula unit <= ``max_atoms`` (Z drawn uniformly), a space group drawn uniformly
  from 2-230 until pyxtal finds Wyckoff positions for the composition (at most `MAX_GROUP_TRIES`
  draws), then reduced to the primitive cell. Every draw comes from a stream seeded by
  (``seed``, crc32 of the formula), so adding a composition leaves the others unchanged.

Elemental references (`reference_jobs`): `discovery.data.references.elemental_reference` for
every element that occurs (molecules in a box relax positions only); for an element it has no
structure for (S, B, Mn, ...), ``reference_random`` pyxtal random elemental structures of 2-8
atoms, the lowest relaxed energy per atom wins.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from discovery.configbase import Strict
from discovery.datasets.config import DatasetConfig
from discovery.errors import DataError
from discovery.kinds import Kind

logger = logging.getLogger(__name__)

#: Space groups drawn per pyxtal structure before giving up on it.
MAX_GROUP_TRIES = 40
#: Atom counts tried for random elemental reference structures.
REFERENCE_ATOMS = (2, 4, 6, 8)


@dataclass(frozen=True)
class Job:
    """One relaxation.

    Attributes:
        id: unique, readable (``NaCl/rocksalt``, ``NaCl/random-3``, ``ref/S/random-1``).
        formula: reduced formula (for references: the element).
        source: ``prototype:<name>``, ``random:<space group>``, ``reference`` or ``reference:random``.
        structure: pymatgen ``as_dict()`` of the starting structure.
        calc: ``"molecule"`` for a molecule in a box (positions only), else None.
    """

    id: str
    formula: str
    source: str
    structure: dict[str, Any]
    calc: str | None = None

    @property
    def is_reference(self) -> bool:
        return self.source.startswith("reference")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "formula": self.formula, "source": self.source, "structure": self.structure,
                "calc": self.calc}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(id=d["id"], formula=d["formula"], source=d["source"], structure=d["structure"], calc=d.get("calc"))


@dataclass
class Plan:
    """Compositions and jobs of a build (structures first, then references)."""

    compositions: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- compositions


def _states(symbol: str, sign: int) -> list[int]:
    """Common oxidation states of a cation (every positive one) or an anion (the most negative
    one only: C as carbide C4-, not C3- ... C-)."""
    from pymatgen.core import Element

    states = sorted({s for s in Element(symbol).common_oxidation_states if s * sign > 0})
    return states if sign > 0 else states[:1]


def _en(symbol: str) -> float:
    from pymatgen.core import Element

    x = Element(symbol).X
    return float(x) if x and math.isfinite(x) else math.nan


def _formula(amounts: dict[str, int]) -> str:
    from pymatgen.core import Composition

    return Composition(amounts).reduced_formula


def _balanced(elements: tuple[str, ...], signs: tuple[int, ...], amounts: tuple[int, ...]) -> bool:
    options = [_states(e, s) for e, s in zip(elements, signs, strict=True)]
    if any(not o for o in options):
        return False
    return any(sum(a * q for a, q in zip(amounts, combo, strict=True)) == 0 for combo in itertools.product(*options))


def _ordered(cations: Iterable[str], anions: Iterable[str]) -> bool:
    cat = [_en(e) for e in cations]
    an = [_en(e) for e in anions]
    if any(math.isnan(x) for x in cat + an):
        return False
    return max(cat) < min(an)


def binary_compositions(config: DatasetConfig) -> list[str]:
    """Charge-balanced, electronegativity-ordered binaries (reduced formulas, sorted)."""
    out = set()
    for a, x in itertools.product(config.cations, config.anions):
        if a == x or not _ordered([a], [x]):
            continue
        for qa, qx in itertools.product(_states(a, 1), _states(x, -1)):
            g = math.gcd(qa, -qx)
            na, nx = -qx // g, qa // g
            if na + nx <= config.max_formula_atoms:
                out.add(_formula({a: na, x: nx}))
    return sorted(out)


def ternary_compositions(config: DatasetConfig) -> list[str]:
    """Every charge-balanced, ordered ternary of small amounts (reduced formulas, sorted)."""
    out = set()
    amounts = [t for t in itertools.product(range(1, config.max_formula_atoms + 1), repeat=3)
               if sum(t) <= config.max_formula_atoms and math.gcd(*t) == 1]
    pairs = []
    for c1, c2 in itertools.combinations(config.cations, 2):
        for x in config.anions:
            if len({c1, c2, x}) == 3 and _ordered([c1, c2], [x]):
                pairs.append(((c1, c2, x), (1, 1, -1)))
    mixed = config.ternary_anions if config.ternary_anions is not None else config.anions
    for c in config.cations:
        for x1, x2 in itertools.combinations([x for x in config.anions if x in mixed], 2):
            if len({c, x1, x2}) == 3 and _ordered([c], [x1, x2]):
                pairs.append(((c, x1, x2), (1, -1, -1)))
    for elements, signs in pairs:
        for amt in amounts:
            if _balanced(elements, signs, amt):
                out.add(_formula(dict(zip(elements, amt, strict=True))))
    return sorted(out)


def compositions(config: DatasetConfig) -> list[str]:
    """Every composition of the build, excluded formulas removed, in a fixed order (binaries,
    the seeded ternary subset, unary elements)."""
    excluded = config.excluded
    chosen: list[str] = []
    if config.binaries:
        chosen += [f for f in binary_compositions(config) if f not in excluded]
    if config.ternaries:
        ternaries = [f for f in ternary_compositions(config) if f not in excluded]
        if config.max_ternaries is not None and len(ternaries) > config.max_ternaries:
            rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x7E2]))
            keep = np.sort(rng.choice(len(ternaries), size=config.max_ternaries, replace=False))
            ternaries = [ternaries[k] for k in keep]
        chosen += ternaries
    chosen += [e for e in config.unary if e not in excluded and e not in chosen]
    return list(dict.fromkeys(chosen))


# ----------------------------------------------------------------------------- structures


def formula_rng(seed: int, formula: str) -> np.random.Generator:
    """The random stream of one composition (independent of every other composition)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(formula.encode())]))


def prototype_structures(formula: str, max_atoms: int, names: list[str] | None = None) -> list[tuple[str, Any]]:
    """``(prototype name, structure)`` for every prototype (of ``names``; None: all) the formula fits."""
    from discovery.data.prototypes import get_prototype, prototype_names
    from discovery.data.references import build_reference_phase

    out = []
    for name in prototype_names():
        proto = get_prototype(name)
        if proto.n_atoms > max_atoms or (names is not None and name not in names):
            continue
        try:
            out.append((name, build_reference_phase(formula, name)))
        except DataError:
            continue
    return out


_TOL: list[Any] = []


def _tolerances() -> Any:
    """pyxtal's atomic distance tolerances, built once (pyxtal rebuilds them for every structure
    otherwise, which is most of its time here)."""
    if not _TOL:
        from pyxtal.tolerance import Tol_matrix

        _TOL.append(Tol_matrix(prototype="atomic", factor=1.0))
    return _TOL[0]


def random_structure(amounts: dict[str, int], max_atoms: int, rng: np.random.Generator,
                     volume_factor: float = 1.1) -> tuple[int, Any] | None:
    """A pyxtal random symmetric crystal of ``amounts`` (one formula unit) times a random Z, as
    ``(space group, primitive pymatgen Structure)``; None when no space group fits."""
    from pyxtal import pyxtal

    tm = _tolerances()
    per_fu = sum(amounts.values())
    zs = [z for z in range(1, max_atoms // per_fu + 1)]
    if not zs:
        return None
    species = list(amounts)
    for _ in range(MAX_GROUP_TRIES):
        z = int(rng.choice(zs))
        group = int(rng.integers(2, 231))
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, group, species, [amounts[s] * z for s in species], factor=volume_factor,
                                    random_state=int(rng.integers(2**31 - 1)), tm=tm)
                if not crystal.valid:
                    continue
                structure = crystal.to_pymatgen().get_primitive_structure()
        except Exception:  # pyxtal raises its own errors for incompatible compositions
            continue
        if len(structure) <= max_atoms:
            return group, structure
    return None


def _amounts(formula: str) -> dict[str, int]:
    from pymatgen.core import Composition

    comp = Composition(formula).reduced_composition
    return {str(el): int(round(n)) for el, n in comp.items()}


def structure_jobs(config: DatasetConfig, formula: str) -> list[Job]:
    """The starting structures of one composition (prototypes, then random ones)."""
    jobs: list[Job] = []
    amounts = _amounts(formula)
    if config.prototypes:
        if len(amounts) == 1:
            from discovery.data.references import elemental_reference

            try:
                structure, hint = elemental_reference(formula)
                if hint != "molecule" and len(structure) <= config.max_atoms:
                    jobs.append(Job(f"{formula}/reference", formula, "prototype:reference", structure.as_dict()))
            except DataError:
                pass
        for name, structure in prototype_structures(formula, config.max_atoms, config.prototype_names):
            jobs.append(Job(f"{formula}/{name}", formula, f"prototype:{name}", structure.as_dict()))
    rng = formula_rng(config.seed, formula)
    for k in range(config.random_per_composition):
        found = random_structure(amounts, config.max_atoms, rng, config.random_volume_factor)
        if found is None:
            logger.debug("%s: no random structure %d", formula, k)
            continue
        group, structure = found
        jobs.append(Job(f"{formula}/random-{k}", formula, f"random:{group}", structure.as_dict()))
    return jobs


def reference_jobs(config: DatasetConfig, elements: Iterable[str]) -> list[Job]:
    """Relaxations that give each element's CHGNet reference energy (see the module docstring)."""
    from discovery.data.references import elemental_reference

    jobs = []
    for el in sorted(set(elements)):
        try:
            structure, hint = elemental_reference(el)
            jobs.append(Job(f"ref/{el}", el, "reference", structure.as_dict(),
                            "molecule" if hint == "molecule" else None))
            continue
        except DataError:
            pass
        rng = formula_rng(config.seed, f"ref/{el}")
        for k in range(config.reference_random):
            n = int(REFERENCE_ATOMS[k % len(REFERENCE_ATOMS)])
            found = random_structure({el: 1}, n, rng, config.random_volume_factor)
            if found is not None:
                jobs.append(Job(f"ref/{el}/random-{k}", el, "reference:random", found[1].as_dict()))
    return jobs


def _serial_structure_jobs(config: DatasetConfig, formulas: list[str],
                           progress: Callable[[int, int], None] | None) -> list[list[Job]]:
    out = []
    for k, formula in enumerate(formulas):
        out.append(structure_jobs(config, formula))
        if progress is not None:
            progress(k + 1, len(formulas))
    return out


def plan_jobs(config: DatasetConfig, progress: Callable[[int, int], None] | None = None,
              mapper: Callable[[list[str], Callable[[int, int], None] | None], list[list[Job]]] | None = None
              ) -> Plan:
    """Every job of a build, in a fixed order (structures by composition, then references).

    ``mapper(formulas, progress)`` returns `structure_jobs` of every formula in order (the builder
    hands it to the executor's planner components); None: one after the other, here. Each formula
    has its own random stream, so the plan does not depend on how the work is split.

    Raises:
        DataError: an element that needs a reference gets none (no built-in one and no random
            structure).
    """
    plan = Plan(compositions=compositions(config))
    elements: set[str] = set()
    mapped = (mapper or (lambda f, p: _serial_structure_jobs(config, f, p)))(plan.compositions, progress)
    for formula, jobs in zip(plan.compositions, mapped, strict=True):
        if not jobs:
            logger.info("%s: no starting structure; skipped", formula)
            continue
        plan.jobs += jobs
        elements |= set(_amounts(formula))
    refs = reference_jobs(config, elements)
    missing = sorted(elements - {j.formula for j in refs})
    if missing:
        raise DataError(f"no elemental reference structure for {missing}")
    plan.jobs += refs
    plan.compositions = sorted({j.formula for j in plan.jobs if not j.is_reference})
    plan.counts = {"compositions": len(plan.compositions),
                   "prototype": sum(j.source.startswith("prototype") for j in plan.jobs),
                   "random": sum(j.source.startswith("random") for j in plan.jobs),
                   "reference": sum(j.is_reference for j in plan.jobs)}
    return plan


# ----------------------------------------------------------------------------- planner component


class PlannerConfig(Strict):
    """The config of a planner component (`Planner`): the data set it plans for."""

    kind: Literal["dataset-planner"] = "dataset-planner"
    dataset: DatasetConfig


class Planner:
    """Makes the starting structures of compositions inside an executor's worker (pyxtal is the
    slow part of planning). ``structure_jobs(formulas)`` returns each formula's jobs as JSON dicts."""

    name = "dataset-planner"

    def __init__(self, config: PlannerConfig):
        self.config = config.dataset

    def structure_jobs(self, formulas: list[str]) -> list[list[dict[str, Any]]]:
        return [[j.to_json() for j in structure_jobs(self.config, f)] for f in formulas]


def build_planner(config: PlannerConfig, context: Any = None) -> Planner:
    return Planner(config)


#: Not a campaign kind (it is not in the registry): the builder hands it to executors directly.
PLANNER_KIND = Kind(role="generator", name="dataset-planner", config=PlannerConfig,
                    factory="discovery.datasets.plan:build_planner", summary="dataset build: starting structures")
