"""GPAW plane-wave DFT as a campaign oracle: cheap pre-checks here, the calculation in a subprocess.

`GPAWOracle.evaluate` screens a candidate in the parent (PAW setups, interatomic distances, volume,
plane-wave count; DFT.md section 2), then runs `discovery.oracles.gpaw_worker` through
`subprocess_runner.run_in_subprocess` in ``workdir / fingerprint / candidate.id``, so a finished
calculation is never repeated, and turns the result into an `Evaluation`. Scientific failures
come back as ``Evaluation(status="failed")``, never as exceptions.
"""

from __future__ import annotations

import logging
import math
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from discovery.configbase import Strict
from discovery.kinds import BuildContext, Kind
from discovery.oracles.subprocess_oracle import SubprocessOracle
from discovery.records import Candidate, Failure, Fidelity

log = logging.getLogger(__name__)

WORKER_MODULE = "discovery.oracles.gpaw_worker"
RECIPE_VERSION = 1
"""Bump when gpaw_worker changes its numbers (moments, retry, checks): it changes the fingerprint."""
NUMERIC_SETTINGS = ("xc", "cutoff_ev", "cutoff_ev_o_f", "kpt_density", "kpt_density_metals",
                    "smearing_ev", "smearing_ev_molecules", "relax", "fmax_ev_per_a", "max_steps",
                    "max_stress_gpa", "maxiter", "spin")
"""GPAWConfig fields that change results. Limits (timeout, memory, pre-check bounds) do not."""
MIN_DISTANCE_A = 0.7
MIN_DISTANCE_COVALENT_FRACTION = 0.5
BOHR_PER_A = 1.0 / 0.529177210903
HARTREE_EV = 27.211386245988


# ----------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def setup_dirs() -> tuple[Path, ...]:
    """The folders GPAW searches for PAW setups (gpaw-data, ``GPAW_SETUP_PATH``, ``~/.gpaw/rc.py``)."""
    from gpaw import setup_paths

    return tuple(Path(p) for p in setup_paths)


def setup_available(symbol: str, xc: str) -> bool:
    """Whether GPAW will find the standard PAW setup ``<symbol>.<xc>[.gz]``.

    For the functionals GPAWConfig allows (PBE, LDA, PBEsol) GPAW's setup name is the functional
    name, e.g. ``Si.PBE.gz``. gpaw-data 1.2.1 ships PBE, LDA, RPBE, revPBE and GLLBSC setups only.
    """
    name = f"{symbol}.{xc}"
    return any((d / name).is_file() or (d / f"{name}.gz").is_file() for d in setup_dirs())


def plane_wave_count(volume_a3: float, cutoff_ev: float, gamma_only: bool = False) -> float:
    """Estimated plane waves per k-point: N = V (2 E_cut)^{3/2} / (6 pi^2) in atomic units.

    At the Gamma point alone GPAW uses real wave functions and stores half of them
    (DFT.md: 450,722 plane waves for a 30 A box at 600 eV, where the formula gives 901k).

    Units:
        volume_a3 in A^3, cutoff_ev in eV.
    """
    v_bohr3 = volume_a3 * BOHR_PER_A**3
    n = v_bohr3 * (2.0 * cutoff_ev / HARTREE_EV) ** 1.5 / (6.0 * math.pi**2)
    return n / 2.0 if gamma_only else n



class GPAWConfig(Strict):
    """GPAW plane-wave PBE relaxation (FrechetCellFilter + BFGS), one calculation per subprocess.

    Units: energies eV, lengths A, k-point density in 1/A (ASE convention), times s.
    """

    kind: Literal["gpaw"] = "gpaw"
    xc: Literal["PBE", "LDA"] = "PBE"  # gpaw-data ships PBE and LDA setups only
    cutoff_ev: float = Field(600.0, ge=200)
    cutoff_ev_o_f: float = Field(800.0, ge=200, description="used when O or F is present (DFT.md)")
    kpt_density: float = Field(2.0, gt=0)
    kpt_density_metals: float = Field(4.0, gt=0, description="elemental metal references")
    smearing_ev: float = Field(0.05, gt=0)
    smearing_ev_molecules: float = Field(0.01, gt=0)
    relax: bool = True
    fmax_ev_per_a: float = Field(0.05, gt=0)
    max_steps: int = Field(40, ge=0)
    max_stress_gpa: float = Field(0.5, gt=0, description="post-check on residual stress")
    maxiter: int = Field(200, ge=5)
    spin: Literal["auto", "on", "off"] = "auto"
    timeout_s: float = Field(900.0, gt=0)
    memory_gb: float = Field(4.0, gt=0)
    max_volume_per_atom_a3: float = Field(150.0, gt=0, description="Cs metal has 117 A^3/atom")
    max_plane_waves: int = Field(60000, ge=100)


