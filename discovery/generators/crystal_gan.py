"""The crystal GAN as a campaign generator: structures for A-B-X compositions from a trained model.

The model is trained beforehand (``discovery train crystal_gan``) or by the campaign
(`~discovery.lifecycle.TrainedModelFields`), and loaded when the generator is built (in its worker).

Compositions (`CrystalGANGenerator.propose`):

- ``conditions["composition"]`` (a formula string or an element -> amount mapping, e.g. from a
  composition model) fixes the composition. Its elements are mapped onto the roles: the element
  with a negative common oxidation state onto the anion role, the two others onto cation roles A and
  B in the order of Pauling electronegativity (lower on A, as Mg < Mn). The cell counts are the
  formula's counts times every number of formula units that fits the blocks (8 / 8 / 12) and
  ``max_atoms``; one is drawn per proposal. A composition that does not fit the roles gives no
  candidates (logged).
- otherwise a composition is drawn uniformly from every (cation A, cation B, anion) choice of the
  campaign's elements (the anion role takes elements with a negative common oxidation state) and
  every cell count within the blocks and ``max_atoms`` that SMACT accepts (charge neutral with its
  ICSD oxidation states, electronegativity ordered: `role_compositions`), plus the compositions of
  confirmed hits that fit the roles (``update``), drawn with probability ``hit_share``.

Elements other than the training ones are placed on the roles at decode time (substitution); the
candidate records it in ``conditions["substitution"]`` (training element -> placed element) and
``conditions["roles"]``. Structures are decoded with ``decoder`` (by default ``forced``: the rows with
the largest sums up to the conditioned counts, so a proposal has the composition it was asked for;
or the paper's 0.4 row rule or Q-network occupancy, which keep only samples whose decoded counts
match),
must pass `discovery.structures.structural_problem` at 0.5 A, have the conditioned counts, at most
``max_atoms`` sites, and be new within the call. Up to ``max_draws`` draws of ``oversample`` x the
missing number are made.

Every candidate's ``conditions``: the campaign's conditions plus ``composition`` (reduced formula),
``cell_counts``, ``roles``, ``substitution``, ``decoder`` and ``model`` (``crystal_gan``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND
from discovery.kinds import BuildContext, Kind
from discovery.lifecycle import TrainedModelFields
from discovery.models.crystal_gan.config import CrystalGANConfig
from discovery.records import Candidate

logger = logging.getLogger(__name__)

MIN_DISTANCE_A = 0.5


class CrystalGANGeneratorConfig(TrainedModelFields):
    """Crystal GAN proposals (see the module docstring) from a model in ``checkpoint_dir``."""

    model_name: ClassVar[str] = "crystal_gan"
    training_model: ClassVar[type] = CrystalGANConfig

    kind: Literal["crystal_gan"] = "crystal_gan"
    n_per_round: int = Field(20, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    decoder: Literal["forced", "threshold", "qnet"] = Field(
        "forced", description="forced: the conditioned counts' rows with the largest sums (the composition asked "
                              "for); threshold: the paper's 0.4 row rule; qnet: the Q-network's row occupancy")
    oversample: int = Field(3, ge=1, description="samples per missing candidate in one draw")
    max_draws: int = Field(4, ge=1)
    hit_share: float = Field(0.5, ge=0, le=1, description="share of proposals at compositions of confirmed hits")


def build(config: CrystalGANGeneratorConfig, context: BuildContext) -> CrystalGANGenerator:
    return CrystalGANGenerator(config, list(context.elements), context.max_atoms)


KIND = Kind(role="generator", name="crystal_gan", config=CrystalGANGeneratorConfig,
            factory="discovery.generators.crystal_gan:build",
            summary="composition-conditioned crystal GAN: A-B-X cells for given or charge-balanced compositions",
            models=("crystal_gan",), takes_composition=True)


def _states(symbol: str) -> tuple[int, ...]:
    from pymatgen.core import Element

    return tuple(int(s) for s in Element(symbol).common_oxidation_states)


@functools.lru_cache(maxsize=65536)
def _smact_ok(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    """SMACT's neutrality + electronegativity test (the project's composition filter's settings)."""
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(smact_validity(Composition(dict(zip(symbols, counts, strict=True))), use_pauling_test=True,
                                       include_alloys=True, mixed_valence=True))
    except Exception:  # smact has no data for some elements
        return False


