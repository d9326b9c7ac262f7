"""ICSG3D as a campaign generator: decode crystals of a target property decile from a trained model.

The model is trained beforehand (``discovery train icsg3d``, `discovery.models.icsg3d`), or by the
campaign before its workers start when the campaign file names ``train_data`` and the folder holds
no model yet (the generic lifecycle, `discovery.lifecycle`), and loaded from ``checkpoint_dir`` when
the generator is built (inside its worker).

Proposals (`ICSG3DGenerator.propose`):

- **targeted** (default, MODELS.md 1.5): z ~ N(mu_base, latent_scale^2 I) around a base compound,
  decoded under the base's own decile. Bases are the confirmed hits (``update``); before the first
  hit, the training structures stored in the manifest for the target decile (four per decile).
  Each candidate records its base in ``parent_ids``.
- **random**: z ~ N(0, I) under the target decile.

Decoded structures must be valid (1-40 sites, all distances >= 0.5 A, `Samples.valid`) and have at
most the campaign's ``max_atoms`` sites; duplicates within a call are dropped. Candidates carry
``conditions = {**conditions, "decile": d, "mode": mode}``. Up to `MAX_DRAWS` draws of
``OVERSAMPLE`` times the missing number are made, so fewer than ``n`` may come back. With
``restrict_species`` the species of every voxel is the most likely *campaign* element, so every
proposal stays in the campaign's chemistry.

Feedback (`ICSG3DGenerator.update`, the campaign's dict) understands:

- ``labels``: (Candidate, value) pairs of the condition property (e.g. DFT formation energies; a
  label also counts for the candidate's parents, since a relaxed copy names the proposal as its
  parent). They are used when ``property`` is absent, equals the model's condition property, or
  both are formation energies (`FORMATION_ENERGY_LABELS`: a perov_5 model conditions on
  ``heat_ref``, a campaign reports ``formation_energy_per_atom``). The decile edges are then
  recomputed with ``np.quantile`` over the training labels plus every label seen so far
  (`discovery.featurize.deciles.DecileConditions`, shared with the substitution generator);
- ``hits``: candidate ids (or Candidates) confirmed by DFT; they become the bases of targeted
  sampling, and the target decile moves to the decile of the median labelled hit. Without labelled
  hits the target stays at ``target_decile`` (default 0, the lowest, i.e. most stable, decile);
- ``known``: Candidates (seeds, evaluated structures), used to resolve hit ids to structures.

With ``fine_tune_epochs > 0`` the VAE is fine-tuned on the hits (same loss, frozen UNet) whenever new
usable hits arrive; the version then gains a ``-ft<k>`` suffix. The version is otherwise the first
12 hex digits of the manifest's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND
from discovery.errors import ConfigError, DataError
from discovery.featurize.deciles import DecileConditions, one_hot
from discovery.kinds import BuildContext, Kind
from discovery.lifecycle import TrainedModelFields
from discovery.models.icsg3d.presets import ICSG3DConfig
from discovery.generators.feedback import record_hits
from discovery.records import Candidate

logger = logging.getLogger(__name__)

#: Label names that all mean a formation energy per atom (eV/atom).
FORMATION_ENERGY_LABELS = frozenset({"formation_energy_per_atom", "heat_ref", "heat_all"})
#: Samples decoded per missing candidate in one draw (validity is far below 100 %).
OVERSAMPLE = 3
#: Draws per `propose` call before giving up on reaching ``n``.
MAX_DRAWS = 4


class ICSG3DGeneratorConfig(TrainedModelFields):
    """ICSG3D (Cond-DFC-VAE + 3-D UNet on voxel maps), trained with ``discovery train icsg3d`` or by
    the campaign (`~discovery.lifecycle.TrainedModelFields`: ``checkpoint_dir``, ``preset``,
    ``train_data``, ``train`` -- any key of `ICSG3DConfig`, e.g. ``{condition_property: heat_ref,
    vae: {epochs: 10}}`` --, ``train_seed``, ``device``). See the module docstring for modes and
    feedback.
    """

    model_name: ClassVar[str] = "icsg3d"
    training_model: ClassVar[type] = ICSG3DConfig

    kind: Literal["icsg3d"] = "icsg3d"
    n_per_round: int = Field(20, ge=1, le=MAX_PROPOSALS_PER_ROUND)
    mode: Literal["random", "targeted"] = "targeted"
    target_decile: int | None = Field(
        None, ge=0, description="condition decile to sample; default: the lowest (most stable) one")
    decile_arms: list[int] | None = Field(
        None, description="deciles the campaign's bandit treats as separate arms (icsg3d|decile=k); "
                          "default: one arm, the generator's own target")
    latent_scale: float = Field(0.5, gt=0, description="std of targeted samples around a base's latent mean")
    fine_tune_epochs: int = Field(0, ge=0, description="VAE epochs on confirmed hits after each update (0: off)")
    restrict_species: bool = Field(True, description="decode only the campaign's elements")


    def condition_arms(self) -> list[dict[str, Any]]:
        """The (generator, condition) arms this generator offers a campaign's bandit."""
        return [{"decile": d} for d in self.decile_arms] if self.decile_arms else [{}]


