"""GPAW oracle pieces that need no DFT run: pre-checks, fingerprint, recipe choices, post-checks."""

from __future__ import annotations

import math

import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Molecule, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from discovery.oracles.gpaw_oracle import GPAWConfig
from discovery.errors import EvaluationFailed
from discovery.oracles.gpaw_oracle import GPAWOracle, plane_wave_count, setup_available
from discovery.oracles.gpaw_worker import calculator_parameters, initial_magmoms, post_check
from discovery.records import Candidate


def candidate(structure: Structure, cid: str = "x", **conditions) -> Candidate:
    return Candidate(id=cid, structure=structure.as_dict(), formula=structure.composition.reduced_formula,
                     generator="test", conditions=conditions)


def boxed(species, coords, box) -> Structure:
    return Molecule(species, coords).get_boxed_structure(*box)


@pytest.fixture
def oracle(tmp_path) -> GPAWOracle:
    return GPAWOracle(GPAWConfig(), tmp_path)


def test_sane_crystals_pass(oracle):
    assert oracle.precheck(candidate(AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64)))) is None
    assert oracle.precheck(candidate(AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.43)))) is None


def test_atoms_too_close_are_rejected(oracle):
    pair = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [1.0, 0, 0]], coords_are_cartesian=True)
    failure = oracle.precheck(candidate(pair))
    assert failure is not None and failure.error_class == "AtomsTooClose"
    assert "Na-Cl" in failure.message and "1.000" in failure.message
    # 0.5 x (r_Na + r_Cl) = 1.34 A: 1.4 A is allowed, 1.3 A is not
    ok = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [1.4, 0, 0]], coords_are_cartesian=True)
    assert oracle.precheck(candidate(ok)) is None
    tight = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [1.3, 0, 0]], coords_are_cartesian=True)
    assert oracle.precheck(candidate(tight)).error_class == "AtomsTooClose"


def test_an_atom_too_close_to_its_own_image_is_rejected(oracle):
    tiny = Structure(Lattice.cubic(0.6), ["Si"], [[0, 0, 0]])
    assert oracle.precheck(candidate(tiny)).error_class == "AtomsTooClose"
    # across the periodic boundary: 0.1 and 5.9 A in a 6 A cell are 0.2 A apart
    wrapped = Structure(Lattice.cubic(6.0), ["Si", "Si"], [[0.1, 3, 3], [5.9, 3, 3]],
                        coords_are_cartesian=True)
    assert oracle.precheck(candidate(wrapped)).error_class == "AtomsTooClose"


def test_huge_vacuum_box_is_rejected(oracle):
    dimer = boxed(["Na", "Cl"], [[0, 0, 0], [2.36, 0, 0]], (30, 30, 30))
    as_crystal = oracle.precheck(candidate(dimer))
    assert as_crystal.error_class == "VolumeTooLarge"
    as_molecule = oracle.precheck(candidate(dimer, calc="molecule"))
    assert as_molecule.error_class == "TooManyPlaneWaves"
    assert "450," in as_molecule.message  # DFT.md measured 450,722 plane waves for this box


def test_plane_wave_estimate_matches_gpaw_count():
    # DFT.md section 2: NaCl dimer in a 30 A box at 600 eV, Gamma only: 450,722 plane waves
    assert plane_wave_count(30.0**3, 600.0, gamma_only=True) == pytest.approx(450_722, rel=0.01)
    assert plane_wave_count(30.0**3, 600.0) == pytest.approx(2 * plane_wave_count(30.0**3, 600.0, True))
    assert plane_wave_count(100.0, 800.0) / plane_wave_count(100.0, 400.0) == pytest.approx(2**1.5)


def test_reference_molecule_in_the_standard_box_passes(oracle):
    # O2 in the 11 x 12 x 13 A box at 800 eV (the O/F cutoff) must stay runnable
    o2 = boxed(["O", "O"], [[0, 0, 0], [1.22, 0, 0]], (11.0, 12.0, 13.0))  # prototypes.elemental_reference box
    assert oracle.precheck(candidate(o2, calc="molecule")) is None


@pytest.mark.parametrize("element", ["Pu", "Tc", "U"])
def test_elements_without_setups_are_rejected(oracle, element):
    s = Structure(Lattice.cubic(3.0), [element], [[0, 0, 0]])
    failure = oracle.precheck(candidate(s))
    assert failure.error_class == "SetupMissing"
    assert element in failure.message


def test_setup_lookup():
    assert setup_available("Si", "PBE") and setup_available("Fe", "LDA")
    assert not setup_available("Pu", "PBE")
    assert not setup_available("Si", "PBEsol")  # gpaw-data 1.2.1 has no PBEsol setups