def _balanced(counts: tuple[int, ...], symbols: tuple[str, ...]) -> bool:
    """The cell's composition passes SMACT (charge neutral with ICSD oxidation states, EN ordered)."""
    g = math.gcd(*counts)
    return _smact_ok(tuple(symbols), tuple(c // g for c in counts))


def assign_roles(composition: dict[str, float], blocks) -> dict[str, str] | None:
    """Role -> element for a composition with one element per role (see the module docstring), or None."""
    from pymatgen.core import Element

    els = list(composition)
    if len(els) != len(blocks.roles):
        return None
    anion_roles = [r for r, s in zip(blocks.roles, blocks.signs, strict=True) if s == "anion"]
    cation_roles = [r for r, s in zip(blocks.roles, blocks.signs, strict=True) if s != "anion"]
    anions = [e for e in els if any(s < 0 for s in _states(e)) and not any(s > 0 for s in _states(e))]
    if len(anions) != len(anion_roles):
        # fall back to electronegativity: the most electronegative elements take the anion roles
        anions = sorted(els, key=lambda e: -(Element(e).X if not math.isnan(Element(e).X) else 0))[:len(anion_roles)]
    cations = sorted((e for e in els if e not in anions), key=lambda e: (Element(e).X, e))
    if len(cations) != len(cation_roles):
        return None
    return {**dict(zip(anion_roles, sorted(anions), strict=True)), **dict(zip(cation_roles, cations, strict=True))}


def cell_counts(composition: dict[str, float], species: dict[str, str], blocks, max_atoms: int) -> list[tuple[int, ...]]:
    """Per-role cell counts: the reduced formula times every number of formula units that fits."""
    amounts = [composition[species[r]] for r in blocks.roles]
    if any(abs(a - round(a)) > 1e-6 or round(a) < 1 for a in amounts):
        return []
    ints = [int(round(a)) for a in amounts]
    g = math.gcd(*ints)
    base = [a // g for a in ints]
    out = []
    for z in range(1, max(blocks.max_counts) + 1):
        c = tuple(b * z for b in base)
        if all(n <= m for n, m in zip(c, blocks.max_counts, strict=True)) and (not max_atoms or sum(c) <= max_atoms):
            out.append(c)
    return out


def role_compositions(elements: list[str], blocks, max_atoms: int) -> list[tuple[dict[str, str], tuple[int, ...]]]:
    """Every (role -> element, cell counts) of the campaign's elements that is charge balanced."""
    from pymatgen.core import Element

    out = []
    anion_roles = [i for i, s in enumerate(blocks.signs) if s == "anion"]
    for combo in itertools.permutations(elements, len(blocks.roles)):
        species = dict(zip(blocks.roles, combo, strict=True))
        if any((i in anion_roles) != any(s < 0 for s in _states(el)) for i, el in enumerate(combo)):
            continue
        cations = [combo[i] for i in range(len(combo)) if i not in anion_roles]
        if cations != sorted(cations, key=lambda e: (Element(e).X, e)):
            continue  # one role order per cation pair (the lower electronegativity on A)
        for counts in itertools.product(*(range(1, m + 1) for m in blocks.max_counts)):
            if max_atoms and sum(counts) > max_atoms:
                continue
            if _balanced(counts, combo):
                out.append((species, counts))
    return out


class CrystalGANGenerator:
    """`~discovery.protocols.Generator` backed by a trained `CrystalGANModel`."""

    name = "crystal_gan"

    def __init__(self, config: CrystalGANGeneratorConfig, elements: list[str], max_atoms: int):
        from discovery.lifecycle import check_device
        from discovery.models.crystal_gan.trainer import TRAINER

        check_device(config.device)
        self.config = config
        self.model = TRAINER.load(config.checkpoint_dir, config.device)
        self.blocks = self.model.blocks
        self.elements = list(dict.fromkeys(elements))
        self.max_atoms = max_atoms
        manifest = (config.checkpoint_dir / "crystal_gan.json").read_bytes()
        self.version = hashlib.sha256(manifest).hexdigest()[:12]
        self._pool: list[tuple[dict[str, str], tuple[int, ...]]] | None = None
        self._hit_pool: dict[str, tuple[dict[str, str], tuple[int, ...]]] = {}

    @property
    def pool(self) -> list[tuple[dict[str, str], tuple[int, ...]]]:
        """Charge-balanced (roles, counts) of the campaign's elements (built on first use)."""
        if self._pool is None:
            self._pool = role_compositions(self.elements, self.blocks, self.max_atoms) if self.elements else []
            logger.info("crystal_gan: %d charge-balanced role compositions of %s", len(self._pool), self.elements)
        return self._pool

    def _from_condition(self, value: Any) -> list[tuple[dict[str, str], tuple[int, ...]]]:
        from pymatgen.core import Composition

        comp = Composition(value) if isinstance(value, str) else Composition(dict(value))
        amounts = comp.element_composition.get_el_amt_dict()
        species = assign_roles(amounts, self.blocks)
        if species is None:
            logger.info("crystal_gan: composition %s does not fit roles %s", comp.reduced_formula, self.blocks.roles)
            return []
        return [(species, c) for c in cell_counts(amounts, species, self.blocks, self.max_atoms)]

    def _choose(self, options: list, rng: np.random.Generator, k: int) -> list:
        hits = list(self._hit_pool.values())
        out = []
        for _ in range(k):
            src = hits if hits and rng.random() < self.config.hit_share else options
            out.append(src[int(rng.integers(len(src)))])
        return out

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` new valid structures (see the module docstring)."""
        from discovery.models.crystal_gan.representation import forced_occupancy
        from discovery.structures import make_candidate, structural_problem

        if n <= 0:
            return []
        if conditions.get("composition"):
            options = self._from_condition(conditions["composition"])
            fixed = True
        else:
            options, fixed = self.pool, False
        if not options:
            return []
        out: list[Candidate] = []
        seen: set[str] = set()
        for _ in range(self.config.max_draws):
            missing = n - len(out)
            if missing <= 0:
                break
            k = missing * self.config.oversample
            picks = ([options[int(rng.integers(len(options)))] for _ in range(k)] if fixed
                     else self._choose(options, rng, k))
            counts = np.array([c for _, c in picks])
            mats, occ = self.model.sample_matrices(counts, rng)
            if self.config.decoder == "forced":
                occ = np.array([forced_occupancy(m, self.blocks, k) for m, k in zip(mats, counts, strict=True)])
            for i, (species, c) in enumerate(picks):
                if len(out) >= n:
                    break
                dec = self.model.decode(mats[i:i + 1], species=species,
                                        occupancy=occ[i:i + 1] if self.config.decoder != "threshold" else None)[0]
                s = dec.structure
                if s is None or dec.counts != tuple(c) or (self.max_atoms and len(s) > self.max_atoms):
                    continue
                if structural_problem(s, MIN_DISTANCE_A) is not None:
                    continue
                training = dict(zip(self.blocks.roles, self.blocks.elements, strict=True))
                cond = {**conditions, "composition": s.composition.reduced_formula,
                        "cell_counts": {species[r]: int(k) for r, k in zip(self.blocks.roles, c, strict=True)},
                        "roles": dict(species),
                        "substitution": {training[r]: species[r] for r in self.blocks.roles if species[r] != training[r]},
                        "decoder": self.config.decoder, "model": "crystal_gan"}
                cand = make_candidate(s, self.name, self.version, conditions=cond)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                out.append(cand)
        logger.debug("crystal_gan: %d of %d proposals", len(out), n)
        return out

    def update(self, feedback: dict[str, Any]) -> None:
        """Remember the compositions of confirmed hits that fit the roles (sampled with ``hit_share``)."""
        hits = set()
        for h in feedback.get("hits", ()) or ():
            hits.add(h if isinstance(h, str) else getattr(h, "id", None))
        known = {c.id: c for c in feedback.get("known", ()) or ()}
        for cand, _value in feedback.get("labels", ()) or ():
            known.setdefault(cand.id, cand)
        for cid in hits:
            cand = known.get(cid)
            if cand is None:
                continue
            amounts = cand.pmg.composition.element_composition.get_el_amt_dict()
            if self.elements and not set(amounts) <= set(self.elements):
                continue
            for species, c in self._from_condition(amounts):
                self._hit_pool.setdefault(f"{species}{c}", (species, c))
