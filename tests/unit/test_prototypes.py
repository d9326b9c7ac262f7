"""Built-in prototypes, seed sets, reference phases and elemental references."""

import numpy as np
import pytest
from pymatgen.core import Composition

from discovery.data.prototypes import (
    build_prototype,
    get_prototype,
    ionic_radius,
    prototype_names,
    seed_candidates,
    seed_structures,
)
from discovery.data.references import MOLECULE_BOX_A, build_reference_phase, elemental_reference
from discovery.errors import DataError
from discovery.structures import composition_problem, structural_problem

# A typical decoration of every prototype and the experimental nearest-neighbour distance (A).
EXAMPLES = {
    "rocksalt": ({"A": "K", "X": "Cl"}, 3.15),  # KCl
    "cscl": ({"A": "Cs", "X": "Cl"}, 3.57),
    "zincblende": ({"A": "Zn", "X": "S"}, 2.34),
    "wurtzite": ({"A": "Zn", "X": "O"}, 1.98),
    "nias": ({"A": "Fe", "X": "S"}, 2.45),  # troilite-like FeS
    "fluorite": ({"A": "Ca", "X": "F"}, 2.37),
    "antifluorite": ({"A": "Li", "X": "O"}, 2.00),
    "rutile": ({"A": "Ti", "X": "O"}, 1.95),
    "cdcl2": ({"A": "Cd", "X": "Cl"}, 2.65),
    "cdi2": ({"A": "Cd", "X": "I"}, 2.99),
    "reo3": ({"A": "Sc", "X": "F"}, 2.01),
    "perovskite": ({"A": "Sr", "B": "Ti", "X": "O"}, 1.95),
    "antiperovskite": ({"M": "Li", "B": "O", "A": "Cl"}, 1.96),  # Li3OCl
    "corundum": ({"A": "Al", "X": "O"}, 1.86),
    "half_heusler": ({"X": "Ti", "Y": "Ni", "Z": "Sn"}, 2.57),
    "full_heusler": ({"X": "Cu", "Y": "Mn", "Z": "Al"}, 2.56),
}


def nearest_neighbour(structure) -> float:
    _, _, _, d = structure.get_neighbor_list(6.0)
    return float(d.min())


def test_every_prototype_has_an_example():
    assert set(prototype_names()) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_prototype_builds_with_sensible_distances(name):
    species, nn_exp = EXAMPLES[name]
    proto = get_prototype(name)
    s = build_prototype(name, species)
    assert len(s) == proto.n_atoms
    expected = Composition({species[r.name]: r.count for r in proto.roles}).reduced_formula
    assert s.composition.reduced_formula == expected
    assert structural_problem(s, 0.5) is None
    nn = nearest_neighbour(s)
    # radii are estimates; relaxation fixes the rest: within 12% of experiment
    assert abs(nn - nn_exp) / nn_exp < 0.12, (name, nn, nn_exp)
    assert s.properties["prototype"] == name


def test_rocksalt_kcl_nearest_neighbour():
    s = build_prototype("rocksalt", {"A": "K", "X": "Cl"})
    assert 3.1 <= nearest_neighbour(s) <= 3.3
    assert s.properties["oxidation_states"] == {"A": 1, "X": -1}


def test_lattice_follows_the_radii():
    small = build_prototype("rocksalt", {"A": "Na", "X": "Cl"})
    large = build_prototype("rocksalt", {"A": "Rb", "X": "Cl"})
    assert large.volume > small.volume
    # bonds are never compressed below r_cation + r_anion (the perovskite A-X contact is stretched)
    s = build_prototype("perovskite", {"A": "K", "B": "Mg", "X": "Cl"}, {"A": 1, "B": 2, "X": -1})
    r_sum = ionic_radius("Mg", 2, "VI") + ionic_radius("Cl", -1, "VI")
    assert nearest_neighbour(s) == pytest.approx(r_sum, rel=1e-6)