def test_fingerprint_tracks_numbers_not_limits(tmp_path):
    base = GPAWOracle(GPAWConfig(), tmp_path).fingerprint
    assert len(base) == 16 and int(base, 16) >= 0
    assert GPAWOracle(GPAWConfig(), tmp_path / "elsewhere").fingerprint == base
    for changed in (dict(cutoff_ev=400), dict(cutoff_ev_o_f=900), dict(kpt_density=3.0), dict(spin="on"),
                    dict(fmax_ev_per_a=0.01), dict(xc="LDA"), dict(relax=False)):
        assert GPAWOracle(GPAWConfig(**changed), tmp_path).fingerprint != base, changed
    for same in (dict(timeout_s=10), dict(memory_gb=1.0), dict(max_plane_waves=1000),
                 dict(max_volume_per_atom_a3=30)):
        assert GPAWOracle(GPAWConfig(**same), tmp_path).fingerprint == base, same
    oracle = GPAWOracle(GPAWConfig(), tmp_path)
    assert oracle.work_folder("abc") == tmp_path / base / "abc"


def test_precheck_failure_is_a_failed_evaluation(oracle, tmp_path):
    pair = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [1.0, 0, 0]], coords_are_cartesian=True)
    ev = oracle.evaluate(candidate(pair, cid="nacl-pair"))
    assert ev.status == "failed" and ev.failure.error_class == "AtomsTooClose"
    assert ev.energy_per_atom is None and ev.provenance.code == "gpaw"
    assert ev.oracle_fingerprint == oracle.fingerprint
    assert not oracle.work_folder("nacl-pair").exists()  # no subprocess was started


def test_spin_decision():
    assert initial_magmoms(["Na", "Cl"], [11, 17], "auto") is None
    assert initial_magmoms(["Si", "Si"], [14, 14], "auto") is None
    assert initial_magmoms(["Fe"], [26], "auto") == [2.3]  # DFT.md: 2.3 converges fastest
    assert initial_magmoms(["Mn", "O"], [25, 8], "auto") == [3.0, 0.0]
    assert initial_magmoms(["Gd", "N"], [64, 7], "auto")[0] > 5  # 4f7
    assert initial_magmoms(["Na"], [11], "auto") == [1.0]  # odd electron count
    assert initial_magmoms(["O", "O"], [8, 8], "auto", calc="molecule") == [1.0, 1.0]  # triplet O2
    assert initial_magmoms(["Fe"], [26], "off") is None
    assert initial_magmoms(["Si", "Si"], [14, 14], "on") == [0.5, 0.5]
    assert initial_magmoms(["Fe", "Fe"], [26, 26], "auto", site_magmoms=[3.0, -3.0]) == [3.0, -3.0]


def test_calculator_parameters(tmp_path):
    settings = GPAWConfig().model_dump(mode="json")
    mgo = calculator_parameters(settings, ["Mg", "O"], None, tmp_path, spinpol=False)
    assert mgo["cutoff_ev"] == 800 and mgo["kpts"] == {"density": 2.0, "gamma": True}
    nacl = calculator_parameters(settings, ["Na", "Cl"], None, tmp_path, spinpol=False)
    assert nacl["cutoff_ev"] == 600 and nacl["occupations"] == {"name": "fermi-dirac", "width": 0.05}
    metal = calculator_parameters(settings, ["Na"], "metal", tmp_path, spinpol=True)
    assert metal["kpts"]["density"] == 4.0 and metal["spinpol"] is True
    o2 = calculator_parameters(settings, ["O", "O"], "molecule", tmp_path, spinpol=True)
    assert o2["kpts"] == (1, 1, 1) and o2["occupations"]["width"] == 0.01 and o2["cutoff_ev"] == 800


def _outcome(**changes):
    out = dict(energy_ev=-6.77, initial_energy_ev=-6.76, energy_per_atom=-3.385, volume_change=0.026,
               max_stress_gpa=0.04)
    out.update(changes)
    return out


def test_post_checks_catch_silent_garbage():
    settings = GPAWConfig().model_dump(mode="json")
    post_check(_outcome(), 2, settings, cell_relaxed=True)  # the real NaCl relaxation passes
    cases = {
        "energy 23.000 eV/atom": _outcome(energy_ev=46.0, initial_energy_ev=46.0, energy_per_atom=23.0),
        "not a sane": _outcome(energy_per_atom=math.nan),
        "raised the energy by 0.330": _outcome(energy_ev=-6.1, energy_per_atom=-3.05),
        "volume changed by -35.0 %": _outcome(volume_change=-0.35),
        "residual stress 0.80 GPa": _outcome(max_stress_gpa=0.8),
    }
    for expected, out in cases.items():
        with pytest.raises(EvaluationFailed, match=expected) as info:
            post_check(out, 2, settings, cell_relaxed=True)
        assert info.value.error_class == "PostCheckFailed"
        assert info.value.details["energy_ev"] == out["energy_ev"]
    # stress is only a criterion after a cell relaxation (a single point keeps its strain)
    post_check(_outcome(max_stress_gpa=2.4), 2, settings, cell_relaxed=False)
