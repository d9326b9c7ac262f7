"""Formation energies and hull distances per fidelity, with pymatgen's PhaseDiagram."""

import pytest
from pymatgen.core import Composition, Lattice, Structure

from discovery.records import Evaluation, Provenance
from discovery.thermo import Hull


def ev(species, e_pa, fidelity="dft", fp="fp"):
    n = len(species)
    s = Structure(Lattice.cubic(3.0 * n), species, [[i / n, 0, 0] for i in range(n)])
    return Evaluation(candidate_id="".join(species) + str(e_pa), fidelity=fidelity, oracle="x",
                      oracle_fingerprint=fp, status="ok", energy_per_atom=e_pa, relaxed_structure=s.as_dict(),
                      provenance=Provenance(code="x", code_version="0", settings_fingerprint=fp))


REFS = [ev(["Na"], -1.0), ev(["Cl", "Cl"], -2.0), ev(["Na", "Cl"], -3.5)]


def test_formation_energy_and_hull_distance():
    hull = Hull(REFS)
    # NaCl at -3.5 eV/atom: E_f = -3.5 - (-1 - 2)/2 = -2.0 eV/atom, on the hull
    res = hull.evaluate(Composition("NaCl"), -3.5)
    assert res.formation_energy_per_atom == pytest.approx(-2.0)
    assert res.e_above_hull == pytest.approx(0.0)
    # a NaCl polymorph 0.1 eV/atom higher
    assert hull.evaluate(Composition("NaCl"), -3.4).e_above_hull == pytest.approx(0.1)
    # NaCl2 between NaCl and Cl2: hull energy at x(Cl)=2/3 is (2 * -3.5 + 1 * -2) / 3 = -3.0
    assert hull.evaluate(Composition("NaCl2"), -2.9).e_above_hull == pytest.approx(0.1)
    assert hull.reference_hull_formation_energy(Composition("NaCl2")) == pytest.approx(-4 / 3)


def test_new_stable_phase_is_below_the_reference_hull():
    hull = Hull(REFS, [ev(["Na", "Cl", "Cl"], -3.2)])
    res = hull.evaluate(Composition("NaCl2"), -3.2)
    assert res.e_above_reference_hull == pytest.approx(-0.2)
    assert res.e_above_hull == pytest.approx(0.0)


def test_fidelities_never_share_a_hull():
    with pytest.raises(ValueError, match="one fidelity"):
        Hull(REFS + [ev(["Na"], -1.3, fidelity="mlip", fp="chgnet")])


def test_missing_element_reference_gives_none():
    hull = Hull(REFS[:1])
    assert hull.evaluate(Composition("NaCl"), -3.5) is None