# ----------------------------------------------------------------------------- the oracle


class GPAWOracle(SubprocessOracle):
    """Plane-wave PBE energies and relaxations with GPAW, one subprocess per candidate.

    Candidates may carry ``conditions["calc"]``: ``"molecule"`` (Gamma point, molecule smearing,
    positions-only relaxation, box already built; exempt from the volume-per-atom bound) or
    ``"metal"`` (``kpt_density_metals``).

    Args:
        config: the GPAW settings.
        workdir: root of the calculation folders; each lives in ``workdir/fingerprint/candidate_id``.
    """

    name = "gpaw"
    fidelity = Fidelity.DFT
    code = "gpaw"
    code_version_key = "gpaw_version"
    worker_module = WORKER_MODULE
    recipe_version = RECIPE_VERSION
    numeric_settings = NUMERIC_SETTINGS

    @cached_property
    def versions(self) -> dict[str, str]:
        """``gpaw_version`` and ``setups_version`` (the gpaw-data package)."""
        from discovery.oracles.gpaw_worker import code_versions

        return code_versions()

    def cutoff_for(self, symbols: set[str]) -> float:
        """Plane-wave cutoff for a composition. Units: eV."""
        from discovery.oracles.gpaw_worker import has_o_or_f

        return self.config.cutoff_ev_o_f if has_o_or_f(list(symbols)) else self.config.cutoff_ev

    def precheck(self, candidate: Candidate) -> Failure | None:
        """Cheap checks in the parent that spare GPAW inputs it would crash, hang or lie on.

        Returns:
            A `Failure` (``InvalidStructure``, ``SetupMissing``, ``DegenerateCell``,
            ``AtomsTooClose``, ``VolumeTooLarge`` or ``TooManyPlaneWaves``), or None when the
            candidate may run.
        """
        from pymatgen.core import Structure

        cfg = self.config
        try:
            structure = Structure.from_dict(candidate.structure)
        except Exception as exc:  # pymatgen raises many types for a malformed dict
            return Failure(error_class="InvalidStructure", message=f"{type(exc).__name__}: {exc}")
        if not structure.is_ordered or len(structure) == 0:
            return Failure(error_class="InvalidStructure",
                           message="DFT needs an ordered structure with at least one site")
        molecule = candidate.conditions.get("calc") == "molecule"
        symbols = {el.symbol for el in structure.composition.elements}
        missing = sorted(s for s in symbols if not setup_available(s, cfg.xc))
        if missing:
            return Failure(error_class="SetupMissing",
                           message=f"no {cfg.xc} PAW setup for {missing} in {[str(d) for d in setup_dirs()]}")
        volume = float(structure.volume)
        if not math.isfinite(volume) or volume < 1e-3:
            return Failure(error_class="DegenerateCell", message=f"cell volume {volume:.3g} A^3")
        from discovery.structures import closest_pair

        close = closest_pair(structure, MIN_DISTANCE_A, MIN_DISTANCE_COVALENT_FRACTION)
        if close is not None:
            d, limit, pair = close
            return Failure(error_class="AtomsTooClose",
                           message=f"{pair} distance {d:.3f} A < {limit:.3f} A "
                                   f"(max({MIN_DISTANCE_A}, {MIN_DISTANCE_COVALENT_FRACTION} "
                                   "x covalent radii))")
        per_atom = volume / len(structure)
        if not molecule and per_atom > cfg.max_volume_per_atom_a3:
            return Failure(error_class="VolumeTooLarge",
                           message=f"{per_atom:.1f} A^3/atom > {cfg.max_volume_per_atom_a3} A^3/atom")
        n_pw = plane_wave_count(volume, self.cutoff_for(symbols), gamma_only=molecule)
        if n_pw > cfg.max_plane_waves:
            return Failure(error_class="TooManyPlaneWaves",
                           message=f"about {n_pw:,.0f} plane waves at {self.cutoff_for(symbols):.0f} eV "
                                   f"for {volume:.0f} A^3 > max_plane_waves {cfg.max_plane_waves:,}")
        return None

    def payload(self, candidate: Candidate) -> dict[str, Any]:
        """The worker's ``input.json``."""
        return {**super().payload(candidate), "calc": candidate.conditions.get("calc")}


def build(config: GPAWConfig, context: BuildContext) -> GPAWOracle:
    return GPAWOracle(config, context.workdir)


KIND = Kind(role="dft", name="gpaw", config=GPAWConfig, factory="discovery.oracles.gpaw_oracle:build", fidelity="dft",
            summary="GPAW plane-wave PBE relaxation, one subprocess and work folder per calculation")
