"""Random, greedy and UCB batch selection with diversity constraints."""

import numpy as np
from pymatgen.core import Lattice, Structure

from discovery.config import DiversityConfig, PolicyConfig
from discovery.policies.acquisition import GreedyPolicy, RandomPolicy, UCBPolicy, make_policy
from discovery.records import Candidate, Prediction


def pool(formulas):
    out = []
    for i, f in enumerate(formulas):
        s = Structure(Lattice.cubic(5 + 0.01 * i), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        out.append(Candidate(id=f"c{i}", structure=s.as_dict(), formula=f, generator="t"))
    return out


def preds(means, stds):
    return [Prediction(candidate_id=f"c{i}", property="e_above_hull", mean=m, std=s, model="t")
            for i, (m, s) in enumerate(zip(means, stds))]


RNG = np.random.default_rng(0)
DIV = DiversityConfig(max_per_formula=5)


def test_greedy_takes_lowest_mean_and_ucb_trades_mean_for_uncertainty():
    p = pool(["A", "B", "C", "D"])
    pr = preds([0.10, 0.00, 0.30, 0.05], [0.0, 0.0, 0.5, 0.0])
    assert GreedyPolicy(DIV, RNG).select(p, pr, 2).candidate_ids == ("c1", "c3")
    # UCB with kappa 1: lower bounds 0.10, 0.00, -0.20, 0.05 -> c2 first
    sel = UCBPolicy(DIV, RNG, kappa=1.0).select(p, pr, 2, {"round": 3})
    assert sel.candidate_ids == ("c2", "c1") and sel.round == 3
    assert sel.predictions["c2"] == (0.30, 0.5)


def test_max_per_formula_keeps_batches_diverse():
    p = pool(["KCl", "KCl", "KCl", "RbCl"])
    pr = preds([0.0, 0.01, 0.02, 0.5], [0, 0, 0, 0])
    sel = GreedyPolicy(DiversityConfig(max_per_formula=1), RNG).select(p, pr, 3)
    assert sel.candidate_ids == ("c0", "c3")


def test_embedding_distance_rule():
    p = pool(["A", "B", "C"])
    pr = preds([0.0, 0.01, 0.02], [0, 0, 0])
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [2.0, 0.0]])
    sel = GreedyPolicy(DiversityConfig(max_per_formula=3, min_embedding_distance=1.0), RNG).select(
        p, pr, 2, {"embeddings": emb})
    assert sel.candidate_ids == ("c0", "c2")


def test_random_policy_is_seeded_and_covers_the_pool():
    p = pool([str(i) for i in range(50)])
    pr = preds([0.0] * 50, [0.0] * 50)
    a = RandomPolicy(DIV, np.random.default_rng(1)).select(p, pr, 10).candidate_ids
    b = RandomPolicy(DIV, np.random.default_rng(1)).select(p, pr, 10).candidate_ids
    c = RandomPolicy(DIV, np.random.default_rng(2)).select(p, pr, 10).candidate_ids
    assert a == b and a != c and len(set(a)) == 10


def test_factory_builds_configured_policy():
    pol = make_policy(PolicyConfig(kind="ucb", kappa=2.0), RNG)
    assert isinstance(pol, UCBPolicy) and pol.kappa == 2.0
    assert make_policy(PolicyConfig(kind="random"), RNG).name == "random"
