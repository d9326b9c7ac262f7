"""LCOM in the campaign loop: `LCOMGenerator` descends a conservative energy model in CD-VAE latent
space from good crystals and decodes with their composition forced.

Bases (where a latent path starts), best first, at most ``n_bases``:

1. the campaign's DFT hits (``update``: ``hits``), lowest DFT formation energy first;
2. the seeds (``known`` candidates of generator ``seed``) and the other labelled structures, lowest
   label first;
3. before the campaign knows any structure: the model's training rows of the lowest formation
   energy whose elements are all campaign elements.

Bases the CD-VAE cannot encode (too many atoms, other elements than the campaign's) are skipped.
With ``conditions["composition"]`` (a formula; its amounts are one cell) only bases of that reduced
formula are used, and when there are none, random starting structures of the formula
(`discovery.models.lcom.starts.random_start`, unrelaxed).

A proposal: a base drawn at random, its standardised latent plus ``latent_noise`` x N(0, I),
``steps`` plain gradient steps down the LCOM ensemble mean (composition fixed), CD-VAE Langevin
decoding with the base cell's atoms forced. It must pass `structural_problem` (0.5 A) and hold at
most the campaign's ``max_atoms`` sites; duplicates within a call are dropped. Each candidate names
its base in ``parent_ids`` (when the base is a campaign structure) and records ``composition``,
``start`` (hit / seed / label / training / random) and LCOM's ``predicted_formation_energy``.

Retraining: after an ``update`` that brings new DFT formation energies (``labels``), the members
continue their conservative training for ``fine_tune_steps`` steps on every label so far plus
``replay`` training rows (`LCOMModel.fine_tuned`, always from the trained weights, so the result
depends only on the labels and the seed), and the version gains ``-ft<k>``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery.errors import ConfigError, DataError
from discovery.generators.feedback import record_hits
from discovery.records import Candidate

if TYPE_CHECKING:
    from discovery.generators.lcom.kind import LCOMGeneratorConfig

logger = logging.getLogger(__name__)

OVERSAMPLE = 2
MAX_DRAWS = 3
FORMATION_ENERGY = "formation_energy_per_atom"


class LCOMGenerator:
    """`~discovery.protocols.Generator` backed by a trained `LCOMModel`.

    Raises:
        DataError: the model folder (or its CD-VAE) is missing or damaged.
        ConfigError: another preset than asked, or CUDA without a GPU.
    """

    name = "lcom"

    def __init__(self, config: LCOMGeneratorConfig, elements: tuple[str, ...] | list[str] = (), max_atoms: int = 0,
                 seed: Any = 0):
        from discovery.models.lcom.trainer import TRAINER

        self.config = config
        self.base_model = TRAINER.load(config.checkpoint_dir, config.device)
        if config.preset is not None and self.base_model.config.preset != config.preset:
            raise ConfigError(f"generators: lcom {config.checkpoint_dir} holds a {self.base_model.config.preset!r} "
                              f"model, the campaign asks for {config.preset!r}")
        self.model = self.base_model
        self.elements = set(elements)
        self.max_atoms = int(max_atoms)
        self.seed = int(seed) if isinstance(seed, int | np.integer) else int(
            np.random.SeedSequence(seed).generate_state(1)[0])
        self.langevin = config.langevin_overrides() or None
        self._known: dict[str, Candidate] = {}
        self._labels: dict[str, float] = {}
        self._hits: dict[str, None] = {}
        self._relaxed_of: dict[str, str] = {}  # proposal id -> id of its DFT-relaxed copy
        self._z: dict[str, np.ndarray] = {}
        self._unusable: set[str] = set()
        self._tuned_on: frozenset[str] = frozenset()

    @property
    def version(self) -> str:
        return self.model.version

    # ------------------------------------------------------------------ feedback

    def update(self, feedback: dict[str, Any]) -> dict[str, Any]:
        """Remember structures, hits and labels; fine-tune on new formation-energy labels."""
        for cand in feedback.get("known", ()) or ():
            self._known.setdefault(cand.id, cand)
        record_hits(feedback, self._known, self._hits)
        prop = feedback.get("property", FORMATION_ENERGY)
        for cand, value in feedback.get("labels", ()) or ():
            self._known[cand.id] = cand
            if cand.parent_ids:  # the campaign labels the relaxed copy; its hit is the proposal's id
                self._relaxed_of[cand.parent_ids[0]] = cand.id
            if value is not None and math.isfinite(float(value)) and prop in (None, FORMATION_ENERGY):
                self._labels[cand.id] = float(value)
        if self.config.fine_tune_steps and frozenset(self._labels) != self._tuned_on:
            self._fine_tune()
        return {"n_hits": len(self._hits), "n_labels": len(self._labels), "fine_tunes": self.model.fine_tunes,
                "n_bases": len(self._campaign_bases(None))}

    def _fine_tune(self) -> None:
        ids = [i for i in self._labels if self._latent(i) is not None]
        if not ids:
            return
        z = np.stack([self._z[i] for i in ids])
        comp = self.model.conditions([self._known[i].formula for i in ids])
        y = np.array([self._labels[i] for i in ids])
        self.model = self.base_model.fine_tuned(z, comp, y, self.config.fine_tune_steps, self.seed,
                                                replay=self.config.replay, lr=self.config.fine_tune_lr)
        self._tuned_on = frozenset(self._labels)
        logger.info("lcom: fine-tuned on %d DFT labels (version %s)", len(ids), self.model.version)

    # ------------------------------------------------------------------ bases

    def _fits(self, cand: Candidate) -> bool:
        s = cand.structure
        n = len(s["sites"])
        if n > self.model.max_atoms or (self.max_atoms and n > self.max_atoms):
            return False
        if self.elements:
            from pymatgen.core import Composition

            if not {str(el) for el in Composition(cand.formula).elements} <= self.elements:
                return False
        return True

    def _latent(self, cid: str) -> np.ndarray | None:
        if cid in self._z:
            return self._z[cid]
        if cid in self._unusable or cid not in self._known or not self._fits(self._known[cid]):
            self._unusable.add(cid)
            return None
        try:
            self._z[cid] = self.model.encode([self._known[cid].pmg])[0]
        except (DataError, ValueError) as exc:
            logger.info("lcom: %s cannot be encoded (%s)", cid, exc)
            self._unusable.add(cid)
            return None
        return self._z[cid]

    def _campaign_bases(self, formula: str | None) -> list[tuple[str, str]]:
        """``(candidate id, start kind)`` of usable campaign structures, best first."""
        def ok(cid: str) -> bool:
            c = self._known.get(cid)
            return c is not None and (formula is None or c.formula == formula) and self._fits(c)

        hit_ids = {self._relaxed_of.get(h, h) for h in self._hits}  # a hit starts from its relaxed structure
        hits = sorted((h for h in hit_ids if ok(h)), key=lambda h: (self._labels.get(h, math.inf), h))
        rest = [c for c in self._known if c not in hit_ids and ok(c)
                and (self._known[c].generator == "seed" or c in self._labels)]
        rest.sort(key=lambda c: (self._labels.get(c, math.inf), c))
        out = [(h, "hit") for h in hits] + [(c, "label" if c in self._labels else "seed") for c in rest]
        return out[:self.config.n_bases]

    def _bases(self, formula: str | None, atoms: list[int] | None, rng: np.random.Generator
               ) -> list[tuple[str | None, str, np.ndarray, str, list[int]]]:
        """``(parent id or None, start kind, standardised latent, formula, atoms)`` per base."""
        out = []
        for cid, kind in self._campaign_bases(formula):
            z = self._latent(cid)
            if z is not None:
                s = self._known[cid].pmg
                out.append((cid, kind, z, s.composition.reduced_formula, list(s.atomic_numbers)))
        if out:
            return out
        if formula is not None and atoms is not None:
            from discovery.models.lcom.starts import random_start

            starts = [random_start(atoms, rng) for _ in range(self.config.n_bases)]
            z = self.model.encode(starts)
            return [(None, "random", z[k], formula, list(atoms)) for k in range(len(starts))]
        table = self.model.training_entries()
        from pymatgen.core import Composition

        for k in np.argsort(table["y"], kind="stable"):
            comp = Composition(str(table["formulas"][k]))
            if self.elements and not {str(el) for el in comp.elements} <= self.elements:
                continue
            n = int(table["n_atoms"][k])
            if self.max_atoms and n > self.max_atoms:
                continue
            per = int(round(comp.num_atoms))
            cell = comp * (n // per) if n % per == 0 else None
            if cell is None:
                continue
            numbers = [el.Z for el, amt in cell.items() for _ in range(int(round(amt)))]
            out.append((None, "training", table["z"][k], comp.reduced_formula, numbers))
            if len(out) >= self.config.n_bases:
                break
        return out

    # ------------------------------------------------------------------ proposals

    def _composition(self, text: str) -> tuple[str | None, list[int] | None]:
        """The reduced formula and atoms of a requested composition; (None, None) for one this
        campaign or model cannot make (a composition model may suggest such formulas: declined,
        as the CD-VAE generator does, instead of ending the campaign)."""
        from discovery.models.lcom.starts import cell_atoms

        try:
            formula, atoms = cell_atoms(text, self.model.max_atoms)
        except ConfigError as exc:
            logger.info("lcom: composition %s declined (%s)", text, exc)
            return None, None
        from pymatgen.core import Element

        symbols = {Element.from_Z(z).symbol for z in atoms}
        if (self.elements and not symbols <= self.elements) or (self.max_atoms and len(atoms) > self.max_atoms):
            logger.info("lcom: composition %s declined (outside the campaign's elements or max_atoms)", text)
            return None, None
        return formula, atoms

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid, distinct crystals (see the module docstring)."""
        from discovery.structures import make_candidate, structural_problem

        if n <= 0:
            return []
        formula, atoms = None, None
        if conditions.get("composition"):
            formula, atoms = self._composition(str(conditions["composition"]))
            if formula is None:
                return []
        bases = self._bases(formula, atoms, rng)
        if not bases:
            logger.info("lcom: no usable base%s", f" for {formula}" if formula else "")
            return []
        record = dict(conditions)
        out: list[Candidate] = []
        seen: set[str] = set()
        for _ in range(MAX_DRAWS):
            k = OVERSAMPLE * (n - len(out))
            pick = rng.integers(len(bases), size=k)
            z0 = np.stack([bases[i][2] for i in pick])
            z0 = (z0 + self.config.latent_noise * rng.standard_normal(z0.shape)).astype(np.float32)
            comp = self.model.conditions([bases[i][3] for i in pick])
            path, energies = self.model.optimize(z0, comp, self.config.steps)
            decoded = self.model.decode(path[-1], [bases[i][4] for i in pick], rng, self.langevin)
            for j, (i, structure) in enumerate(zip(pick, decoded, strict=True)):
                parent, kind, _, base_formula, _ = bases[i]
                if structure is None or (self.max_atoms and len(structure) > self.max_atoms):
                    continue
                if structural_problem(structure, 0.5) is not None:
                    continue
                cond = {**record, "composition": base_formula, "start": kind,
                        "predicted_formation_energy": float(energies[-1, j])}
                cand = make_candidate(structure, self.name, self.version, parent_ids=(parent,) if parent else (),
                                      conditions=cond)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                out.append(cand)
                if len(out) >= n:
                    return out
        logger.debug("lcom: %d of %d proposals", len(out), n)
        return out
