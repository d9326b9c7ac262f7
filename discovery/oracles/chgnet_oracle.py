"""CHGNet as the MLIP fidelity: relaxes candidates before DFT and scores them on its own hull.

The pretrained weights ship inside the chgnet wheel, so this works offline. CHGNet energies are
tagged ``Fidelity.MLIP`` and never enter a DFT hull or a DFT training set.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
import traceback

from typing import Literal

from pydantic import Field

from discovery.configbase import MAX_PROPOSALS_PER_ROUND, Strict
from discovery.kinds import BuildContext, Kind
from discovery.records import Candidate, Evaluation, Failure, Fidelity, Provenance

log = logging.getLogger(__name__)



class MLIPConfig(Strict):
    """CHGNet pre-relaxation and screening against CHGNet's own hull."""

    enabled: bool = True
    model: Literal["chgnet"] = "chgnet"
    fmax_ev_per_a: float = Field(0.05, gt=0)
    max_steps: int = Field(300, ge=1)
    top_k: int = Field(16, ge=1, le=MAX_PROPOSALS_PER_ROUND, description="candidates per round relaxed by the MLIP")
    max_e_above_hull_ev: float = Field(0.2, description="screen: drop candidates above this MLIP e_hull")


class CHGNetOracle:
    """Relax with CHGNet (FIRE + FrechetCellFilter; positions only for molecules in a box).

    Units: energies eV/atom, forces eV/A.
    """

    name = "chgnet"
    fidelity = Fidelity.MLIP

    def __init__(self, config: MLIPConfig, threads: int = 1):
        self.config = config
        self.threads = threads
        self._optimizer = None

    @property
    def version(self) -> str:
        import chgnet

        return chgnet.__version__

    @property
    def fingerprint(self) -> str:
        settings = {"code": "chgnet", "version": self.version, "fmax": self.config.fmax_ev_per_a,
                    "steps": self.config.max_steps}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def _load(self):
        if self._optimizer is None:
            import torch
            from chgnet.model import CHGNet, StructOptimizer

            torch.set_num_threads(self.threads)
            with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its banner
                model = CHGNet.load()
                self._optimizer = StructOptimizer(model=model)
        return self._optimizer

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """Relax one candidate; failures come back as ``status="failed"`` records."""
        start, cpu0 = time.time(), time.process_time()
        try:
            optimizer = self._load()
            structure = candidate.pmg
            molecule = candidate.conditions.get("calc") == "molecule"
            with contextlib.redirect_stdout(io.StringIO()):
                result = optimizer.relax(structure, fmax=self.config.fmax_ev_per_a,
                                         steps=self.config.max_steps, relax_cell=not molecule,
                                         verbose=False)
            final = result["final_structure"]
            # CHGNet attaches its predicted magmoms as site properties; DFT decides spin itself
            for prop in list(final.site_properties):
                final.remove_site_property(prop)
            energy = float(result["trajectory"].energies[-1]) / len(final)
            steps = len(result["trajectory"].energies)
            vol_change = final.volume / structure.volume - 1.0
            status, failure = "ok", None
            if not abs(energy) < 50:  # NaN or absurd energies from broken geometries
                status = "failed"
                failure = Failure(error_class="PostCheckFailed", message=f"energy {energy} eV/atom")
        except Exception as exc:  # CHGNet raises many types on pathological inputs
            final, energy, steps, vol_change = None, None, 0, None
            status = "failed"
            failure = Failure(error_class=type(exc).__name__, message=str(exc)[:500],
                              traceback=traceback.format_exc()[-4000:])
        return Evaluation(
            candidate_id=candidate.id, fidelity=Fidelity.MLIP, oracle=self.name,
            oracle_fingerprint=self.fingerprint, status=status,
            energy_per_atom=energy if status == "ok" else None,
            relaxed_structure=final.as_dict() if (final is not None and status == "ok") else None,
            properties={"n_steps": steps, **({"volume_change": vol_change} if vol_change is not None else {})},
            failure=failure,
            provenance=Provenance(code="chgnet", code_version=self.version,
                                  settings_fingerprint=self.fingerprint, started_at=start,
                                  wall_s=time.time() - start, cpu_s=time.process_time() - cpu0),
        )

    def evaluate_many(self, candidates: list[Candidate]) -> list[Evaluation]:
        return [self.evaluate(c) for c in candidates]


def build(config: MLIPConfig, context: BuildContext) -> CHGNetOracle:
    return CHGNetOracle(config)


KIND = Kind(role="mlip", name="chgnet", config=MLIPConfig, factory="discovery.oracles.chgnet_oracle:build",
            fidelity="mlip", summary="CHGNet 0.4 (weights in its wheel): relaxation and energies, the cheap fidelity")
