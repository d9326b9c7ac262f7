"""GPAW plane-wave DFT as a campaign oracle: cheap pre-checks here, the calculation in a subprocess.

`GPAWOracle.evaluate` screens a candidate in the parent (PAW setups, interatomic distances, volume,
plane-wave count; DFT.md section 2), then runs `discovery.oracles.gpaw_worker` through
`subprocess_runner.run_in_subprocess` in ``workdir / fingerprint / candidate.id``, so a finished
calculation is never repeated, and turns the result into an `Evaluation`. Scientific failures
come back as ``Evaluation(status="failed")``, never as exceptions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from discovery.config import GPAWConfig
from discovery.records import Candidate, Evaluation, Failure, Fidelity, Provenance

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
RETRYABLE = frozenset({"Timeout", "MemoryLimit", "WorkerCrashed"})
PROPERTY_KEYS = ("energy_ev", "initial_energy_per_atom", "max_stress_gpa", "initial_max_stress_gpa",
                 "max_force_ev_per_a", "magmom", "n_steps", "n_scf_retries", "volume_change",
                 "relax_converged", "cutoff_ev", "smearing_ev")


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


def min_distance_violation(structure) -> tuple[float, float, str] | None:
    """The closest pair that is nearer than max(0.7 A, 0.5 x sum of covalent radii), or None.

    Periodic images count, including an atom's own image (the shortest lattice vector).

    Returns:
        ``(distance, threshold, "A-B")`` in A for the worst pair, or None.
    """
    import numpy as np
    from ase.data import covalent_radii

    z = [site.specie.Z for site in structure]
    radii = np.array([covalent_radii[n] for n in z])
    pair_radii = radii[:, None] + radii[None, :]
    thresholds = np.maximum(MIN_DISTANCE_A, MIN_DISTANCE_COVALENT_FRACTION * pair_radii)
    dist = np.array(structure.distance_matrix, dtype=float)
    shortest_vector = min(structure.lattice.get_lll_reduced_lattice().abc)
    np.fill_diagonal(dist, shortest_vector)
    ratio = dist / thresholds
    i, j = np.unravel_index(np.argmin(ratio), ratio.shape)
    if ratio[i, j] >= 1.0:
        return None
    pair = f"{structure[int(i)].specie.symbol}-{structure[int(j)].specie.symbol}"
    return float(dist[i, j]), float(thresholds[i, j]), pair


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
                                   "setups_version", "reused") if k in result}
    return Evaluation(candidate_id=candidate.id, fidelity=fidelity, oracle=oracle,
                      oracle_fingerprint=fingerprint, status="ok" if ok else "failed",
                      energy_per_atom=float(result["energy_per_atom"]) if ok else None,
                      relaxed_structure=result.get("structure") if ok else None,
                      properties=properties, failure=failure, provenance=provenance,
                      extra={**info, **(extra or {})})


# ----------------------------------------------------------------------------- the oracle


class GPAWOracle:
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

    def __init__(self, config: GPAWConfig, workdir: Path):
        self.config = config
        self.workdir = Path(workdir)

    @cached_property
    def versions(self) -> dict[str, str]:
        """``gpaw_version`` and ``setups_version`` (the gpaw-data package)."""
        from discovery.oracles.gpaw_worker import code_versions

        return code_versions()

    @cached_property
    def fingerprint(self) -> str:
        """Short sha256 of every setting that changes the numbers, the recipe and code versions."""
        settings = self.config.model_dump(mode="json", include=set(NUMERIC_SETTINGS))
        blob = json.dumps({"recipe": RECIPE_VERSION, "settings": settings, **self.versions},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def work_folder(self, candidate_id: str) -> Path:
        """The folder of one candidate's calculation."""
        return self.workdir / self.fingerprint / candidate_id

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
        close = min_distance_violation(structure)
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
        return {"candidate_id": candidate.id, "structure": candidate.structure,
                "settings": self.config.model_dump(mode="json"),
                "calc": candidate.conditions.get("calc")}

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """Relax and/or compute one candidate; never raises for a scientific failure.

        Units:
            energy_per_atom in eV/atom (relative to GPAW's atomic setup references).
        """
        t0 = time.perf_counter()
        common = dict(oracle=self.name, fidelity=self.fidelity, fingerprint=self.fingerprint,
                      code="gpaw", code_version=self.versions["gpaw_version"])
        failure = self.precheck(candidate)
        if failure is not None:
            log.info("%s (%s): pre-check failed: %s: %s", candidate.id, candidate.formula,
                     failure.error_class, failure.message)
            result = {"status": "failed", **failure.model_dump(), "wall_s": time.perf_counter() - t0}
            return evaluation_from_result(candidate, result, extra={"stage": "precheck"}, **common)
        folder = self.work_folder(candidate.id)
        from discovery.oracles.subprocess_runner import run_in_subprocess

        result = run_in_subprocess(folder, WORKER_MODULE, self.payload(candidate),
                                   timeout_s=self.config.timeout_s, memory_gb=self.config.memory_gb,
                                   threads=1)
        evaluation = evaluation_from_result(candidate, result, extra={"work_folder": str(folder)}, **common)
        log.info("%s (%s): %s%s", candidate.id, candidate.formula, evaluation.status,
                 f" {evaluation.energy_per_atom:.4f} eV/atom" if evaluation.ok
                 else f" {evaluation.failure.error_class}: {evaluation.failure.message}")
        return evaluation
