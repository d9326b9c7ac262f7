"""CD-VAE in the campaign loop: `CDVAEGenerator` proposes crystals from a trained CD-VAE.

Modes (``mode`` in the config, or ``conditions["mode"]`` for one call):

- **random**: z ~ N(0, I), decoded by annealed Langevin dynamics (CD-VAE's ``gen``);
- **targeted**: z ~ N(mu_base, latent_scale^2 I) around a base crystal's latent mean;
- **optimize**: from mu_base + latent_scale * N(0, I), ``opt_steps`` Adam steps on z that lower the
  property head (CD-VAE's ``opt``: lower formation energy when the model learned one), then decoded.

Bases are the DFT-confirmed hits once there are any (`update`); before that, the training
structures of the lowest (most stable) property decile stored in the model's manifest. Each
targeted or optimised candidate names its base in ``parent_ids``; every candidate records
``mode`` (and, for optimize, ``target``) in its conditions.

``conditions["composition"]`` (a formula such as ``"SrTiO3"``, one cell's worth of atoms) forces
the atoms of every crystal (CD-VAE's ``gt_atom_types``); otherwise, with ``restrict_species``,
only the campaign's elements can appear (the type and composition logits of other elements are
masked). Proposals must pass `discovery.structures.structural_problem` (0.5 A) and hold at most the
campaign's ``max_atoms`` sites; duplicates within a call are dropped. Up to `MAX_DRAWS` draws of
`OVERSAMPLE` times the missing number are made, so fewer than ``n`` may come back.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery.errors import ConfigError, DataError
from discovery.generators.feedback import record_hits
from discovery.records import Candidate

if TYPE_CHECKING:  # kind.py imports this module (lazily, in build); no import back
    from discovery.generators.cdvae.kind import CDVAEGeneratorConfig

logger = logging.getLogger(__name__)

#: Crystals decoded per missing candidate in one draw.
OVERSAMPLE = 2
#: Draws per `propose` call before giving up on reaching ``n``.
MAX_DRAWS = 3


class CDVAEGenerator:
    """`~discovery.protocols.Generator` backed by a trained CD-VAE (`CDVAEModel`).

    Args:
        config: `CDVAEGeneratorConfig`.
        elements: the campaign's elements (the only ones decoded when ``restrict_species``).
        max_atoms: proposals with more sites are dropped (0: no limit besides the model's).

    Raises:
        DataError: the model folder is missing or damaged (one line naming the file).
        ConfigError: another preset than asked, optimize mode without a property head, an unknown
            element, or CUDA without a GPU.
    """

    name = "cdvae"

    def __init__(self, config: CDVAEGeneratorConfig, elements: list[str] | tuple[str, ...] = (), max_atoms: int = 0):
        from discovery.models.cdvae.trainer import TRAINER
        from discovery.models.cdvae.wrapper import species_numbers

        self.config = config
        self.model = TRAINER.load(config.checkpoint_dir, config.device)
        if config.preset is not None and self.model.config.preset != config.preset:
            raise ConfigError(f"generators: cdvae {config.checkpoint_dir} holds a {self.model.config.preset!r} model, "
                              f"the campaign asks for {config.preset!r}")
        if config.mode == "optimize" and self.model.property is None:
            raise ConfigError(f"generators: cdvae mode optimize needs a property head; the model in "
                              f"{config.checkpoint_dir} was trained without a property column")
        self.elements = list(dict.fromkeys(elements))
        species_numbers(self.elements, "generators: cdvae elements")
        self.allowed_species = self.elements if (config.restrict_species and self.elements) else None
        self.max_atoms = int(max_atoms)
        self.version = self.model.version
        self.langevin = config.langevin_overrides()
        self._candidates: dict[str, Candidate] = {}
        self._labels: dict[str, float] = {}
        self._hits: dict[str, None] = {}
        self._mu: dict[str, np.ndarray] = {}
        self._unusable: set[str] = set()
        self._manifest_bases: list[tuple[str, Any]] | None = None

    # ------------------------------------------------------------------ feedback

    def update(self, feedback: dict[str, Any]) -> None:
        """Remember known structures and labels; DFT-confirmed ``hits`` become the bases."""
        for cand in feedback.get("known", ()) or ():
            self._candidates.setdefault(cand.id, cand)
        for cand, value in feedback.get("labels", ()) or ():
            self._candidates[cand.id] = cand
            if value is not None and math.isfinite(float(value)):
                self._labels[cand.id] = float(value)
        record_hits(feedback, self._candidates, self._hits)

    @property
    def hit_bases(self) -> list[str]:
        """Ids of the confirmed hits usable as bases (known structure, encodable)."""
        return [h for h in self._hits if h in self._candidates and h not in self._unusable]

    # ------------------------------------------------------------------ bases

    def _bases(self) -> list[tuple[str, Any]]:
        hits = [(h, self._candidates[h].pmg) for h in self.hit_bases]
        if hits:
            return hits
        if self._manifest_bases is None:
            from discovery.data.loaders import parse_cif

            self._manifest_bases = []
            for b in self.model.manifest.get("bases", []):
                try:
                    self._manifest_bases.append((str(b["id"]), parse_cif(b["cif"])))
                except (KeyError, ValueError) as exc:
                    logger.info("cdvae: stored base unusable (%s)", exc)
        return [b for b in self._manifest_bases if b[0] not in self._unusable]

    def _encoded(self, bases: list[tuple[str, Any]]) -> list[tuple[str, np.ndarray]]:
        """Latent means of the bases that the model can encode (cached by id)."""
        new = [(cid, s) for cid, s in bases if cid not in self._mu]
        for cid, structure in new:
            try:
                mu, _ = self.model.encode([structure])
            except DataError as exc:
                logger.info("cdvae: base %s cannot be encoded (%s)", cid, exc)
                self._unusable.add(cid)
                continue
            self._mu[cid] = mu[0]
        return [(cid, self._mu[cid]) for cid, _ in bases if cid in self._mu]

    # ------------------------------------------------------------------ proposals

    def _draw(self, mode: str, k: int, composition: Any, rng: np.random.Generator
              ) -> tuple[list[Any], list[str | None], str]:
        latent = self.model.latent_dim
        bases = self._encoded(self._bases()) if mode in ("targeted", "optimize") else []
        if mode in ("targeted", "optimize") and not bases:
            logger.info("cdvae: no usable base for %s sampling; sampling at random", mode)
            mode = "random"
        parents: list[str | None] = [None] * k
        if mode == "random":
            z = rng.standard_normal((k, latent)).astype(np.float32)
        else:
            pick = rng.integers(len(bases), size=k)
            mu = np.stack([bases[i][1] for i in pick])
            z = (mu + self.config.latent_scale * rng.standard_normal((k, latent))).astype(np.float32)
            parents = [bases[i][0] for i in pick]
            if mode == "optimize":
                z = self.model.optimize_latent(z, self.config.opt_steps, self.config.opt_lr)
        structures = self.model.decode_around(z, rng, composition=composition, allowed_species=self.allowed_species,
                                              langevin=self.langevin)
        return structures, parents, mode

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid, distinct crystals (see the module docstring).

        Args:
            n: candidates wanted.
            conditions: campaign conditions, copied into each candidate; ``mode`` and
                ``composition`` act on this call.
            rng: the only source of randomness.
        """
        from discovery.structures import make_candidate, structural_problem

        if n <= 0:
            return []
        mode = str(conditions.get("mode", self.config.mode))
        if mode not in ("random", "targeted", "optimize"):
            raise ValueError(f"cdvae: mode {mode!r}: expected random, targeted or optimize")
        if mode == "optimize" and self.model.property is None:
            raise ValueError("cdvae: mode optimize needs a model with a property head")
        composition = conditions.get("composition")
        if composition is not None:
            from discovery.models.cdvae.wrapper import composition_atoms

            try:  # a formula this model cannot make (too many atoms, fractional) gets no proposals
                composition_atoms(composition, self.model.max_atoms)
            except ConfigError as exc:
                logger.info("cdvae: %s", exc)
                return []
        record = {k: v for k, v in conditions.items() if k not in ("mode",)}
        out: list[Candidate] = []
        seen: set[str] = set()
        for _ in range(MAX_DRAWS):
            k = OVERSAMPLE * (n - len(out))
            structures, parents, used = self._draw(mode, k, composition, rng)
            for structure, parent in zip(structures, parents, strict=True):
                if structure is None or (self.max_atoms and len(structure) > self.max_atoms):
                    continue
                if structural_problem(structure, 0.5) is not None:
                    continue
                cond = {**record, "mode": used}
                if used == "optimize":
                    cond["target"] = f"minimise {self.model.property}"
                cand = make_candidate(structure, self.name, self.version, parent_ids=(parent,) if parent else (),
                                      conditions=cond)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                out.append(cand)
                if len(out) >= n:
                    break
            if len(out) >= n:
                break
        logger.debug("cdvae: %d of %d proposals (%s)", len(out), n, mode)
        return out
