"""Composition first, with EMT standing in for DFT: a composition model's formulas go to every
generator that builds structures for a composition, each (generator, condition) pair is a bandit
arm, and every candidate records the composition model, its formula and the structure generator."""

import json
import sqlite3
from typing import Literal

import pytest
import yaml
from pydantic import Field

from discovery import registry
from discovery.campaign.allocation import campaign_arms, proposal_quotas
from discovery.configbase import Strict
from discovery.kinds import Kind

FORMULAS = ["CuAgO", "Cu2O", "Ag2O"]


class FixedFormulasConfig(Strict):
    kind: Literal["fixed_formulas"] = "fixed_formulas"
    n_per_round: int = Field(6, ge=1)


class FixedFormulas:
    """A stand-in composition model: proposes a fixed list of formulas (and no structures itself)."""

    name, version = "fixed_formulas", "1"

    def __init__(self, config, context):
        self.config = config

    def update(self, feedback):
        return None

    def propose_compositions(self, n, conditions, rng):
        return [{"composition": f, "target_formation_energy_ev": -1.0} for f in FORMULAS[:n]]

    def propose(self, n, conditions, rng):
        return []


KIND = Kind(role="generator", name="fixed_formulas", config=FixedFormulasConfig, factory=FixedFormulas,
            proposes_compositions=True)


@pytest.fixture
def composition_model():
    registry.register(KIND)
    yield KIND
    registry.unregister("generator", "fixed_formulas")


def test_arms_pair_every_composition_model_with_every_structure_generator(composition_model):
    from discovery.build import ComponentSpec
    from discovery.config import CompositionFirstConfig, validate_config

    config = validate_config({"generators": [
        {"kind": "fixed_formulas"}, {"kind": "random_symmetric"}, {"kind": "substitution"}]})
    specs = {f"generator:{g.kind}": ComponentSpec("generator", g) for g in config.generators}
    names = [a.name for a in campaign_arms(specs, config.composition_first)]
    assert names == ["fixed_formulas|", "random_symmetric|", "substitution|",
                     "random_symmetric|composition=fixed_formulas", "substitution|composition=fixed_formulas"]
    only = CompositionFirstConfig(structure_generators=["random_symmetric"])
    assert [a.name for a in campaign_arms(specs, only)][-1] == "random_symmetric|composition=fixed_formulas"
    assert len(campaign_arms(specs, CompositionFirstConfig(enabled=False))) == 3
    # without a bandit, each generator's n_per_round is shared by its arms
    quotas = proposal_quotas(arms=campaign_arms(specs, config.composition_first),
                             n_per_round={"generator:fixed_formulas": 6, "generator:random_symmetric": 5,
                                          "generator:substitution": 4},
                             bandit_config=None, state=None, hits=set(), rng=None, rnd=0, tracker=None, ledger=None)
    assert quotas == {"fixed_formulas|": 6, "random_symmetric|": 3, "random_symmetric|composition=fixed_formulas": 2,
                      "substitution|": 2, "substitution|composition=fixed_formulas": 2}


def test_icsg3d_offers_its_deciles_as_arms(tmp_path):
    from discovery.generators.icsg3d import ICSG3DGeneratorConfig

    assert ICSG3DGeneratorConfig(checkpoint_dir=tmp_path).condition_arms() == [{}]
    assert ICSG3DGeneratorConfig(checkpoint_dir=tmp_path, decile_arms=[0, 2]).condition_arms() == [
        {"decile": 0}, {"decile": 2}]


@pytest.mark.slow
def test_composition_first_campaign_records_lineage(composition_model, tmp_path):
    from discovery.config import load_config
    from discovery.launch import prepare

    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "composition-first", "seed": 0, "rounds": 2, "dft_per_round": 3,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 6},
        "generators": [{"kind": "fixed_formulas"}, {"kind": "random_symmetric", "n_per_round": 8},
                       {"kind": "substitution", "n_per_round": 6}],
        "surrogate": {"kind": "forest", "n_estimators": 20}, "mlip": {"enabled": False},
        "dft": {"kind": "emt", "max_steps": 10}, "bandit": {"min_share": 0.1},
        "execution": {"backend": "local", "dft_slots": 2}, "tracking": {"enabled": False}}))
    prepared = prepare(load_config(path), tmp_path / "out")
    try:
        prepared.campaign.run()
    finally:
        prepared.ledger.close()
    with sqlite3.connect(tmp_path / "out" / "ledger.sqlite") as db:
        cands = [json.loads(p) for (p,) in db.execute("select payload from records where kind = 'candidate'")]
        bandit = [json.loads(p) for (p,) in db.execute("select payload from records where kind = 'bandit'")]
    assert all("random_symmetric|composition=fixed_formulas" in b["quotas"] for b in bandit)
    first = [c for c in cands if c["conditions"].get("arm", "").endswith("|composition=fixed_formulas")]
    assert first, "no composition-first candidate"
    for c in first:
        cond = c["conditions"]
        assert cond["composition_model"] == "fixed_formulas" and cond["composition"] in FORMULAS
        assert cond["structure_generator"].split(":")[0] in ("random_symmetric", "prototype")
        assert c["generator"] == cond["arm"].split("|")[0]
