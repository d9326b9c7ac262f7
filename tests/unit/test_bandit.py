"""GeneratorBandit: budget shares among generator arms by DFT hit rate."""

import json

import numpy as np
import pytest

from discovery.config import validate_config
from discovery.policies.configs import GeneratorBanditConfig
from discovery.policies.bandit import GeneratorBandit

ARMS = ["substitution|", "random_symmetric|", "cdvae|decile=0"]


def bandit(seed=0, arms=ARMS, **config):
    return GeneratorBandit(GeneratorBanditConfig(**config), arms, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", ["thompson", "ucb1"])
@pytest.mark.parametrize("total", [0, 1, 7, 50, 101])
def test_allocation_sums_to_total_and_respects_min_share(kind, total):
    b = bandit(kind=kind, min_share=0.1)
    b.update("substitution|", 30, 15)
    b.update("random_symmetric|", 30, 0)
    alloc = b.allocate(total)
    assert set(alloc) == set(ARMS) and sum(alloc.values()) == total
    floor = min(int(np.floor(0.1 * total + 0.5)), total // 3)
    assert min(alloc.values()) >= floor
    if total == 50:
        assert min(alloc.values()) >= 5  # 10 % of 50: no arm starves, even one with no hits
    assert b.weights() == pytest.approx({a: alloc[a] / total for a in ARMS} if total else
                                        {a: 1 / 3 for a in ARMS})


@pytest.mark.parametrize("kind", ["thompson", "ucb1"])
def test_budget_moves_toward_the_arm_with_the_higher_hit_rate(kind):
    good, bad = [], []
    for seed in range(30):
        b = bandit(seed, arms=["good|", "bad|"], kind=kind, min_share=0.1)
        before = b.allocate(100)
        assert abs(before["good|"] - before["bad|"]) <= (60 if kind == "thompson" else 1)  # no evidence yet
        b.update("good|", 40, 20)  # 50 % hits
        b.update("bad|", 40, 2)  # 5 % hits
        after = b.allocate(100)
        good.append(after["good|"])
        bad.append(after["bad|"])
        assert after["bad|"] >= 10  # the floor
    assert np.mean(good) > 80 and np.mean(bad) < 20
    assert sum(g > b_ for g, b_ in zip(good, bad)) == 30


def test_thompson_shares_follow_uncertainty():
    # equal evidence: a fair split on average; an untried arm is explored, not starved
    shares, fresh = [], []
    for seed in range(40):
        b = bandit(seed, arms=["a|", "b|"], min_share=0.0)
        b.update("a|", 20, 4)
        b.update("b|", 20, 4)
        shares.append(b.allocate(100)["a|"])
        b.add_arm("new|")
        fresh.append(b.allocate(100)["new|"])
    assert 35 < np.mean(shares) < 65
    assert np.mean(fresh) > 50  # P(Beta(1, 1) beats two Beta(5, 17) draws) is about 0.72


def test_update_validates_and_add_arm_extends():
    b = bandit(min_share=0.2)
    with pytest.raises(KeyError, match="unknown bandit arm"):
        b.update("nope|", 1, 0)
    with pytest.raises(ValueError, match="hits <= evaluations"):
        b.update("substitution|", 2, 3)
    b.add_arm("cdvae|decile=9")
    assert "cdvae|decile=9" in b.allocate(10)
    with pytest.raises(ValueError, match="exists already"):
        b.add_arm("cdvae|decile=9")
    b.add_arm("x|")  # 5 arms x 0.2 = the whole budget
    with pytest.raises(ValueError, match="min_share"):
        b.add_arm("y|")
    assert b.allocate(10) == {a: 2 for a in b.arms}
    assert GeneratorBandit.arm("cdvae", "decile=0") == "cdvae|decile=0"
    assert b.posterior("substitution|") == (1.0, 1.0)


@pytest.mark.parametrize("kind", ["thompson", "ucb1"])
def test_state_round_trip_continues_the_same_campaign(kind):
    b = bandit(3, kind=kind, min_share=0.05, prior_hits=0.5)
    b.update("substitution|", 12, 4)
    b.update("cdvae|decile=0", 5, 1)
    b.allocate(30)
    state = json.loads(json.dumps(b.state()))  # what a ledger would store
    resumed = GeneratorBandit.from_state(state)
    assert resumed.config == b.config and resumed.evaluations == b.evaluations and resumed.hits == b.hits
    assert resumed.weights() == b.weights()
    for _ in range(3):
        assert resumed.allocate(40) == b.allocate(40)
    with pytest.raises(ValueError, match="version"):
        GeneratorBandit.from_state({**state, "version": 99})


def test_bandit_config_validates():
    assert GeneratorBanditConfig().kind == "thompson"
    with pytest.raises(Exception):
        GeneratorBanditConfig(min_share=1.5)
    with pytest.raises(Exception):
        GeneratorBanditConfig(kind="epsilon")
    assert validate_config({}).policy.kind == "ucb"  # the bandit is not part of the policy union
