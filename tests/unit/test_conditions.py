import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from discovery.generators.substitution import SubstitutionGeneratorConfig
from discovery.featurize.deciles import DecileConditions
from discovery.generators.substitution import SubstitutionGenerator
from discovery.structures import make_candidate


def test_edges_are_deciles_of_all_labels_and_target_follows_hits():
    c = DecileConditions()
    assert not c.ready and c.bin(1.0) == 0
    values = np.arange(100, dtype=float)
    c.update(values)
    assert c.ready and c.edges == pytest.approx(np.quantile(values, np.linspace(0.1, 0.9, 9)))
    assert [c.bin(v) for v in (0, 15, 55, 99)] == [0, 1, 5, 9]
    assert c.target == 0  # no hits yet: aim low
    c.update(values, hit_values=[31.0, 35.0, 38.0])
    assert c.target == 3
    assert c.one_hot(3).tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert c.weight(35.0) == pytest.approx(2.0) and c.weight(99.0) < c.weight(45.0) < c.weight(35.0)
    assert c.weight(None) == 1.0


def test_too_few_labels_keep_the_old_edges():
    c = DecileConditions(edges=np.linspace(-1, 1, 9))
    c.update([0.1, 0.2])
    assert c.edges == pytest.approx(np.linspace(-1, 1, 9))


def _perovskite(a, b, x="Cl", lat=5.0):
    s = Structure(Lattice.cubic(lat), [a, b, x, x, x],
                  [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    return make_candidate(s, "test")


def test_substitution_feedback_moves_children_toward_the_target_decile():
    gen = SubstitutionGenerator(SubstitutionGeneratorConfig(decile_weight=20.0, hit_weight=1.0),
                                ["K", "Rb", "Cs", "Mg", "Ca", "Sr", "Cl"], 5)
    parents = [_perovskite("K", "Mg"), _perovskite("Rb", "Ca", lat=5.4), _perovskite("Cs", "Sr", lat=5.8)]
    labels = [(p, v) for p, v in zip(parents, (-2.0, 2.0, 3.0), strict=True)]
    filler = [(_perovskite("K", "Ca", lat=5.2 + 0.01 * i), 0.0 + 0.1 * i) for i in range(10)]
    gen.update({"known": parents, "hits": [parents[0].id], "labels": labels + filler})
    assert gen.conditions.ready and gen.conditions.target == gen.conditions.bin(-2.0)
    kids = gen.propose(12, {}, np.random.default_rng(0))
    assert kids and all(k.conditions["target_decile"] == gen.conditions.target for k in kids)
    from_target = sum(k.parent_ids == (parents[0].id,) for k in kids)
    assert from_target > len(kids) / 2  # the hit's decile gets most of the proposals
