"""Canonical ids, validity checks, the candidate filter and the ase bridge."""

import re

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from discovery.filters import CandidateFilter, FilterConfig
from discovery.records import Candidate
from discovery.structures import (
    candidate_id,
    composition_problem,
    from_ase,
    make_candidate,
    structural_problem,
    to_ase,
)


def rocksalt(a=5.64, cation="Na", anion="Cl") -> Structure:
    """Conventional 8-atom rock-salt cell."""
    return Structure.from_spacegroup(225, Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite(a=5.0) -> Structure:
    return Structure.from_spacegroup(221, Lattice.cubic(a), ["K", "Mg", "Cl"],
                                     [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]])


def rattled_perovskite(seed=0, amplitude=0.08) -> Structure:
    """A low-symmetry (P1-like) cell: perovskite in a sheared cell with displaced atoms."""
    rng = np.random.default_rng(seed)
    s = Structure(Lattice.from_parameters(5.0, 5.1, 5.2, 88.0, 91.0, 93.0), ["K", "Mg", "Cl", "Cl", "Cl"],
                  [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    return displaced(s, rng.normal(0, amplitude / 5.0, (len(s), 3)))


def displaced(s: Structure, delta_frac) -> Structure:
    """A copy with each site moved by its own fractional displacement."""
    return Structure(s.lattice, s.species, s.frac_coords + np.asarray(delta_frac))


# ----------------------------------------------------------------------------- ids


def test_id_format_and_determinism():
    cid = candidate_id(rocksalt())
    assert re.fullmatch(r"c[0-9a-f]{16}", cid)
    assert candidate_id(rocksalt()) == cid


def test_id_invariant_to_site_permutation():
    s = rocksalt()
    perm = np.random.default_rng(1).permutation(len(s))
    shuffled = Structure.from_sites([s[i] for i in perm])
    assert candidate_id(shuffled) == candidate_id(s)


def test_id_invariant_to_translation_and_wrapping():
    s = rocksalt()
    moved = s.copy()
    moved.translate_sites(range(len(moved)), [0.13, 0.27, 1.71], frac_coords=True, to_unit_cell=False)
    assert candidate_id(moved) == candidate_id(s)


def test_id_invariant_to_cell_choice_supercell_is_same_crystal():
    s = rocksalt()
    prim = s.get_primitive_structure()
    assert len(prim) == 2
    sheared = prim.copy()
    sheared.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # same lattice, other basis
    supercell = prim * (2, 1, 3)
    assert candidate_id(prim) == candidate_id(s) == candidate_id(sheared) == candidate_id(supercell)


def test_id_invariant_to_rotation_of_the_frame():
    s = perovskite()
    rotated = s.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    assert candidate_id(rotated) == candidate_id(s)


def test_id_invariant_to_tiny_noise():
    s = rocksalt()
    noisy = s.copy()
    noisy.perturb(1e-4, seed=3)
    assert candidate_id(noisy) == candidate_id(s)

    low_symmetry = rattled_perovskite()
    rng = np.random.default_rng(7)
    for _ in range(5):
        copy = displaced(low_symmetry, rng.normal(0, 1e-6, (len(low_symmetry), 3)))
        assert candidate_id(copy) == candidate_id(low_symmetry)


def test_id_invariant_to_translation_of_a_low_symmetry_structure():
    s = rattled_perovskite()
    moved = s.copy()
    moved.translate_sites(range(len(moved)), [0.31, 0.62, 0.07], frac_coords=True)
    perm = Structure.from_sites([moved[i] for i in (4, 2, 0, 3, 1)])
    assert candidate_id(perm) == candidate_id(s)


def test_id_differs_for_different_crystals():
    nacl, kcl = rocksalt(5.64, "Na"), rocksalt(6.29, "K")
    assert candidate_id(nacl) != candidate_id(kcl)
    # same composition, other structure type (CsCl-type NaCl)
    b2 = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert candidate_id(b2) != candidate_id(nacl)
    # same structure, clearly different lattice constant
    assert candidate_id(rocksalt(6.0)) != candidate_id(nacl)
    # a rattled structure is not its ideal parent
    assert candidate_id(rattled_perovskite()) != candidate_id(perovskite())


def test_make_candidate_fields_and_json_round_trip():
    s = perovskite()
    s.add_oxidation_state_by_element({"K": 1, "Mg": 2, "Cl": -1})
    cand = make_candidate(s, "seed", "2", parent_ids=["cparent"], conditions={"x": 1}, round=3)
    assert cand.formula == "KMgCl3"
    assert cand.id == candidate_id(perovskite())
    assert cand.parent_ids == ("cparent",) and cand.round == 3 and cand.generator_version == "2"
    assert all(sp["element"] in {"K", "Mg", "Cl"} and "oxidation_state" not in sp
               for site in cand.structure["sites"] for sp in site["species"])
    again = Candidate.from_json(cand.to_json())
    assert again == cand
    assert candidate_id(again.pmg) == cand.id


# ----------------------------------------------------------------------------- validity


def test_structural_problem_rejects_close_atoms_and_accepts_nacl():
    assert structural_problem(rocksalt(), 0.5) is None
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])  # 0.3 A apart
    problem = structural_problem(close, 0.5)
    assert problem is not None and "0.300" in problem


