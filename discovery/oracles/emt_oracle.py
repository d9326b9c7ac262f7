"""ASE's EMT potential as an oracle, for tests that say EMT in their name (DESIGN.md rule 1).

It uses the same subprocess, work-folder, lock and resume machinery as `GPAWOracle`, so tests of
that machinery (timeouts, resume, concurrency) run in well under a second per calculation.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from typing import Literal

from pydantic import Field

from discovery.configbase import Strict
from discovery.kinds import BuildContext, Kind
from discovery.oracles.emt_worker import EMT_ELEMENTS
from discovery.oracles.subprocess_oracle import SubprocessOracle
from discovery.records import Candidate, Failure, Fidelity

log = logging.getLogger(__name__)

WORKER_MODULE = "discovery.oracles.emt_worker"
RECIPE_VERSION = 1



class EMTConfig(Strict):
    """ASE's EMT potential as a stand-in for DFT, for tests that say so in their name."""

    kind: Literal["emt"] = "emt"
    relax: bool = True
    fmax_ev_per_a: float = 0.05
    max_steps: int = 40
    timeout_s: float = 120.0
    memory_gb: float = 2.0
    delay_s: float = Field(0.0, ge=0, description="extra sleep, to emulate a slow calculation")
    delay_sigma: float = Field(0.0, ge=0, description="log-normal spread of the sleep (the same for one candidate)")


class EMTOracle(SubprocessOracle):
    """Effective-medium-theory energies (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O), in a subprocess.

    Args:
        config: relaxation and resource settings; ``delay_s`` emulates a slow calculation.
        workdir: root of the calculation folders (``workdir/fingerprint/candidate_id``).
    """

    name = "emt"
    fidelity = Fidelity.EMT
    code = "ase-emt"
    code_version_key = "ase"
    worker_module = WORKER_MODULE
    recipe_version = RECIPE_VERSION
    numeric_settings = ("relax", "fmax_ev_per_a", "max_steps")  # not timeout, memory or delay

    @cached_property
    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"ase": version("ase")}

    def precheck(self, candidate: Candidate) -> Failure | None:
        """``UnsupportedElement`` for elements without EMT parameters, else None."""
        from pymatgen.core import Composition

        elements = {el.symbol for el in Composition(candidate.formula).elements}
        unsupported = sorted(elements - EMT_ELEMENTS)
        if unsupported:
            return Failure(error_class="UnsupportedElement",
                           message=f"EMT has no parameters for {unsupported}")
        return None

    def payload(self, candidate: Candidate) -> dict[str, Any]:
        """The worker's ``input.json``; tests emulate calculations of unequal length with
        ``conditions["delay_s"]``."""
        payload = super().payload(candidate)
        if "delay_s" in candidate.conditions:
            payload["settings"]["delay_s"] = float(candidate.conditions["delay_s"])
        elif self.config.delay_sigma > 0:  # unequal calculations: log-normal around delay_s, fixed per candidate
            import numpy as np

            seed = int(candidate.id[1:13], 16)  # ids are "c" + hex digits
            factor = float(np.exp(self.config.delay_sigma * np.random.default_rng(seed).standard_normal()))
            payload["settings"]["delay_s"] = self.config.delay_s * factor
        return payload


def build(config: EMTConfig, context: BuildContext) -> EMTOracle:
    return EMTOracle(config, context.workdir)


KIND = Kind(role="dft", name="emt", config=EMTConfig, factory="discovery.oracles.emt_oracle:build", fidelity="emt",
            summary="ASE's EMT potential standing in for DFT (tests that say so)")
