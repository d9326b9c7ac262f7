"""Ion substitution on known structures, weighted by pymatgen's substitution probabilities.

A child is made from a known parent structure by replacing every site of one or more of its
species (element + oxidation state) with another campaign element of the same oxidation-state
sign. Replacements are sampled with weights from pymatgen's ``SubstitutionProbability`` (the
data-mined ionic substitution model of Hautier et al., Inorg. Chem. 50, 656 (2011), shipped with
pymatgen), and the lattice is scaled so that the cell volume follows the sum of ionic volumes.

Rules
    * Parent oxidation states: the first all-integer guess of pymatgen's
      ``Composition.oxi_state_guesses``, else per-site valences from ``BVAnalyzer``; parents where
      both fail, or that have no charged species (elements, intermetallics), are skipped.
    * The number of species replaced per child is drawn uniformly from 1..``max_substitutions``
      (species of elements outside the campaign must be replaced, so they count first).
    * A replacement keeps the sign of the oxidation state; the joint choice keeps the formula
      charge neutral, gives each element one oxidation state, uses campaign elements only and
      changes the composition (no pure site swaps).
    * Among the valid joint choices one is drawn with probability proportional to the product of
      ``SubstitutionProbability.prob(from, to)``.
    * Volume: V_child = V_parent * sum(r_new^3) / sum(r_old^3) over all sites, with Shannon
      crystal radii at 6-fold coordination (`discovery.data.prototypes.ionic_radius`).

Parents come from ``update({"known": [...]})``. ``conditions["parents"]`` (a list of Candidates),
when given, restricts one call to those parents. DFT hits (``update({"hits": [...]})``, Candidates
or ids) are drawn ``hit_weight`` times as often as other parents.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from discovery.records import Candidate
from discovery.featurize.deciles import DecileConditions

from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND, Strict
from discovery.kinds import BuildContext, Kind

if TYPE_CHECKING:
    from pymatgen.core import Structure


logger = logging.getLogger(__name__)

_PROBABILITY_MODEL = None
_ATTEMPTS_PER_PROPOSAL = 20


def substitution_model():
    """pymatgen's ``SubstitutionProbability`` (loaded once per process, about 1 s)."""
    global _PROBABILITY_MODEL
    if _PROBABILITY_MODEL is None:
        from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _PROBABILITY_MODEL = SubstitutionProbability()
    return _PROBABILITY_MODEL


@dataclass
class _Parent:
    """A parent decorated with oxidation states: sites grouped by species."""

    candidate: Candidate
    structure: Structure
    site_species: list[tuple[str, int]]  # per site
    species: list[tuple[str, int]]  # distinct, in first-seen order
    counts: dict[tuple[str, int], int]


def _label(species: tuple[str, int]) -> str:
    el, q = species
    return f"{el}{abs(q) if abs(q) != 1 else ''}{'+' if q > 0 else '-'}"


def guess_oxidation_states(structure: Structure) -> list[tuple[str, int]] | None:
    """Per-site (element, oxidation state), or None when no integer assignment is found."""
    comp = structure.composition.element_composition
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            guesses = comp.oxi_state_guesses()
        except Exception:  # pymatgen raises on elements without data
            guesses = ()
        for guess in guesses:
            if all(abs(v - round(v)) < 1e-6 for v in guess.values()):
                return [(site.specie.symbol, int(round(guess[site.specie.symbol]))) for site in structure]
        try:
            from pymatgen.analysis.bond_valence import BVAnalyzer

            valences = BVAnalyzer().get_valences(structure)
            return [(site.specie.symbol, int(v)) for site, v in zip(structure, valences, strict=True)]
        except Exception:  # BVAnalyzer raises ValueError when no valid assignment exists
            return None



