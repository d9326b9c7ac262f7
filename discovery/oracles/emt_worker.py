"""Subprocess worker for ASE's EMT potential: ``python -m discovery.oracles.emt_worker WORKDIR``.

A cheap stand-in for the GPAW worker in tests that say EMT in their name. It goes through the same
subprocess, lock and result machinery (`subprocess_runner.worker_main`).

``input.json``: ``{"structure": <pymatgen dict>, "settings": {"relax", "fmax_ev_per_a", "max_steps",
"delay_s"}}``. Result keys: ``energy_ev``, ``energy_per_atom``, ``initial_energy_per_atom``,
``structure``, ``n_steps``, ``relax_converged``, ``volume_change``, ``ase_version``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from discovery.errors import EvaluationFailed
from discovery.oracles.subprocess_runner import worker_main

log = logging.getLogger(__name__)

EMT_ELEMENTS = frozenset({"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"})


def compute(payload: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Relax (optionally) and evaluate one structure with EMT.

    Units:
        energies eV and eV/atom, forces eV/A, ``delay_s`` s; ``volume_change`` is a fraction.

    Raises:
        EvaluationFailed: ``UnsupportedElement`` for elements EMT has no parameters for.
    """
    import ase
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    settings = payload["settings"]
    structure = Structure.from_dict(payload["structure"])
    unsupported = sorted({el.symbol for el in structure.composition.elements} - EMT_ELEMENTS)
    if unsupported:
        raise EvaluationFailed("UnsupportedElement", f"EMT has no parameters for {unsupported}")
    if settings.get("delay_s", 0.0) > 0:
        time.sleep(settings["delay_s"])

    atoms = Atoms([site.specie.symbol for site in structure], positions=structure.cart_coords,
                  cell=structure.lattice.matrix, pbc=True)
    atoms.calc = EMT()
    n = len(atoms)
    e0, v0 = atoms.get_potential_energy(), atoms.get_volume()
    n_steps, converged = 0, True
    if settings.get("relax", True) and settings.get("max_steps", 0) > 0:
        opt = BFGS(FrechetCellFilter(atoms), logfile=str(workdir / "bfgs.log"))
        converged = bool(opt.run(fmax=settings["fmax_ev_per_a"], steps=settings["max_steps"]))
        n_steps = opt.nsteps
    energy = atoms.get_potential_energy()
    relaxed = AseAtomsAdaptor.get_structure(atoms.copy())
    return {
        "energy_ev": float(energy),
        "energy_per_atom": float(energy / n),
        "initial_energy_per_atom": float(e0 / n),
        "structure": relaxed.as_dict(),
        "n_steps": int(n_steps),
        "relax_converged": converged,
        "volume_change": float(atoms.get_volume() / v0 - 1.0),
        "ase_version": ase.__version__,
    }


if __name__ == "__main__":
    sys.exit(worker_main(compute))
