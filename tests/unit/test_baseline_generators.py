"""Substitution and random-symmetric baseline generators."""

import numpy as np
import pytest

from discovery.generators.random_symmetric import RandomSymmetricGeneratorConfig
from discovery.generators.substitution import SubstitutionGeneratorConfig
from discovery.data.prototypes import build_prototype
from discovery.generators.random_symmetric import RandomSymmetricGenerator, charge_balanced_compositions
from discovery.generators.substitution import SubstitutionGenerator, guess_oxidation_states
from discovery.protocols import Generator
from discovery.structures import composition_problem, make_candidate, structural_problem

ELEMENTS = ["K", "Rb", "Mg", "Ca", "Cl"]


@pytest.fixture(scope="module")
def parents():
    kcl = make_candidate(build_prototype("rocksalt", {"A": "K", "X": "Cl"}), "seed")
    kmgcl3 = make_candidate(build_prototype("perovskite", {"A": "K", "B": "Mg", "X": "Cl"}), "seed")
    return kcl, kmgcl3


def check_valid(cand, max_atoms=8):
    s = cand.pmg
    assert structural_problem(s, 0.5) is None
    assert composition_problem(s) is None
    assert {el.symbol for el in s.composition.elements} <= set(ELEMENTS)
    assert cand.n_atoms <= max_atoms


# ----------------------------------------------------------------------------- substitution


def test_substitution_children(parents):
    kcl, kmgcl3 = parents
    gen = SubstitutionGenerator(SubstitutionGeneratorConfig(), ELEMENTS, max_atoms=8)
    assert isinstance(gen, Generator) and gen.name == "substitution"
    gen.update({"known": [kcl, kmgcl3]})
    children = gen.propose(4, {"target": "low_e_hull"}, np.random.default_rng(0))
    assert len(children) == 4
    assert len({c.id for c in children}) == 4
    by_id = {kcl.id: kcl, kmgcl3.id: kmgcl3}
    for child in children:
        check_valid(child)
        assert child.generator == "substitution"
        assert len(child.parent_ids) == 1 and child.parent_ids[0] in by_id
        parent = by_id[child.parent_ids[0]]
        assert child.formula != parent.formula
        assert child.id not in by_id
        assert child.n_atoms == parent.n_atoms
        assert child.conditions["target"] == "low_e_hull"
        assert child.conditions["parent_formula"] == parent.formula
        assert 1 <= len(child.conditions["substitutions"]) <= 2
        # charge neutral with the recorded oxidation states
        states = guess_oxidation_states(child.pmg)
        assert states is not None and sum(q for _, q in states) == 0


def test_substitution_is_reproducible(parents):
    def run(seed):
        gen = SubstitutionGenerator(SubstitutionGeneratorConfig(), ELEMENTS, max_atoms=8)
        gen.update({"known": list(parents)})
        return [c.id for c in gen.propose(6, {}, np.random.default_rng(seed))]

    assert run(3) == run(3)


def test_substitution_scales_volume_and_exhausts_parents(parents):
    kcl, _ = parents
    gen = SubstitutionGenerator(SubstitutionGeneratorConfig(), ELEMENTS, max_atoms=8)
    children = gen.propose(5, {"parents": [kcl]}, np.random.default_rng(1))
    # K+ -> Rb+ is the only charge-neutral, new-composition substitution of KCl in K-Rb-Mg-Ca-Cl
    assert [c.formula for c in children] == ["RbCl"]
    assert children[0].pmg.volume > kcl.pmg.volume
    assert "parents" not in children[0].conditions


def test_substitution_replaces_foreign_elements_and_skips_large_parents(parents):
    nacl = make_candidate(build_prototype("rocksalt", {"A": "Na", "X": "Cl"}), "dataset")
    gen = SubstitutionGenerator(SubstitutionGeneratorConfig(), ELEMENTS, max_atoms=8)
    children = gen.propose(4, {"parents": [nacl]}, np.random.default_rng(0))
    assert {c.formula for c in children} <= {"KCl", "RbCl"} and children
    tiny = SubstitutionGenerator(SubstitutionGeneratorConfig(), ELEMENTS, max_atoms=4)
    assert tiny.propose(4, {"parents": [parents[1]]}, np.random.default_rng(0)) == []


