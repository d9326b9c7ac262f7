"""Real CHGNet (weights from the wheel): relaxes cells and molecules, tags results as MLIP."""

import pytest
from ase.build import molecule
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from discovery.oracles.chgnet_oracle import MLIPConfig
from discovery.oracles.chgnet_oracle import CHGNetOracle
from discovery.structures import make_candidate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oracle():
    return CHGNetOracle(MLIPConfig(fmax_ev_per_a=0.05, max_steps=300))


def test_kcl_relaxes_to_a_sensible_lattice(oracle):
    # start 5 % compressed; PBE-trained CHGNet lands near the PBE lattice (DFT.md: GPAW 6.369 A)
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29 * 0.95), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ev = oracle.evaluate(make_candidate(s, "test"))
    assert ev.ok and ev.fidelity == "mlip"
    relaxed = Structure.from_dict(ev.relaxed_structure)
    assert relaxed.lattice.a == pytest.approx(6.37, rel=0.04)
    assert relaxed.volume > s.volume
    assert -5.0 < ev.energy_per_atom < -2.0


def test_molecule_keeps_its_box(oracle):
    atoms = molecule("Cl2")
    atoms.set_cell([11.0, 12.0, 13.0])
    atoms.center()
    atoms.pbc = True
    s = AseAtomsAdaptor.get_structure(atoms)
    ev = oracle.evaluate(make_candidate(s, "reference", conditions={"calc": "molecule"}))
    assert ev.ok
    assert Structure.from_dict(ev.relaxed_structure).volume == pytest.approx(s.volume)
