"""What every oracle that runs one calculation per subprocess shares (GPAW, EMT, ...).

A subclass names its worker module, the settings that change its numbers and the code versions it
depends on, and may add cheap pre-checks and payload fields. This base gives it:

- a settings fingerprint: sha256 of the recipe version, those settings and the versions, so a
  result is tied to exactly what produced it (the ledger's key);
- one work folder per candidate under ``workdir / fingerprint / candidate_id``
  (`discovery.oracles.subprocess_runner`: run once, resumable, killed at its timeout);
- `evaluate`: pre-check in the parent, otherwise run the worker, and turn its result dict into an
  `Evaluation` (`evaluation_from_result`); never raises for a scientific failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from discovery.records import Candidate, Evaluation, Failure, Fidelity, Provenance

log = logging.getLogger(__name__)

#: Failure classes worth another attempt (infrastructure, not science).
RETRYABLE = frozenset({"Timeout", "MemoryLimit", "WorkerCrashed"})
#: Numbers a worker may report besides the energy (units as the worker gives them).
PROPERTY_KEYS = ("energy_ev", "initial_energy_per_atom", "max_stress_gpa", "initial_max_stress_gpa",
                 "max_force_ev_per_a", "magmom", "n_steps", "n_scf_retries", "volume_change",
                 "relax_converged", "cutoff_ev", "smearing_ev")


def evaluation_from_result(candidate: Candidate, result: dict[str, Any], *, oracle: str,
                           fidelity: Fidelity, fingerprint: str, code: str, code_version: str,
                           extra: dict[str, Any] | None = None) -> Evaluation:
    """Turn a worker result dict (`subprocess_runner`) into an `Evaluation` record.

    Units:
        energy_per_atom in eV/atom; properties keep the worker's units (eV, GPa, eV/A, mu_B).
    """
    ok = result.get("status") == "ok"
    properties = {k: float(result[k]) for k in PROPERTY_KEYS
                  if isinstance(result.get(k), int | float) and math.isfinite(float(result[k]))}
    failure = None
    if not ok:
        error_class = result.get("error_class", "WorkerError")
        failure = Failure(error_class=error_class, message=result.get("message", ""),
                          traceback=result.get("traceback", ""),
                          retryable=bool(result.get("retryable", error_class in RETRYABLE)))
    provenance = Provenance(code=code, code_version=code_version, settings_fingerprint=fingerprint,
                            wall_s=float(result.get("wall_s", 0.0)), cpu_s=float(result.get("cpu_s", 0.0)),
                            **{k: result[k] for k in ("host", "started_at") if k in result})
    info = {k: result[k] for k in ("timings", "kpts", "initial_magmoms", "spin_polarized",
                                   "setups_version", "reused", "runs") if k in result}
    return Evaluation(candidate_id=candidate.id, fidelity=fidelity, oracle=oracle,
                      oracle_fingerprint=fingerprint, status="ok" if ok else "failed",
                      energy_per_atom=float(result["energy_per_atom"]) if ok else None,
                      relaxed_structure=result.get("structure") if ok else None,
                      properties=properties, failure=failure, provenance=provenance,
                      extra={**info, **(extra or {})})


class SubprocessOracle:
    """Base of oracles that run each calculation in its own subprocess and work folder.

    Subclasses set `name`, `fidelity`, `code`, `worker_module`, `recipe_version` and
    `numeric_settings` (config fields that change the numbers; limits such as timeouts do not),
    and implement `versions` (code versions in the fingerprint; ``code_version_key`` names the one
    recorded in provenance).

    Args:
        config: the oracle's settings (with ``timeout_s`` and ``memory_gb``).
        workdir: root of the calculation folders.
    """

    name = "subprocess"
    fidelity: Fidelity = Fidelity.DFT
    code = "?"
    code_version_key = ""
    worker_module = ""
    recipe_version = 1
    numeric_settings: tuple[str, ...] = ()

    def __init__(self, config: Any, workdir: Path):
        self.config = config
        self.workdir = Path(workdir)

    @property
    def versions(self) -> dict[str, str]:
        raise NotImplementedError

    @cached_property
    def fingerprint(self) -> str:
        """Short sha256 of every setting that changes the numbers, the recipe and code versions."""
        settings = self.config.model_dump(mode="json", include=set(self.numeric_settings))
        blob = json.dumps({"recipe": self.recipe_version, "settings": settings, **self.versions}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def work_folder(self, candidate_id: str) -> Path:
        """The folder of one candidate's calculation."""
        return self.workdir / self.fingerprint / candidate_id

    def precheck(self, candidate: Candidate) -> Failure | None:
        """Cheap checks in the parent; a `Failure` stops the candidate before any subprocess."""
        return None

    def payload(self, candidate: Candidate) -> dict[str, Any]:
        """The worker's ``input.json``."""
        return {"candidate_id": candidate.id, "structure": candidate.structure,
                "settings": self.config.model_dump(mode="json")}

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """Evaluate one candidate; never raises for a scientific failure.

        Units:
            energy_per_atom in eV/atom.
        """
        t0 = time.perf_counter()
        common = dict(oracle=self.name, fidelity=self.fidelity, fingerprint=self.fingerprint, code=self.code,
                      code_version=self.versions.get(self.code_version_key, "?"))
        failure = self.precheck(candidate)
        if failure is not None:
            log.info("%s (%s): pre-check failed: %s: %s", candidate.id, candidate.formula, failure.error_class,
                     failure.message)
            result = {"status": "failed", **failure.model_dump(), "wall_s": time.perf_counter() - t0}
            return evaluation_from_result(candidate, result, extra={"stage": "precheck"}, **common)
        from discovery.oracles.subprocess_runner import run_in_subprocess

        folder = self.work_folder(candidate.id)
        result = run_in_subprocess(folder, self.worker_module, self.payload(candidate),
                                   timeout_s=self.config.timeout_s, memory_gb=self.config.memory_gb, threads=1)
        evaluation = evaluation_from_result(candidate, result, extra={"work_folder": str(folder)}, **common)
        log.info("%s (%s): %s%s", candidate.id, candidate.formula, evaluation.status,
                 f" {evaluation.energy_per_atom:.4f} eV/atom" if evaluation.ok
                 else f" {evaluation.failure.error_class}: {evaluation.failure.message}")
        return evaluation