def test_substitution_favours_hits(parents):
    kcl, kmgcl3 = parents
    config = SubstitutionGeneratorConfig(hit_weight=1000.0, max_substitutions=1)
    gen = SubstitutionGenerator(config, ELEMENTS, max_atoms=8)
    gen.update({"known": [kcl, kmgcl3], "hits": [kmgcl3.id]})
    children = gen.propose(3, {}, np.random.default_rng(2))
    assert children and all(c.parent_ids == (kmgcl3.id,) for c in children)


# ----------------------------------------------------------------------------- random symmetric


def test_charge_balanced_compositions():
    comps = charge_balanced_compositions(ELEMENTS, max_atoms=5)
    formulas = {"".join(f"{k}{v}" for k, v in c.items()) for c in comps}
    assert {"K1Cl1", "Mg1Cl2", "K1Mg1Cl3"} <= formulas
    assert all(sum(c.values()) <= 5 for c in comps)
    assert not any(c == {"K": 1, "Cl": 2} for c in comps)


def test_random_symmetric_proposals():
    config = RandomSymmetricGeneratorConfig()
    gen = RandomSymmetricGenerator(config, ELEMENTS, max_atoms=8)
    assert isinstance(gen, Generator) and gen.name == "random_symmetric"
    cands = gen.propose(6, {"target": "x"}, np.random.default_rng(0))
    assert len(cands) == 6 and len({c.id for c in cands}) == 6
    for cand in cands:
        check_valid(cand)
        assert cand.generator == "random_symmetric"
        assert cand.conditions["composition"] == cand.formula
        assert 1 <= cand.conditions["space_group"] <= 230
        assert cand.conditions["target"] == "x"
    again = RandomSymmetricGenerator(config, ELEMENTS, max_atoms=8).propose(6, {"target": "x"},
                                                                           np.random.default_rng(0))
    assert [c.id for c in again] == [c.id for c in cands]


def test_random_symmetric_given_composition_and_groups():
    config = RandomSymmetricGeneratorConfig(space_groups=[221, 123, 99, 47])
    gen = RandomSymmetricGenerator(config, ELEMENTS, max_atoms=5)
    cands = gen.propose(3, {"composition": "KMgCl3"}, np.random.default_rng(4))
    assert cands
    for cand in cands:
        check_valid(cand, max_atoms=5)
        assert cand.formula == "KMgCl3" and cand.conditions["space_group"] in (221, 123, 99, 47)


def test_random_symmetric_update_remembers_known_compositions(parents):
    from pymatgen.core import Composition, Lattice, Structure

    gen = RandomSymmetricGenerator(RandomSymmetricGeneratorConfig(), ["Fe", "O"], max_atoms=7)
    formulas = {Composition(c).reduced_formula for c in gen.compositions}
    assert {"FeO", "Fe2O3"} <= formulas and "Fe3O4" not in formulas  # SMACT: one state per element
    magnetite_like = Structure(Lattice.cubic(6.0), ["Fe"] * 3 + ["O"] * 4,
                               [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.25] * 3, [0.75] * 3,
                                [0.25, 0.75, 0.75], [0.75, 0.25, 0.25]])
    gen.update({"known": [make_candidate(magnetite_like, "dataset"), *parents]})  # KCl etc. ignored
    formulas_after = [Composition(c).reduced_formula for c in gen.compositions]
    assert "Fe3O4" in formulas_after and len(formulas_after) == len(formulas) + 1
    cands = gen.propose(2, {"composition": "Fe3O4"}, np.random.default_rng(0))
    assert cands and all(c.formula == "Fe3O4" for c in cands)
