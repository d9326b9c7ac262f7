"""Subprocess worker for one GPAW calculation: ``python -m discovery.oracles.gpaw_worker WORKDIR``.

``input.json`` holds ``{"structure": <pymatgen dict>, "settings": <GPAWConfig as JSON>,
"calc": null | "molecule" | "metal"}``. The recipe follows DFT.md (GPAW 26.7):

* ``PW(cutoff)`` with ``cutoff_ev_o_f`` whenever O or F is present (Pulay stress below 800 eV);
* Gamma-centred k-points of ``kpt_density`` (``kpt_density_metals`` for ``"metal"``; the
  Gamma point only for ``"molecule"``, whose box the caller has built);
* Fermi-Dirac smearing (``smearing_ev_molecules`` for molecules);
* spin polarisation with explicit initial moments (see `initial_magmoms`);
* ``FrechetCellFilter`` + ``BFGS`` (positions only for molecules);
* one retry with a damped Pulay mixer and 0.1 eV smearing after ``KohnShamConvergenceError``
  (``Mixer``/``MixerSum`` objects: 26.7 maps dict mixer input to MSR1);
* post-checks against silent garbage: E/atom, energy rise, volume jump, residual stress.

Failures are raised as `discovery.errors.EvaluationFailed` (or classified by `classify`) and
stored by `subprocess_runner.worker_main` as failed results.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from discovery.errors import EvaluationFailed
from discovery.oracles.subprocess_runner import worker_main

log = logging.getLogger(__name__)

MAGNETIC_3D = {"V": 1.5, "Cr": 2.0, "Mn": 3.0, "Fe": 2.3, "Co": 1.2, "Ni": 0.6}
"""Initial moments (mu_B). Fe/Co/Ni as ase.build.bulk sets them (DFT.md: bcc Fe converges in
33 SCF iterations from 2.3 but 101 from 2.5); V/Cr/Mn moderate high-spin starts."""
RARE_EARTHS = frozenset({"La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er",
                         "Tm", "Yb", "Lu"})
MAX_ENERGY_PER_ATOM_EV = 5.0  # Na-Cl 1.0 A apart "converges" to +23 eV/atom (DFT.md section 2)
MAX_ENERGY_RISE_EV_PER_ATOM = 0.05
MAX_VOLUME_CHANGE = 0.30
RETRY_SMEARING_EV = 0.1
RETRY_MIXER = (0.05, 5, 50)  # beta, nmaxold, weight


class PostCheckFailed(EvaluationFailed):
    """A calculation finished but its numbers are not trustworthy; keeps them in ``details``."""

    def __init__(self, message: str, details: dict[str, Any]):
        super().__init__("PostCheckFailed", message)
        self.details = details


# ----------------------------------------------------------------------------- recipe choices


def has_o_or_f(symbols: list[str]) -> bool:
    """Whether the cell needs the higher cutoff ``cutoff_ev_o_f``."""
    return bool({"O", "F"} & set(symbols))


def initial_magmoms(symbols: list[str], numbers: list[int], spin: str,
                    calc: str | None = None, site_magmoms: list[float] | None = None
                    ) -> list[float] | None:
    """Initial magnetic moments, or None for a spin-paired calculation.

    Spin-polarised when ``spin == "on"``, or ``"auto"`` and a 3d magnetic element (V-Ni) or a
    rare earth is present, the electron count is odd (the same parity as the valence count,
    since PAW cores are closed shells), or the cell is the O2 molecule. Moments come from
    ``site_magmoms`` when given, else `MAGNETIC_3D`, ``ase.data.ground_state_magnetic_moments``
    for rare earths, 1 mu_B per O in O2 (triplet), and a total of 1 mu_B spread over all atoms
    when only the electron count is odd (or nothing else applies under ``"on"``).

    Units:
        mu_B per atom.
    """
    if spin == "off":
        return None
    from ase.data import atomic_numbers, ground_state_magnetic_moments

    magnetic = [s in MAGNETIC_3D or s in RARE_EARTHS for s in symbols]
    o2 = calc == "molecule" and sorted(symbols) == ["O", "O"]
    odd = sum(numbers) % 2 == 1
    has_site = bool(site_magmoms) and any(abs(m) > 1e-8 for m in site_magmoms)
    if spin == "auto" and not (any(magnetic) or odd or o2 or has_site):
        return None
    if has_site:
        return [float(m) for m in site_magmoms]
    if o2:
        return [1.0, 1.0]
    moments = [float(ground_state_magnetic_moments[atomic_numbers[s]]) if s in RARE_EARTHS
               else MAGNETIC_3D.get(s, 0.0) for s in symbols]
    if not any(moments):
        moments = [1.0 / len(symbols)] * len(symbols)
    return moments


def calculator_parameters(settings: dict[str, Any], symbols: list[str], calc: str | None,
                          workdir: Path, spinpol: bool) -> dict[str, Any]:
    """Keyword arguments for ``GPAW`` except ``mode`` (built from ``cutoff_ev`` in the worker).

    Units:
        cutoff_ev in eV, smearing widths in eV, k-point density in 1/A.
    """
    if calc == "molecule":
        kpts: Any = (1, 1, 1)
        width = settings["smearing_ev_molecules"]
    else:
        density = settings["kpt_density_metals"] if calc == "metal" else settings["kpt_density"]
        kpts = {"density": density, "gamma": True}
        width = settings["smearing_ev"]
    cutoff = settings["cutoff_ev_o_f"] if has_o_or_f(symbols) else settings["cutoff_ev"]
    return {"cutoff_ev": cutoff, "xc": settings["xc"], "kpts": kpts,
            "occupations": {"name": "fermi-dirac", "width": width},
            "maxiter": settings["maxiter"], "spinpol": spinpol, "txt": str(workdir / "gpaw.txt")}


def code_versions() -> dict[str, str]:
    """Installed versions of GPAW and of its PAW setups package (``"none"`` if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in (("gpaw_version", "gpaw"), ("setups_version", "gpaw-data")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "none"
    return out


def classify(exc: BaseException) -> str:
    """Error class of an unexpected exception raised inside GPAW."""
    if isinstance(exc, FileNotFoundError) and "PAW dataset" in str(exc):
        return "SetupMissing"
    return "GPAWError"


# ----------------------------------------------------------------------------- the calculation


def _max_abs_stress_gpa(atoms) -> float:
    from ase.units import GPa

    return float(abs(atoms.get_stress(voigt=True)).max() / GPa)


def _run_once(atoms, params: dict[str, Any], settings: dict[str, Any], calc: str | None,
              workdir: Path, mixer=None) -> dict[str, Any]:
    """One single point plus optional relaxation on ``atoms`` (modified in place)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from gpaw import GPAW, PW

    kwargs = {k: v for k, v in params.items() if k != "cutoff_ev"}
    if mixer is not None:
        kwargs["mixer"] = mixer
    atoms.calc = GPAW(mode=PW(params["cutoff_ev"]), **kwargs)
    periodic_crystal = calc != "molecule"
    t0 = time.perf_counter()
    e0 = float(atoms.get_potential_energy())
    stress0 = _max_abs_stress_gpa(atoms) if periodic_crystal else None
    t_single = time.perf_counter() - t0
    n_steps, converged = 0, True
    if settings["relax"] and settings["max_steps"] > 0:
        target = FrechetCellFilter(atoms) if periodic_crystal else atoms
        opt = BFGS(target, logfile=str(workdir / "bfgs.log"), trajectory=str(workdir / "relax.traj"))
        converged = bool(opt.run(fmax=settings["fmax_ev_per_a"], steps=settings["max_steps"]))
        n_steps = int(opt.nsteps)
    energy = float(atoms.get_potential_energy())
    return {
        "energy_ev": energy,
        "initial_energy_ev": e0,
        "initial_max_stress_gpa": stress0,
        "max_stress_gpa": _max_abs_stress_gpa(atoms) if periodic_crystal else None,
        "max_force_ev_per_a": float(abs(atoms.get_forces()).max()),
        "magmom": float(atoms.calc.get_magnetic_moment()) if params["spinpol"] else 0.0,
        "n_steps": n_steps,
        "relax_converged": converged,
        "timings": {"single_point_s": t_single, "total_s": time.perf_counter() - t0},
    }


def post_check(out: dict[str, Any], n_atoms: int, settings: dict[str, Any], cell_relaxed: bool) -> None:
    """Raise `PostCheckFailed` when a finished calculation's numbers are not trustworthy.

    Units:
        energies eV, stresses GPa; ``volume_change`` is a fraction.
    """
    e_atom = out["energy_per_atom"]
    problems = []
    if not math.isfinite(e_atom) or e_atom > MAX_ENERGY_PER_ATOM_EV:
        problems.append(f"energy {e_atom:.3f} eV/atom is not a sane value (> {MAX_ENERGY_PER_ATOM_EV})")
    rise = (out["energy_ev"] - out["initial_energy_ev"]) / n_atoms
    if rise > MAX_ENERGY_RISE_EV_PER_ATOM:
        problems.append(f"relaxation raised the energy by {rise:.3f} eV/atom")
    if abs(out["volume_change"]) > MAX_VOLUME_CHANGE:
        problems.append(f"volume changed by {100 * out['volume_change']:+.1f} %")
    stress = out["max_stress_gpa"]
    if cell_relaxed and stress is not None and stress > settings["max_stress_gpa"]:
        problems.append(f"residual stress {out['max_stress_gpa']:.2f} GPa > {settings['max_stress_gpa']} GPa")
    if problems:
        raise PostCheckFailed("; ".join(problems), {k: v for k, v in out.items() if k != "structure"})


def compute(payload: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run the GPAW recipe on ``payload["structure"]`` and return energies and the final structure.

    Units:
        energies eV and eV/atom, stresses GPa, forces eV/A, moments mu_B, times s.

    Raises:
        EvaluationFailed: ``SCFNotConverged`` after the retry, ``PostCheckFailed``.
    """
    from ase import Atoms
    from gpaw import KohnShamConvergenceError, Mixer, MixerSum
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    settings, calc = payload["settings"], payload.get("calc")
    structure = Structure.from_dict(payload["structure"])
    symbols = [site.specie.symbol for site in structure]  # oxidation states dropped
    atoms = Atoms(symbols, positions=structure.cart_coords, cell=structure.lattice.matrix, pbc=True)
    magmoms = initial_magmoms(symbols, [int(z) for z in atoms.numbers], settings["spin"], calc,
                              structure.site_properties.get("magmom"))
    atoms.set_initial_magnetic_moments(magmoms if magmoms is not None else [0.0] * len(atoms))
    params = calculator_parameters(settings, symbols, calc, workdir, spinpol=magmoms is not None)
    start = atoms.copy()
    retries = 0
    try:
        out = _run_once(atoms, params, settings, calc, workdir)
    except KohnShamConvergenceError:
        log.warning("SCF did not converge; retrying once with a damped Pulay mixer")
        retries = 1
        atoms = start.copy()
        params = {**params, "txt": str(workdir / "gpaw_retry.txt"),
                  "occupations": {"name": "fermi-dirac", "width": RETRY_SMEARING_EV}}
        mixer = (MixerSum if params["spinpol"] else Mixer)(*RETRY_MIXER)
        try:
            out = _run_once(atoms, params, settings, calc, workdir, mixer=mixer)
        except KohnShamConvergenceError as exc:
            failed = EvaluationFailed("SCFNotConverged", f"no SCF convergence in {settings['maxiter']} "
                                      "iterations, also with the damped mixer and 0.1 eV smearing")
            failed.details = {"n_scf_retries": retries}
            raise failed from exc
    n = len(atoms)
    final = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.update(
        energy_per_atom=out["energy_ev"] / n,
        initial_energy_per_atom=out["initial_energy_ev"] / n,
        volume_change=float(atoms.get_volume() / start.get_volume() - 1.0),
        structure=AseAtomsAdaptor.get_structure(final).as_dict(),
        n_scf_retries=retries,
        spin_polarized=params["spinpol"],
        initial_magmoms=magmoms,
        cutoff_ev=params["cutoff_ev"],
        kpts=params["kpts"],
        smearing_ev=params["occupations"]["width"],
        **code_versions(),
    )
    cell_relaxed = settings["relax"] and settings["max_steps"] > 0 and calc != "molecule"
    post_check(out, n, settings, cell_relaxed)
    return out


if __name__ == "__main__":
    sys.exit(worker_main(compute, classify))
