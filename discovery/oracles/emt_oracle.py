"""ASE's EMT potential as an oracle, for tests that say EMT in their name (DESIGN.md rule 1).

It uses the same subprocess, work-folder, lock and resume machinery as `GPAWOracle`, so tests of
that machinery (timeouts, resume, concurrency) run in well under a second per calculation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import cached_property
from pathlib import Path

from discovery.config import EMTConfig
from discovery.oracles.emt_worker import EMT_ELEMENTS
from discovery.oracles.gpaw_oracle import evaluation_from_result
from discovery.records import Candidate, Evaluation, Failure, Fidelity

log = logging.getLogger(__name__)

WORKER_MODULE = "discovery.oracles.emt_worker"
RECIPE_VERSION = 1


class EMTOracle:
    """Effective-medium-theory energies (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O), in a subprocess.

    Args:
        config: relaxation and resource settings; ``delay_s`` emulates a slow calculation.
        workdir: root of the calculation folders (``workdir/fingerprint/candidate_id``).
    """

    name = "emt"
    fidelity = Fidelity.EMT

    def __init__(self, config: EMTConfig, workdir: Path):
        self.config = config
        self.workdir = Path(workdir)

    @cached_property
    def ase_version(self) -> str:
        from importlib.metadata import version

        return version("ase")

    @cached_property
    def fingerprint(self) -> str:
        """Short sha256 of the settings that change the numbers (not timeout, memory or delay)."""
        settings = self.config.model_dump(mode="json", include={"relax", "fmax_ev_per_a", "max_steps"})
        blob = json.dumps({"recipe": RECIPE_VERSION, "settings": settings, "ase": self.ase_version},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def work_folder(self, candidate_id: str) -> Path:
        """The folder of one candidate's calculation."""
        return self.workdir / self.fingerprint / candidate_id

    def precheck(self, candidate: Candidate) -> Failure | None:
        """``UnsupportedElement`` for elements without EMT parameters, else None."""
        from pymatgen.core import Composition

        elements = {el.symbol for el in Composition(candidate.formula).elements}
        unsupported = sorted(elements - EMT_ELEMENTS)
        if unsupported:
            return Failure(error_class="UnsupportedElement",
                           message=f"EMT has no parameters for {unsupported}")
        return None

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """Relax (optionally) and evaluate one candidate; never raises for a failed calculation.

        Units:
            energy_per_atom in eV/atom.
        """
        t0 = time.perf_counter()
        common = dict(oracle=self.name, fidelity=self.fidelity, fingerprint=self.fingerprint,
                      code="ase-emt", code_version=self.ase_version)
        failure = self.precheck(candidate)
        if failure is not None:
            result = {"status": "failed", **failure.model_dump(), "wall_s": time.perf_counter() - t0}
            return evaluation_from_result(candidate, result, extra={"stage": "precheck"}, **common)
        from discovery.oracles.subprocess_runner import run_in_subprocess

        folder = self.work_folder(candidate.id)
        settings = self.config.model_dump(mode="json")
        if "delay_s" in candidate.conditions:  # tests emulate calculations of unequal length
            settings["delay_s"] = float(candidate.conditions["delay_s"])
        payload = {"candidate_id": candidate.id, "structure": candidate.structure, "settings": settings}
        result = run_in_subprocess(folder, WORKER_MODULE, payload, timeout_s=self.config.timeout_s,
                                   memory_gb=self.config.memory_gb, threads=1)
        return evaluation_from_result(candidate, result, extra={"work_folder": str(folder)}, **common)
