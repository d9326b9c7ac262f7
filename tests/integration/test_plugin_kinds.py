"""A generator and a surrogate from outside discovery/ (the README's example, run as written) work
everywhere a built-in kind does: a replay benchmark, and a short campaign with EMT standing in for
DFT, with two generators of the same kind sharing the proposals by their own hits. Entry points
(the plugin route) are read by the registry."""

import json
import re
import sqlite3
import types
from pathlib import Path
from typing import Literal

import pytest
import yaml

from discovery import registry
from discovery.kinds import Kind
from replay_tables import write_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin():
    """Run the README's plugin example; unregister its kinds afterwards."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- plugin-example:start -->\s*```python\n(.*?)```\s*<!-- plugin-example:end -->", text, re.S)
    assert block, "README.md has no plugin example"
    module = types.ModuleType("readme_plugin")
    exec(compile(block.group(1), "README.md (plugin example)", "exec"), module.__dict__)  # noqa: S102 - our README
    yield module
    for kind in module.KINDS:
        registry.unregister(kind.role, kind.name)


def test_plugin_kinds_are_registered_and_refused_when_unknown(plugin, tmp_path):
    from discovery.config import validate_config
    from discovery.errors import ConfigError

    assert registry.get_kind("generator", "swap").config is plugin.SwapConfig
    config = validate_config({"generators": [{"kind": "swap", "rattle_a": 0.05}], "surrogate": {"kind": "nearest"}})
    assert isinstance(config.generators[0], plugin.SwapConfig) and isinstance(config.surrogate, plugin.NearestConfig)
    with pytest.raises(ConfigError, match=r"generators\.0\.rattle_a: Input should be greater than or equal to 0"):
        validate_config({"generators": [{"kind": "swap", "rattle_a": -1}]}, "c.yaml")
    with pytest.raises(ConfigError, match=r"generators\.0\.kind: unknown kind 'swapp'.*'swap'"):
        validate_config({"generators": [{"kind": "swapp"}]}, "c.yaml")


def test_plugin_surrogate_runs_a_replay_benchmark(plugin, tmp_path):
    from discovery.benchmark.config import BenchmarkConfig
    from discovery.benchmark.runner import run_local, summarise
    from discovery.oracles.replay_oracle import load_replay_table

    csv_path, threshold = write_table(tmp_path / "table.csv", n_max=300)
    config = BenchmarkConfig.model_validate({
        "name": "plugin", "n_seeds": 2, "table": {"cdvae_csv": str(csv_path)},
        "objectives": [{"name": "low", "bounds": [{"property": "heat", "max": threshold}]}],
        "initial_fraction": 0.05, "batch_size": 10, "budget": 60, "surrogate": {"kind": "nearest", "k": 3},
        "policies": [{"kind": "random"}, {"kind": "ucb"}], "execution": {"backend": "local"},
        "tracking": {"enabled": False}})
    runs = run_local(load_replay_table(cdvae_csv=csv_path), config)
    ucb = [r for r in runs if r.policy == "ucb"]
    assert len(ucb) == 2 and all(r.calls[-1] == 60 for r in ucb)
    assert all(r.calibration["heat"]["n"] == 60 for r in ucb)  # the plugin's predictions were scored
    summary = summarise(config, runs)
    assert summary["objectives"]["low"]["policies"]["ucb"]["hits_at_budget"]["mean"] > 0


@pytest.mark.slow
def test_plugin_kinds_run_an_emt_campaign_with_two_generators_of_one_kind(plugin, tmp_path):
    from discovery.config import load_config
    from discovery.launch import prepare

    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "plugin-emt", "seed": 0, "rounds": 4, "dft_per_round": 2,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 4},
        "generators": [{"kind": "swap", "n_per_round": 6}, {"kind": "swap", "n_per_round": 6, "rattle_a": 0.05}],
        "surrogate": {"kind": "nearest"}, "mlip": {"enabled": False}, "dft": {"kind": "emt", "max_steps": 10},
        "bandit": {"min_share": 0.2}, "execution": {"backend": "local", "dft_slots": 2},
        "tracking": {"enabled": False}}))
    prepared = prepare(load_config(path), tmp_path / "out")
    try:
        prepared.campaign.run()
    finally:
        prepared.ledger.close()
    with sqlite3.connect(tmp_path / "out" / "ledger.sqlite") as db:
        rows = {kind: [json.loads(p) for (p,) in db.execute("select payload from records where kind = ?", (kind,))]
                for kind in ("candidate", "evaluation", "bandit", "conditions", "fit")}
    generators = {c["generator"] for c in rows["candidate"]}
    assert {"swap-0", "swap-1"} <= generators  # each instance is its own arm and label
    assert all(set(b["quotas"]) == {"swap-0|", "swap-1|"} and sum(b["quotas"].values()) == 12
               for b in rows["bandit"])
    by_id = {c["id"]: c for c in rows["candidate"]}
    evaluated = {by_id[e["candidate_id"]]["generator"] for e in rows["evaluation"] if e["candidate_id"] in by_id}
    assert evaluated & {"swap-0", "swap-1"}  # plugin proposals reached the oracle
    assert {r["generator"] for r in rows["conditions"]} == {"swap-0", "swap-1"}
    assert all(r["n_parents"] > 0 for r in rows["conditions"])
    assert rows["fit"], "the plugin surrogate was never trained"


def test_entry_points_add_kinds_and_a_broken_plugin_is_skipped(monkeypatch, plugin):
    import discovery.registry as reg

    class EntryPoint:
        def __init__(self, name, obj):
            self.name, self.value, self._obj = name, f"fake:{name}", obj

        def load(self):
            if isinstance(self._obj, Exception):
                raise self._obj
            return self._obj

    class Swap2Config(plugin.SwapConfig):
        kind: Literal["swap2"] = "swap2"

    extra = Kind(role="generator", name="swap2", config=Swap2Config, factory=plugin.SwapGenerator)
    clash = Kind(role="generator", name="substitution", config=Swap2Config, factory=plugin.SwapGenerator)
    monkeypatch.setattr(reg, "entry_points", lambda group: [EntryPoint("good", [extra]),
                                                             EntryPoint("broken", ImportError("no module")),
                                                             EntryPoint("clash", [clash])])
    monkeypatch.setattr(reg, "_kinds", None)  # read everything again, entry points included
    try:
        assert reg.get_kind("generator", "swap2") is extra
        # the built-in kinds survive a broken plugin and one that takes a built-in name
        assert reg.get_kind("generator", "substitution") is not clash
    finally:
        monkeypatch.setattr(reg, "_kinds", None)
        monkeypatch.undo()
        for kind in plugin.KINDS:
            registry.register(kind)