def test_seed_set_for_k_mg_cl():
    seeds = seed_structures(["K", "Mg", "Cl"], max_atoms=8)
    found = {(s.properties["prototype"], s.composition.reduced_formula, s.properties["species"].get("A"))
             for s in seeds}
    assert ("rocksalt", "KCl", "K") in found
    assert ("perovskite", "KMgCl3", "K") in found
    assert any(formula == "MgCl2" for _, formula, _ in found)
    assert {f for _, f, _ in found} == {"KCl", "MgCl2", "KMgCl3"}
    for s in seeds:
        assert len(s) <= 8
        assert composition_problem(s) is None
        assert structural_problem(s, 0.5) is None
        states, species = s.properties["oxidation_states"], s.properties["species"]
        assert sum(states[role] * s.composition[species[role]] for role in states) == 0
    assert not any(p == "corundum" for p, _, _ in found)


def test_seed_set_respects_max_atoms_and_intermetallic_rules():
    small = seed_structures(["K", "Mg", "Cl"], max_atoms=2)
    assert small and all(len(s) <= 2 for s in small)
    heusler = seed_structures(["Ti", "Ni", "Sn"], max_atoms=4)
    assert ("half_heusler", "TiNiSn") in {(s.properties["prototype"], s.composition.reduced_formula)
                                           for s in heusler}
    # alkali and alkaline-earth metals are not Heusler elements
    assert not any("heusler" in s.properties["prototype"] for s in seed_structures(["K", "Mg", "Ca"], 8))


def test_seed_candidates_are_records():
    cands = seed_candidates(["Na", "Cl"], max_atoms=4)
    assert cands and all(c.generator == "seed" and c.formula == "NaCl" for c in cands)
    assert len({c.id for c in cands}) == len(cands)


def test_reference_phases():
    mgcl2 = build_reference_phase("MgCl2", "cdcl2")
    assert mgcl2.composition.reduced_formula == "MgCl2" and len(mgcl2) == 3
    kmgcl3 = build_reference_phase("KMgCl3", "perovskite")
    assert kmgcl3.properties["species"] == {"A": "K", "B": "Mg", "X": "Cl"}  # large cation on A
    assert build_reference_phase("Cu2MnAl", "L21").composition.reduced_formula == "MnAlCu2"


@pytest.mark.parametrize(
    ("formula", "prototype", "message"),
    [
        ("NaCl", "perovskite", "does not fit prototype perovskite"),
        ("K2Cl", "antifluorite", "no charge-balanced"),
        ("KCl", "no_such_type", "unknown prototype"),
        ("Xq2", "rocksalt", "Xq2"),
    ],
)
def test_bad_reference_phase_gives_data_error(formula, prototype, message):
    with pytest.raises(DataError, match=message):
        build_reference_phase(formula, prototype)


def test_build_prototype_checks_roles():
    with pytest.raises(DataError, match="missing"):
        build_prototype("perovskite", {"A": "K", "X": "Cl"})
    with pytest.raises(DataError, match="different element"):
        build_prototype("rocksalt", {"A": "Cl", "X": "Cl"})
    with pytest.raises(DataError, match="no common oxidation state"):
        build_prototype("rocksalt", {"A": "F", "X": "K"})


def test_elemental_references():
    k, hint = elemental_reference("K")
    assert hint == "metal" and len(k) == 1
    mg, hint = elemental_reference("Mg")
    assert hint == "metal" and len(mg) == 2  # hcp
    si, hint = elemental_reference("Si")
    assert hint == "crystal" and len(si) == 2
    ga, hint = elemental_reference("Ga")
    assert hint == "metal" and len(ga) == 4 and 2.3 < nearest_neighbour(ga) < 2.6  # alpha-Ga dimers
    cl, hint = elemental_reference("Cl")
    assert hint == "molecule" and len(cl) == 2
    assert np.allclose(cl.lattice.abc, MOLECULE_BOX_A)
    assert 1.95 < cl.get_distance(0, 1) < 2.05  # Cl2 bond ~1.99 A
    o2, _ = elemental_reference("O")
    assert 1.15 < o2.get_distance(0, 1) < 1.3
    br2, _ = elemental_reference("Br")  # not in G2: twice the covalent radius
    assert 2.2 < br2.get_distance(0, 1) < 2.5
    for symbol in ("K", "Mg", "Si", "Ga"):
        assert structural_problem(elemental_reference(symbol)[0], 0.5) is None


def test_elements_without_a_simple_reference_raise():
    with pytest.raises(DataError, match="Mn"):
        elemental_reference("Mn")
    with pytest.raises(DataError, match="unknown element"):
        elemental_reference("Qq")
