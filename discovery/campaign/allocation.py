"""Sharing a round's proposal budget among (generator, condition) arms by DFT-confirmed hits.

An *arm* is one way of asking one generator instance for candidates:

- ``label|``: the generator under its own conditions (every generator has this arm, unless its
  config lists condition arms);
- ``label|key=value,...``: the generator under fixed conditions its config offers
  (``condition_arms()`` on the config, e.g. ICSG3D's ``decile_arms: [0, 1]`` gives ``icsg3d|decile=0``
  and ``icsg3d|decile=1``);
- ``label|composition=model``: composition first: the composition model ``model`` (a generator whose
  kind ``proposes_compositions``) proposes formulas for the campaign's target and the generator
  ``label`` (whose kind ``takes_composition``) builds structures of them.

A generator instance is named by its label (`generator_labels`: the kind, or ``kind-i`` when two
generators share a kind); its candidates carry that label as ``generator`` and their arm in
``conditions["arm"]``, so a hit is credited to the arm that produced it. With a bandit
(``bandit:``), the round's total (the generators' ``n_per_round`` summed) is shared among arms by
Thompson sampling or UCB1 on hits per DFT evaluation; without one, each generator's
``n_per_round`` is split evenly among its arms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from discovery.campaign_state import CampaignState


@dataclass(frozen=True)
class Arm:
    """One (generator, condition) pair.

    Attributes:
        name: ``"label|condition"`` (the bandit's arm and ``conditions["arm"]`` of its candidates).
        generator: the component that proposes the structures (``generator:<label>``).
        conditions: fixed conditions handed to its ``propose``.
        composition_model: the component that proposes compositions first, or None.
    """

    name: str
    generator: str
    conditions: dict[str, Any] = field(default_factory=dict)
    composition_model: str | None = None


def generator_labels(kinds: list[str]) -> list[str]:
    """The label of each generator: its kind, or ``kind-i`` (``i``: its index in ``generators``)
    when the campaign has more than one generator of that kind (MLflow metric names allow '-')."""
    return [k if kinds.count(k) == 1 else f"{k}-{i}" for i, k in enumerate(kinds)]


def condition_key(conditions: dict[str, Any]) -> str:
    """``{"decile": 0}`` -> ``"decile=0"`` (sorted keys; empty for no conditions)."""
    return ",".join(f"{k}={v}" for k, v in sorted(conditions.items()))


def campaign_arms(generators: dict[str, Any], composition_first: Any) -> list[Arm]:
    """Every arm of the campaign.

    Args:
        generators: component name (``generator:<label>``) -> its `~discovery.build.ComponentSpec`.
        composition_first: the campaign's `~discovery.config.CompositionFirstConfig` (or None).
    """
    arms = []
    for name, spec in generators.items():
        label = name.split(":", 1)[1]
        offered = getattr(spec.config, "condition_arms", None)
        for conditions in (offered() if callable(offered) else None) or [{}]:
            arms.append(Arm(f"{label}|{condition_key(conditions)}", name, dict(conditions)))
    if composition_first is None or not composition_first.enabled:
        return arms
    models = [n for n, s in generators.items() if s.registered.proposes_compositions]
    wanted = composition_first.structure_generators
    takers = [n for n, s in generators.items() if s.registered.takes_composition
              and (wanted is None or n.split(":", 1)[1] in wanted)]
    for model in models:
        for taker in takers:
            arms.append(Arm(f"{taker.split(':', 1)[1]}|composition={model.split(':', 1)[1]}", taker,
                            composition_model=model))
    return arms


def arm_of(candidate: Any) -> str:
    """The arm that proposed a candidate (its generator's plain arm for older records)."""
    return str(candidate.conditions.get("arm") or f"{candidate.generator}|")


def proposal_quotas(*, arms: list[Arm], n_per_round: dict[str, int], bandit_config: Any, state: CampaignState,
                    hits: set[str], rng: np.random.Generator, rnd: int, tracker: Any, ledger: Any) -> dict[str, int]:
    """Proposals per arm this round (see the module docstring).

    Args:
        n_per_round: generator component name -> its ``n_per_round``.
    """
    if bandit_config is None or len(arms) < 2:
        out = {}
        for gen, n in n_per_round.items():
            mine = [a for a in arms if a.generator == gen]
            for j, arm in enumerate(mine):
                out[arm.name] = n // len(mine) + (j < n % len(mine))
        return out
    from discovery.policies.bandit import GeneratorBandit

    bandit = GeneratorBandit(bandit_config, [a.name for a in arms], rng)
    results = [i for i, e in state.candidate_dft().items() if e.ok and i in state.candidates]
    for arm in arms:
        mine = [i for i in results if arm_of(state.candidates[i]) == arm.name]
        bandit.update(arm.name, len(mine), sum(i in hits for i in mine))
    shares = bandit.allocate(sum(n_per_round.values()))
    tracker.log_metrics({f"bandit_weight.{a.replace('|', '.').replace('=', '_').replace(',', '_')}": w
                         for a, w in bandit.weights().items()}, step=rnd)
    ledger.append("bandit", str(rnd), {"quotas": shares, "weights": bandit.weights()}, rnd)
    return shares
