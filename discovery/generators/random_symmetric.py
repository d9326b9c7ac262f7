"""Random symmetric crystals (pyxtal) for charge-balanced compositions of the campaign.

Compositions
    Every charge-neutral, electronegativity-ordered composition of 2 to 4 campaign elements from
    ``smact.screening.smact_filter`` (SMACT's ICSD-2024 oxidation states, the same rules the
    filter applies) whose reduced formula has at most ``max_atoms`` atoms, plus the reduced
    compositions of known structures of the campaign's elements (``update``), which also covers
    mixed-valence compounds SMACT's enumeration skips. ``conditions["composition"]`` (a formula
    string or an element -> count mapping) overrides the pool for one call.

Space groups
    For a composition, every (space group, formula units Z) pair is a choice when pyxtal's
    ``Group.check_compatible`` accepts the conventional-cell atom counts and the primitive cell
    has at most ``max_atoms`` atoms (conventional atoms / centring multiplicity). Groups come
    from ``config.space_groups`` (default: all 230). A pair is drawn uniformly, and
    ``pyxtal.from_random`` builds the structure with ``factor=volume_factor`` and a seed drawn
    from the caller's rng, so results are reproducible. Failures (pyxtal exceptions, invalid
    structures, atoms closer than 0.5 A) are retried up to ``max_attempts`` times per proposal.

``update`` only remembers known compositions (added to the pool); the generator has no model.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from discovery.records import Candidate

from pydantic import Field, field_validator

from discovery.configbase import MAX_PROPOSALS_PER_ROUND, Strict
from discovery.kinds import BuildContext, Kind

if TYPE_CHECKING:
    from pymatgen.core import Structure


logger = logging.getLogger(__name__)

MIN_DISTANCE_A = 0.5
MAX_ELEMENTS = 4
_CENTERING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}
_GROUPS: dict[int, Any] = {}


def _group(number: int):
    """pyxtal ``Group`` objects, built once per process."""
    if number not in _GROUPS:
        from pyxtal.symmetry import Group

        _GROUPS[number] = Group(number)
    return _GROUPS[number]


def charge_balanced_compositions(elements: list[str], max_atoms: int) -> list[dict[str, int]]:
    """Reduced, charge-balanced compositions of 2..4 of ``elements`` with <= ``max_atoms`` atoms.

    Uses ``smact.screening.smact_filter`` (charge neutrality + Pauling electronegativity test).

    Returns:
        Element -> count mappings, sorted by number of atoms then formula.
    """
    import smact
    from pymatgen.core import Composition
    from smact.screening import smact_filter

    els = []
    for symbol in elements:
        try:
            els.append(smact.Element(symbol))
        except Exception:  # smact has no data for some elements
            logger.debug("smact has no data for %s", symbol)
    found: dict[str, dict[str, int]] = {}
    for k in range(2, min(MAX_ELEMENTS, len(els)) + 1):
        for subset in itertools.combinations(els, k):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = smact_filter(subset, threshold=max_atoms)
            for symbols, _states, ratios in results:
                g = math.gcd(*ratios)
                counts = {s: r // g for s, r in zip(symbols, ratios, strict=True)}
                if sum(counts.values()) <= max_atoms:
                    found.setdefault(Composition(counts).reduced_formula, counts)
    return [found[f] for f in sorted(found, key=lambda f: (sum(found[f].values()), f))]



class RandomSymmetricGeneratorConfig(Strict):
    """Random symmetric structures (pyxtal) for charge-balanced compositions of the campaign."""

    kind: Literal["random_symmetric"] = "random_symmetric"
    n_per_round: int = Field(20, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    space_groups: list[int] | None = Field(None, description="default: all 230")
    volume_factor: float = Field(1.1, gt=0.3, lt=5.0)
    max_attempts: int = Field(10, ge=1)

    @field_validator("space_groups")
    @classmethod
    def _groups(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 1 <= g <= 230 for g in v):
            raise ValueError("space groups are numbers 1..230")
        return v


def build(config: RandomSymmetricGeneratorConfig, context: BuildContext) -> RandomSymmetricGenerator:
    return RandomSymmetricGenerator(config, list(context.elements), context.max_atoms)


KIND = Kind(role="generator", name="random_symmetric", config=RandomSymmetricGeneratorConfig,
            factory="discovery.generators.random_symmetric:build", takes_composition=True,
            summary="random symmetric structures (pyxtal) of charge-balanced compositions")


class RandomSymmetricGenerator:
    """Random symmetric structures for charge-balanced compositions (see the module docstring).

    Args:
        config: `RandomSymmetricGeneratorConfig` (space groups, volume factor, attempts).
        elements: the campaign's elements.
        max_atoms: largest primitive cell proposed.
    """

    name = "random_symmetric"
    version = "1"

    def __init__(self, config: RandomSymmetricGeneratorConfig, elements: list[str], max_atoms: int):
        self.config = config
        self.elements = list(dict.fromkeys(elements))
        self.max_atoms = max_atoms
        self.groups = list(config.space_groups) if config.space_groups else list(range(1, 231))
        self._compositions: list[dict[str, int]] | None = None
        self._known: dict[str, dict[str, int]] = {}
        self._choices: dict[str, list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ compositions

    @property
    def compositions(self) -> list[dict[str, int]]:
        """The pool: enumerated charge-balanced compositions plus known ones."""
        if self._compositions is None:
            self._compositions = charge_balanced_compositions(self.elements, self.max_atoms)
        from pymatgen.core import Composition

        enumerated = {Composition(c).reduced_formula for c in self._compositions}
        extra = [c for f, c in self._known.items() if f not in enumerated]
        return self._compositions + extra

    def update(self, feedback: dict[str, Any]) -> dict[str, Any]:
        """Remember the compositions of ``feedback["known"]`` (campaign elements, small enough);
        returns the size of the composition pool."""
        for cand in feedback.get("known", ()) or ():
            counts = _reduced_counts(cand.pmg.composition)
            if set(counts) <= set(self.elements) and len(counts) >= 2 and sum(counts.values()) <= self.max_atoms:
                self._known.setdefault(cand.formula, counts)
        return {"n_compositions": len(self.compositions)}

    def _group_choices(self, counts: dict[str, int]) -> list[tuple[int, int]]:
        """(space group, Z) pairs that can hold ``counts`` x Z atoms within ``max_atoms``."""
        from pymatgen.core import Composition

        key = Composition(counts).reduced_formula
        if key in self._choices:
            return self._choices[key]
        per_fu = sum(counts.values())
        choices = []
        for number in self.groups:
            group = _group(number)
            centering = _CENTERING.get(group.symbol[0], 1)
            for z in range(1, self.max_atoms * centering // per_fu + 1):
                try:
                    compatible, _ = group.check_compatible([n * z for n in counts.values()])
                except Exception:  # pyxtal raises on odd inputs
                    compatible = False
                if compatible:
                    choices.append((number, z))
        self._choices[key] = choices
        return choices

    # ------------------------------------------------------------------ proposals

    def _attempt(self, counts: dict[str, int], number: int, z: int, seed: int) -> Structure | None:
        from pyxtal import pyxtal

        from discovery.structures import quiet_spglib, structural_problem

        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, number, list(counts), [n * z for n in counts.values()],
                                    factor=self.config.volume_factor, random_state=seed)
        except Exception as exc:  # pyxtal raises its own error classes on failed placements
            logger.debug("pyxtal failed for %s in %d: %s", counts, number, exc)
            return None
        if not crystal.valid:
            return None
        with quiet_spglib():
            structure = crystal.to_pymatgen()
            try:
                structure = structure.get_primitive_structure()
            except Exception:
                pass
        if len(structure) > self.max_atoms or structural_problem(structure, MIN_DISTANCE_A):
            return None
        return structure

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` distinct random symmetric structures.

        Args:
            n: number wanted.
            conditions: campaign conditions, copied into each record; ``composition`` (formula or
                mapping) fixes the composition.
            rng: the only source of randomness (pyxtal gets integer seeds drawn from it).

        Returns:
            Candidates with ``conditions["composition"]`` (reduced formula) and
            ``conditions["space_group"]``; fewer than ``n`` when attempts run out.
        """
        from pymatgen.core import Composition

        from discovery.structures import make_candidate

        if conditions.get("composition"):
            pool = [_reduced_counts(Composition(conditions["composition"]))]
        else:
            pool = self.compositions
        if not pool or n <= 0:
            if not pool:
                logger.info("random_symmetric: no charge-balanced composition of %s", self.elements)
            return []
        out: list[Candidate] = []
        seen: set[str] = set()
        for _ in range(n):
            for _attempt in range(self.config.max_attempts):
                counts = pool[int(rng.integers(len(pool)))]
                choices = self._group_choices(counts)
                if not choices:
                    continue
                number, z = choices[int(rng.integers(len(choices)))]
                seed = int(rng.integers(2**31 - 1))
                structure = self._attempt(counts, number, z, seed)
                if structure is None:
                    continue
                formula = Composition(counts).reduced_formula
                cond = {**conditions, "composition": formula, "space_group": number}
                cand = make_candidate(structure, self.name, self.version, conditions=cond)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                out.append(cand)
                break
        logger.debug("random_symmetric: %d of %d proposals", len(out), n)
        return out


def _reduced_counts(composition) -> dict[str, int]:
    comp = composition.element_composition
    amounts = {el.symbol: amt for el, amt in comp.items()}
    if any(abs(a - round(a)) > 1e-6 for a in amounts.values()):
        raise ValueError(f"composition {comp.formula} is not integral")
    ints = {k: int(round(v)) for k, v in amounts.items()}
    g = math.gcd(*ints.values())
    return {k: v // g for k, v in ints.items()}