class SubstitutionGeneratorConfig(Strict):
    """Ion substitution on known structures, weighted by pymatgen substitution probabilities."""

    kind: Literal["substitution"] = "substitution"
    n_per_round: int = Field(40, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    max_substitutions: int = Field(2, ge=1, description="sites species swapped per child")
    hit_weight: float = Field(4.0, ge=1.0, description="sampling weight of DFT hits as parents (others: 1)")
    decile_weight: float = Field(
        1.0, ge=0.0, description="extra weight of labelled parents in the target formation-energy decile")


def build(config: SubstitutionGeneratorConfig, context: BuildContext) -> SubstitutionGenerator:
    return SubstitutionGenerator(config, list(context.elements), context.max_atoms)


KIND = Kind(role="generator", name="substitution", config=SubstitutionGeneratorConfig,
            factory="discovery.generators.substitution:build", takes_composition=True,
            summary="ion substitution on known structures (pymatgen substitution probabilities)")


class SubstitutionGenerator:
    """Charge-balanced ion substitution on known structures (see the module docstring).

    Args:
        config: `SubstitutionGeneratorConfig` (``max_substitutions``, ``hit_weight``).
        elements: the campaign's elements; children contain only these.
        max_atoms: parents (and so children) with more sites are skipped.
    """

    name = "substitution"
    version = "1"

    def __init__(self, config: SubstitutionGeneratorConfig, elements: list[str], max_atoms: int):
        from pymatgen.core import Element

        self.config = config
        self.elements = list(dict.fromkeys(elements))
        self.max_atoms = max_atoms
        self._states = {
            el: [q for q in Element(el).common_oxidation_states if q != 0] for el in self.elements
        }
        self._known: dict[str, Candidate] = {}
        self._hits: set[str] = set()
        self._labels: dict[str, float] = {}  # candidate id -> formation energy (eV/atom)
        self.conditions = DecileConditions()
        self._parents: dict[str, _Parent | None] = {}
        self._choices: dict[tuple, tuple[list, np.ndarray]] = {}

    # ------------------------------------------------------------------ feedback

    def update(self, feedback: dict[str, Any]) -> dict[str, Any]:
        """Merge ``feedback["known"]`` (Candidates) as parents; remember ``feedback["hits"]``;
        recompute the formation-energy deciles from ``feedback["labels"]`` ((Candidate, value)
        pairs) and aim at the decile of the confirmed hits. Returns the conditions it now works
        with (recorded by the campaign every round)."""
        for cand in feedback.get("known", ()) or ():
            self._known.setdefault(cand.id, cand)
        self._hits = set()  # the campaign's hits now (a hit can stop being one as the hull moves)
        for hit in feedback.get("hits", ()) or ():
            if isinstance(hit, Candidate):
                self._known.setdefault(hit.id, hit)
                self._hits.add(hit.id)
            else:
                self._hits.add(str(hit))
        for cand, value in feedback.get("labels", ()) or ():
            self._labels[cand.id] = float(value)
            for pid in cand.parent_ids:  # a relaxed copy carries the proposed candidate as parent
                self._labels.setdefault(pid, float(value))
        if self._labels:
            self.conditions.update(list(self._labels.values()),
                                   [v for k, v in self._labels.items() if k in self._hits])
        return {**self.conditions.state(), "n_labels": len(self._labels), "n_hits": len(self._hits),
                "n_known": len(self._known)}

    # ------------------------------------------------------------------ proposals

    def _parent(self, cand: Candidate) -> _Parent | None:
        if cand.id in self._parents:
            return self._parents[cand.id]
        parent = None
        if cand.n_atoms <= self.max_atoms:
            structure = cand.pmg
            site_species = guess_oxidation_states(structure) if structure.is_ordered else None
            if site_species and any(q != 0 for _, q in site_species):
                species = list(dict.fromkeys(site_species))
                counts = {sp: site_species.count(sp) for sp in species}
                parent = _Parent(cand, structure, site_species, species, counts)
            else:
                logger.debug("substitution: no oxidation states for parent %s (%s)", cand.id, cand.formula)
        self._parents[cand.id] = parent
        return parent

    def _options(self, species: tuple[str, int]) -> list[tuple[str, int]]:
        el, q = species
        return [(e, qq) for e in self.elements if e != el for qq in self._states[e] if qq * q > 0]

    def _joint_choices(self, parent: _Parent, chosen: tuple[tuple[str, int], ...]
                       ) -> tuple[list[tuple[tuple[str, int], ...]], np.ndarray]:
        """Valid joint replacements of ``chosen`` species and their probabilities (cached)."""
        key = (parent.candidate.id, chosen)
        if key in self._choices:
            return self._choices[key]
        from pymatgen.core import Composition, Species

        option_lists = [self._options(sp) for sp in chosen]
        model = substitution_model()
        kept = [sp for sp in parent.species if sp not in chosen]
        parent_formula = parent.structure.composition.reduced_formula
        combos, weights = [], []
        for combo in itertools.product(*option_lists):
            if sum(parent.counts[sp] * (new[1] - sp[1]) for sp, new in zip(chosen, combo, strict=True)):
                continue  # not charge neutral
            states: dict[str, int] = {}
            if any(states.setdefault(el, q) != q for el, q in [*kept, *combo]):
                continue  # an element would carry two oxidation states
            new_counts: dict[str, int] = {}
            for old, new in [*zip(chosen, combo, strict=True), *((sp, sp) for sp in kept)]:
                new_counts[new[0]] = new_counts.get(new[0], 0) + parent.counts[old]
            if Composition(new_counts).reduced_formula == parent_formula:
                continue  # a pure site swap
            w = 1.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for sp, new in zip(chosen, combo, strict=True):
                    w *= model.prob(Species(*sp), Species(*new))
            if w > 0 and math.isfinite(w):
                combos.append(combo)
                weights.append(w)
        p = np.asarray(weights, dtype=float)
        result = (combos, p / p.sum() if len(p) else p)
        self._choices[key] = result
        return result

    def _draw_mapping(self, parent: _Parent, rng: np.random.Generator) -> dict[tuple[str, int], tuple[str, int]] | None:
        foreign = [sp for sp in parent.species if sp[0] not in self.elements]
        others = [sp for sp in parent.species if sp[0] in self.elements]
        low = max(1, len(foreign))
        high = min(self.config.max_substitutions, len(parent.species))
        if low > high:
            return None
        k = int(rng.integers(low, high + 1))
        chosen = tuple(foreign + [others[i] for i in sorted(rng.permutation(len(others))[: k - len(foreign)])])
        combos, p = self._joint_choices(parent, chosen)
        if not combos:
            return None
        pick = combos[int(rng.choice(len(combos), p=p))]
        return dict(zip(chosen, pick, strict=True))

    def _child(self, parent: _Parent, mapping: dict[tuple[str, int], tuple[str, int]]) -> Structure:
        from pymatgen.core import Structure

        from discovery.data.prototypes import ionic_radius

        new_sites = [mapping.get(sp, sp) for sp in parent.site_species]
        old_vol = sum(ionic_radius(el, q, "VI") ** 3 for el, q in parent.site_species)
        new_vol = sum(ionic_radius(el, q, "VI") ** 3 for el, q in new_sites)
        child = Structure(parent.structure.lattice, [el for el, _ in new_sites], parent.structure.frac_coords)
        child.scale_lattice(parent.structure.volume * new_vol / old_vol)
        return child

    def _for_composition(self, n: int, conditions: dict[str, Any]) -> list[Candidate]:
        """The prototypes of matching stoichiometry decorated with ``conditions["composition"]``
        (a composition-first proposal; `discovery.generators.composition_structures`)."""
        from discovery.generators.composition_structures import prototype_structures
        from discovery.structures import make_candidate

        out = []
        for structure, label in prototype_structures(str(conditions["composition"]), self.max_atoms)[:n]:
            cond = {**conditions, "structure_generator": label}
            out.append(make_candidate(structure, self.name, self.version, conditions=cond))
        return out

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` distinct children of known (or ``conditions["parents"]``) structures; with
        ``conditions["composition"]``, prototypes of that composition's stoichiometry instead.

        Args:
            n: number of children wanted.
            conditions: campaign conditions; copied into each child's record (``parents``
                excluded), with ``substitutions`` and ``parent_formula`` added.
            rng: the only source of randomness.

        Returns:
            Fewer than ``n`` candidates when the parents do not allow more distinct children.
        """
        from discovery.structures import make_candidate

        if conditions.get("composition"):
            return self._for_composition(n, conditions)
        pool_cands = list(conditions.get("parents") or self._known.values())
        parents = [p for p in (self._parent(c) for c in pool_cands) if p is not None]
        if not parents or n <= 0:
            if not parents:
                logger.info("substitution: no usable parents among %d known structures", len(pool_cands))
            return []
        weights = np.array([
            (self.config.hit_weight if p.candidate.id in self._hits else 1.0)
            * self.conditions.weight(self._labels.get(p.candidate.id), self.config.decile_weight)
            for p in parents])
        weights /= weights.sum()
        record = {k: v for k, v in conditions.items() if k != "parents"}
        known_ids = set(self._known) | {p.candidate.id for p in parents}
        out: list[Candidate] = []
        seen: set[str] = set()
        tried: set[tuple] = set()
        for _ in range(_ATTEMPTS_PER_PROPOSAL * n):
            if len(out) >= n:
                break
            parent = parents[int(rng.choice(len(parents), p=weights))]
            mapping = self._draw_mapping(parent, rng)
            if mapping is None:
                continue
            key = (parent.candidate.id, tuple(sorted(mapping.items())))
            if key in tried:
                continue  # the same parent and replacement give the same child
            tried.add(key)
            child = self._child(parent, mapping)
            cond = dict(record)
            cond["parent_formula"] = parent.candidate.formula
            if self.conditions.ready:
                cond["target_decile"] = self.conditions.target
                label = self._labels.get(parent.candidate.id)
                if label is not None:
                    cond["parent_decile"] = self.conditions.bin(label)
            cond["substitutions"] = {_label(a): _label(b) for a, b in mapping.items()}
            cand = make_candidate(child, self.name, self.version, parent_ids=(parent.candidate.id,),
                                  conditions=cond)
            if cand.id in seen or cand.id in known_ids:
                continue
            seen.add(cand.id)
            out.append(cand)
        logger.debug("substitution: %d of %d proposals from %d parents", len(out), n, len(parents))
        return out