def test_structural_problem_checks_periodic_images_and_bad_cells():
    tiny = Structure(Lattice.cubic(0.4), ["Na"], [[0, 0, 0]])  # the atom touches its own image
    assert structural_problem(tiny, 0.5) is not None
    flat = Structure(Lattice([[5, 0, 0], [0, 5, 0], [5, 5, 0]]), ["Na"], [[0, 0, 0]])
    assert "volume" in structural_problem(flat, 0.5)
    nan = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan_dict = nan.as_dict()
    nan_dict["sites"][1]["abc"] = [float("nan")] * 3
    assert "NaN" in structural_problem(Structure.from_dict(nan_dict), 0.5)


def test_composition_problem_uses_smact():
    kcl2 = Structure(Lattice.cubic(5.0), ["K", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    assert "KCl2" in composition_problem(kcl2)
    assert composition_problem(perovskite()) is None
    assert composition_problem(rocksalt()) is None
    na = Structure(Lattice.cubic(4.2), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert composition_problem(na) is None  # elements need no charge balance


# ----------------------------------------------------------------------------- filter


def _cand(structure, name="test"):
    return make_candidate(structure, name)


def test_filter_counts_every_rejection_reason():
    kcl = rocksalt(6.29, "K").get_primitive_structure()
    # a rotated, permuted, slightly strained and rattled copy: another id, the same crystal
    copy = kcl * (1, 1, 2)
    copy.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 25.0))
    copy = Structure.from_sites([copy[i] for i in (3, 1, 0, 2)])
    copy.apply_strain(0.01)
    copy.perturb(0.02, seed=4)
    known_perovskite = perovskite()
    rattled = known_perovskite.copy()
    rattled.perturb(0.12, seed=5)  # beyond the id grid (~0.1 A), well within StructureMatcher tolerances
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])
    kcl2 = Structure(Lattice.cubic(5.0), ["K", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    nacl = rocksalt()

    batch = [_cand(kcl), _cand(copy), _cand(rattled), _cand(close), _cand(kcl2), _cand(nacl), _cand(nacl)]
    assert batch[0].id != batch[1].id and batch[2].id != candidate_id(known_perovskite)

    flt = CandidateFilter(FilterConfig())
    result = flt.apply(batch, known=[_cand(known_perovskite, "seed")])
    assert [c.formula for c in result.accepted] == ["KCl", "NaCl"]
    assert result.rejected == {"duplicate": 2, "known": 1, "invalid_structure": 1, "invalid_composition": 1}
    assert result.n_rejected == 5
    assert "A apart" in result.messages[batch[3].id]


def test_filter_switches_and_incremental_known_index():
    kcl = _cand(rocksalt(6.29, "K"))
    kcl2 = _cand(Structure(Lattice.cubic(5.0), ["K", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]))
    flt = CandidateFilter(FilterConfig(charge_neutral=False, novelty=False))
    result = flt.apply([kcl, kcl2], known=[kcl])
    assert len(result.accepted) == 2 and result.rejected == {}

    flt = CandidateFilter(FilterConfig())
    assert flt.add_known([kcl]) == 1
    assert flt.add_known([kcl, kcl]) == 0  # already indexed: no work
    assert flt.n_known == 1
    assert flt.apply([kcl]).rejected == {"known": 1}


def test_ase_round_trip_keeps_the_crystal():
    s = perovskite()
    atoms = to_ase(s)
    assert len(atoms) == 5 and atoms.get_chemical_formula() == "Cl3KMg"
    assert np.isclose(atoms.get_volume(), s.volume)
    assert candidate_id(from_ase(atoms)) == candidate_id(s)


def test_invalid_min_distance_config_is_respected():
    s = rocksalt()  # Na-Cl 2.82 A
    assert structural_problem(s, 3.0) is not None
    flt = CandidateFilter(FilterConfig(min_distance_a=3.0))
    assert flt.apply([_cand(s)]).rejected == {"invalid_structure": 1}


@pytest.mark.parametrize("seed", [0, 1])
def test_rattled_copies_get_distinct_ids_but_match(seed):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    a, b = rattled_perovskite(seed, 0.05), rattled_perovskite(seed + 10, 0.05)
    assert candidate_id(a) != candidate_id(b)
    assert StructureMatcher().fit(a, b)