def build(config: ICSG3DGeneratorConfig, context: BuildContext) -> ICSG3DGenerator:
    return ICSG3DGenerator(config, context.elements, context.max_atoms)


KIND = Kind(role="generator", name="icsg3d", config=ICSG3DGeneratorConfig, factory="discovery.generators.icsg3d:build",
            summary="samples a trained ICSG3D model around hits or at random, conditioned on a decile",
            models=("icsg3d",))


class ICSG3DGenerator:
    """`~discovery.protocols.Generator` backed by a trained `ICSG3DModel`.

    Args:
        config: `ICSG3DGeneratorConfig`.
        elements: the campaign's elements (species of decoded crystals when ``restrict_species``).
        max_atoms: proposals with more sites are dropped (0: no limit besides the model's 40).

    Raises:
        DataError: the checkpoint folder is missing or damaged (one line naming the file).
        ConfigError: ``target_decile`` outside the model's deciles, an element the model cannot
            represent, or CUDA without a GPU.
    """

    name = "icsg3d"

    def __init__(self, config: ICSG3DGeneratorConfig, elements: list[str] | tuple[str, ...] = (),
                 max_atoms: int = 0):
        from discovery.models.icsg3d.model import ICSG3DModel

        self.config = config
        self.model = ICSG3DModel.load(config.checkpoint_dir, device=config.device)
        if config.preset is not None and self.model.config.preset != config.preset:
            raise ConfigError(f"generators: icsg3d {config.checkpoint_dir} holds a {self.model.config.preset!r} "
                              f"model, the campaign asks for {config.preset!r}")
        n = self.model.n_deciles
        if config.target_decile is not None and not 0 <= config.target_decile < n:
            raise ConfigError(f"generators: icsg3d target_decile {config.target_decile} is outside 0..{n - 1} "
                              f"(the model in {config.checkpoint_dir} has {n} deciles)")
        self.elements = list(dict.fromkeys(elements))
        self.max_atoms = int(max_atoms)
        self.allowed_species: list[str] | None = None
        if config.restrict_species and self.elements:
            from pymatgen.core.periodic_table import Element

            n_classes = self.model.voxel_config.n_classes
            bad = [e for e in self.elements if Element(e).Z >= n_classes]
            if bad:
                raise ConfigError(f"generators: icsg3d cannot represent {bad} (atomic numbers below {n_classes})")
            self.allowed_species = self.elements
        self._base_version = self.model.version
        self.version = self._base_version
        self._train_labels = np.asarray(self.model.manifest.get("train_labels", []), dtype=np.float64)
        self._default_target = 0 if config.target_decile is None else int(config.target_decile)
        self.conditions = DecileConditions(n, edges=self.model.decile_edges)
        self.conditions.target = self._default_target
        self._labels: dict[str, float] = {}  # labelled (evaluated) candidate id -> value
        self._parent_labels: dict[str, float] = {}  # proposal id -> label of its relaxed copy
        self._candidates: dict[str, Candidate] = {}
        self._proposed: set[str] = set()  # ids of this generator's proposals
        self._hits: dict[str, None] = {}
        self._mu: dict[str, np.ndarray] = {}
        self._unusable: set[str] = set()
        self._fine_tuned_on: set[str] = set()
        self._n_fine_tunes = 0
        self._manifest_bases = [
            (str(b["id"]), b["structure"], int(b["decile"])) for b in self.model.manifest.get("bases", [])]

    # ------------------------------------------------------------------ feedback

    @property
    def decile_edges(self) -> np.ndarray:
        """Current inner decile edges of the condition property. Shapes: (n_deciles - 1,)."""
        return self.conditions.edges

    @property
    def target_decile(self) -> int:
        """The decile random sampling aims at and whose stored bases targeted sampling starts from."""
        return int(self.conditions.target)

    def _uses(self, prop: Any) -> bool:
        mine = self.model.condition_property
        both_formation = prop in FORMATION_ENERGY_LABELS and mine in FORMATION_ENERGY_LABELS
        return prop is None or prop == mine or both_formation

    def update(self, feedback: dict[str, Any]) -> dict[str, Any]:
        """Take labels, hits and known structures into account (see the module docstring); returns
        the conditions the generator now samples under (recorded by the campaign every round)."""
        for cand in feedback.get("known", ()) or ():
            self._candidates.setdefault(cand.id, cand)
        labels = feedback.get("labels", ()) or ()
        if labels and not self._uses(feedback.get("property")):
            logger.info("icsg3d: ignoring %s labels (the model is conditioned on %s)", feedback.get("property"),
                        self.model.condition_property)
            labels = ()
        for cand, value in labels:
            self._candidates[cand.id] = cand
            if value is not None and math.isfinite(float(value)):
                self._labels[cand.id] = float(value)
                for pid in cand.parent_ids:  # a relaxed copy names the proposed candidate as parent
                    self._parent_labels.setdefault(pid, float(value))
        record_hits(feedback, self._candidates, self._hits)
        hit_values = [v for v in (self._label(h) for h in self._hits) if v is not None]
        if labels or hit_values:
            values = np.concatenate([self._train_labels, np.fromiter(self._labels.values(), float)])
            self.conditions.update(values, hit_values)
            if not hit_values:
                self.conditions.target = self._default_target
            self._mu.clear()  # base deciles may have moved
        if self.config.fine_tune_epochs > 0:
            self._fine_tune()
        own = sum(1 for pid in self._parent_labels if pid in self._proposed)
        return {"property": self.model.condition_property, "target_decile": self.target_decile,
                "decile_edges": [float(e) for e in self.decile_edges], "n_labels": len(self._labels),
                "n_labels_own": own, "n_hits": len(self._hits), "version": self.version}

    def _decile(self, value: float) -> int:
        return self.conditions.bin(value)

    def _label(self, cid: str) -> float | None:
        """The label of a candidate, or of the relaxed copy made from it; None when unknown."""
        return self._labels.get(cid, self._parent_labels.get(cid))

    def _fine_tune(self) -> None:
        new = [h for h in self._hits if h not in self._fine_tuned_on and h in self._candidates
               and h not in self._unusable]
        if not new:
            return
        ids = [h for h in self._hits if h in self._candidates and h not in self._unusable]
        structures = [self._candidates[h].pmg for h in ids]
        deciles = [self._base_decile(h) for h in ids]
        seed = int.from_bytes(hashlib.sha256("|".join(sorted(ids)).encode()).digest()[:4], "little")
        losses = self.model.fine_tune_vae(structures, deciles, self.config.fine_tune_epochs, seed=seed)
        self._fine_tuned_on.update(ids)
        if losses:
            self._n_fine_tunes += 1
            self.version = f"{self._base_version}-ft{self._n_fine_tunes}"
            self._mu.clear()
            logger.info("icsg3d: VAE fine-tuned on %d hits for %d epochs (loss %.4g -> %.4g)", len(ids),
                        len(losses), losses[0], losses[-1])

    # ------------------------------------------------------------------ bases

    def _base_decile(self, cid: str) -> int:
        label = self._label(cid)
        if label is not None:
            return self._decile(label)
        structure = self._candidates[cid].pmg
        pred = self.model.heads.predict([structure], gap_rule=False)[self.model.condition_property]
        return self._decile(float(pred[0])) if np.isfinite(pred[0]) else self.target_decile

    def _bases(self, decile: int) -> list[tuple[str, Any, int]]:
        """(id, structure, decile) of the bases for targeted sampling."""
        hits = [(h, self._candidates[h].pmg, self._base_decile(h)) for h in self._hits
                if h in self._candidates and h not in self._unusable]
        if hits:
            return hits
        from pymatgen.core import Structure

        stored = [(i, Structure.from_dict(s), d) for i, s, d in self._manifest_bases if i not in self._unusable]
        return [b for b in stored if b[2] == decile] or stored

    def _encoded(self, bases: list[tuple[str, Any, int]]) -> list[tuple[str, np.ndarray, int]]:
        """Posterior means of the bases that can be voxelised (cached by id)."""
        out = []
        for cid, structure, dec in bases:
            if cid not in self._mu:
                try:
                    mu, _, _ = self.model.encode([structure], [dec])
                except DataError as exc:
                    logger.info("icsg3d: base %s cannot be used (%s)", cid, exc)
                    self._unusable.add(cid)
                    continue
                self._mu[cid] = mu[0]
            out.append((cid, self._mu[cid], dec))
        return out

    # ------------------------------------------------------------------ proposals

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Up to ``n`` valid, distinct crystals of the target decile.

        Args:
            n: candidates wanted.
            conditions: campaign conditions, copied into each candidate; ``decile`` and ``mode``
                override the generator's target and mode for this call.
            rng: the only source of randomness.
        """
        from discovery.structures import make_candidate

        if n <= 0:
            return []
        decile = int(conditions.get("decile", self.target_decile))
        if not 0 <= decile < self.model.n_deciles:
            raise ValueError(f"icsg3d: decile {decile} outside 0..{self.model.n_deciles - 1}")
        mode = str(conditions.get("mode", self.config.mode))
        record = {k: v for k, v in conditions.items() if k not in ("decile", "mode")}
        latent = self.model.config.vae.latent
        out: list[Candidate] = []
        seen: set[str] = set()
        for _ in range(MAX_DRAWS):
            k = OVERSAMPLE * (n - len(out))
            bases = self._encoded(self._bases(decile)) if mode == "targeted" else []
            if mode == "targeted" and bases:
                pick = rng.integers(len(bases), size=k)
                mu = np.stack([bases[i][1] for i in pick])
                z = (mu + self.config.latent_scale * rng.standard_normal((k, latent))).astype(np.float32)
                deciles = np.array([bases[i][2] for i in pick], dtype=np.int64)
                samples = self.model.decode(z, one_hot(deciles, self.model.n_deciles), self.allowed_species,
                                            base_index=pick)
                used_mode = "targeted"
            else:
                if mode == "targeted":
                    logger.info("icsg3d: no usable base for targeted sampling; sampling at random")
                samples = self.model.sample_random(k, decile, rng, self.allowed_species)
                used_mode = "random"
            for j in np.flatnonzero(samples.valid):
                structure = samples.structures[j]
                if self.max_atoms and len(structure) > self.max_atoms:
                    continue
                cond = {**record, "decile": int(samples.deciles[j]), "mode": used_mode}
                parents: tuple[str, ...] = ()
                if used_mode == "targeted":
                    parents = (bases[int(samples.base_index[j])][0],)
                cand = make_candidate(structure, self.name, self.version, parent_ids=parents, conditions=cond)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                self._proposed.add(cand.id)
                out.append(cand)
                if len(out) >= n:
                    break
            logger.debug("icsg3d: draw of %d gave %d valid (%d kept so far)", k, int(samples.valid.sum()),
                         len(out))
            if len(out) >= n:
                break
        return out
