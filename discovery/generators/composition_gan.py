"""Composition models (CondGAN, CondVAE) as campaign generators: compositions first, then structures.

A trained composition model (``discovery train composition_gan`` / ``composition_vae``, or trained by
the campaign through `~discovery.lifecycle.TrainedModelFields`) proposes compositions for a target
formation energy; each composition is handed to a structure step
(`discovery.generators.composition_structures.structures_for_composition`: matching prototypes and
random symmetric structures).

`CompositionModelGenerator.propose(n, conditions, rng)`:

1. the target is ``conditions["target_formation_energy_ev"]`` (eV/atom) when given, else
   ``target_ev`` (default -3.0, the paper's);
2. ``samples`` compositions are generated at the target; with ``restrict_elements`` (default) every
   element outside the campaign's is zeroed before the 0.03 threshold (our restriction, so the
   model proposes within the campaign's chemistry); then Metropolis-Hastings valence correction,
   the smallest integer formula (at most ``max_atoms`` atoms) and SMACT's neutrality +
   electronegativity check (`discovery.models.composition_gan.valence`);
3. the SMACT-valid formulas, most frequent first, go to the structure step until ``n`` distinct
   structures exist. ``conditions["composition"]`` skips steps 1-2 and uses that formula.

Every candidate's ``conditions``: the campaign's conditions plus ``composition`` (reduced formula),
``composition_model`` (``composition_gan`` / ``composition_vae``), ``composition_model_version``,
``target_formation_energy_ev`` and ``structure_generator`` (``prototype:<name>`` or
``random_symmetric:<space group>``).

`propose_compositions` returns the valid formulas alone (for a composition-first campaign step
that hands them to other structure generators through ``conditions["composition"]``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND
from discovery.kinds import BuildContext, Kind
from discovery.lifecycle import TrainedModelFields
from discovery.models.composition_gan.config import CompositionGANConfig, CompositionVAEConfig
from discovery.records import Candidate

logger = logging.getLogger(__name__)


class _CompositionGeneratorFields(TrainedModelFields):
    n_per_round: int = Field(20, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    target_ev: float = Field(-3.0, description="target formation energy per atom (eV/atom) without a condition")
    samples: int = Field(256, ge=1, description="compositions generated per propose call")
    restrict_elements: bool = Field(True, description="zero elements outside the campaign before the threshold")
    structure_methods: list[Literal["prototype", "random_symmetric"]] = Field(
        default_factory=lambda: ["prototype", "random_symmetric"], min_length=1)
    random_per_composition: int = Field(1, ge=0, description="random symmetric structures per composition")
    mh_iterations: int = Field(10_000, ge=0, description="Metropolis-Hastings iterations at most")


class CompositionGANGeneratorConfig(_CompositionGeneratorFields):
    """CondGAN compositions + structure step (see the module docstring)."""

    model_name: ClassVar[str] = "composition_gan"
    training_model: ClassVar[type] = CompositionGANConfig
    kind: Literal["composition_gan"] = "composition_gan"


class CompositionVAEGeneratorConfig(_CompositionGeneratorFields):
    """CondVAE compositions + structure step (see the module docstring)."""

    model_name: ClassVar[str] = "composition_vae"
    training_model: ClassVar[type] = CompositionVAEConfig
    kind: Literal["composition_vae"] = "composition_vae"


def build(config: _CompositionGeneratorFields, context: BuildContext) -> CompositionModelGenerator:
    return CompositionModelGenerator(config, list(context.elements), context.max_atoms)


GAN_KIND = Kind(role="generator", name="composition_gan", config=CompositionGANGeneratorConfig,
                factory="discovery.generators.composition_gan:build",
                summary="CondGAN compositions for a target formation energy, then prototype / pyxtal structures",
                models=("composition_gan",), proposes_compositions=True)
VAE_KIND = Kind(role="generator", name="composition_vae", config=CompositionVAEGeneratorConfig,
                factory="discovery.generators.composition_gan:build",
                summary="CondVAE compositions for a target formation energy, then prototype / pyxtal structures",
                models=("composition_vae",), proposes_compositions=True)
KINDS = (GAN_KIND, VAE_KIND)


class CompositionModelGenerator:
    """`~discovery.protocols.Generator`: a composition model followed by a structure step."""

    def __init__(self, config: _CompositionGeneratorFields, elements: list[str], max_atoms: int):
        from discovery.lifecycle import check_device
        from discovery.models.composition_gan.trainer import COMPOSITION_GAN_TRAINER, COMPOSITION_VAE_TRAINER

        check_device(config.device)
        self.config = config
        self.name = config.model_name
        trainer = COMPOSITION_GAN_TRAINER if self.name == "composition_gan" else COMPOSITION_VAE_TRAINER
        self.model = trainer.load(config.checkpoint_dir, config.device)
        self.version = hashlib.sha256((config.checkpoint_dir / f"{self.name}.json").read_bytes()).hexdigest()[:12]
        self.elements = list(dict.fromkeys(elements))
        self.max_atoms = max_atoms or 20

    def propose_compositions(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
        """Up to ``n`` distinct SMACT-valid formulas at the target, most frequent first.

        Returns:
            ``{"composition", "counts", "target_formation_energy_ev", "composition_model"}`` dicts.
        """
        target = float(conditions.get("target_formation_energy_ev", self.config.target_ev))
        allowed = self.elements if (self.config.restrict_elements and self.elements) else None
        props = self.model.propose(target, self.config.samples, rng, self.max_atoms,
                                   iterations=self.config.mh_iterations, allowed=allowed)
        valid = [p for p in props if p.valid and (allowed is None or set(p.counts) <= set(allowed))]
        freq = Counter(p.formula for p in valid)
        first = {}
        for p in valid:
            first.setdefault(p.formula, p)
        ordered = sorted(first, key=lambda f: (-freq[f], f))[:n]
        return [{"composition": f, "counts": dict(first[f].counts), "target_formation_energy_ev": target,
                 "composition_model": self.name} for f in ordered]

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` distinct structures of proposed compositions (see the module docstring)."""
        from discovery.generators.composition_structures import structures_for_composition
        from discovery.structures import make_candidate

        if n <= 0:
            return []
        target = float(conditions.get("target_formation_energy_ev", self.config.target_ev))
        if conditions.get("composition"):
            from pymatgen.core import Composition

            formulas = [Composition(conditions["composition"]).reduced_formula]
        else:
            formulas = [c["composition"] for c in self.propose_compositions(n, conditions, rng)]
        out: list[Candidate] = []
        seen: set[str] = set()
        for formula in formulas:
            if len(out) >= n:
                break
            for structure, label in structures_for_composition(
                    formula, self.elements or [str(e) for e in structure_elements(formula)], self.max_atoms, rng,
                    self.config.random_per_composition, self.config.structure_methods):
                cond = {**conditions, "composition": structure.composition.reduced_formula,
                        "composition_model": self.name, "composition_model_version": self.version,
                        "target_formation_energy_ev": target, "structure_generator": label}
                cand = make_candidate(structure, self.name, self.version, conditions=cond)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                out.append(cand)
                if len(out) >= n:
                    break
        logger.debug("%s: %d structures from %d compositions", self.name, len(out), len(formulas))
        return out

    def update(self, feedback: dict[str, Any]) -> None:
        """Nothing to learn between rounds (the target comes from the conditions or the config)."""


def structure_elements(formula: str) -> list[str]:
    from pymatgen.core import Composition

    return [el.symbol for el in Composition(formula).elements]
