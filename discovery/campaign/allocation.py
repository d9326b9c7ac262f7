"""Sharing a round's proposal budget among the campaign's generators by DFT-confirmed hits.

Each generator instance is one bandit arm, named by the label its candidates carry
(`generator_labels`: the kind, or ``kind-i`` when two generators share a kind), so a hit is
credited to the generator that proposed it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from discovery.campaign_state import CampaignState


def generator_labels(kinds: list[str]) -> list[str]:
    """The label of each generator: its kind, or ``kind-i`` (``i``: its index in ``generators``)
    when the campaign has more than one generator of that kind (MLflow metric names allow '-')."""
    return [k if kinds.count(k) == 1 else f"{k}-{i}" for i, k in enumerate(kinds)]


def proposal_quotas(*, bandit_config: Any, labels: dict[str, str], fixed: dict[str, int], state: CampaignState,
                    hits: set[str], rng: np.random.Generator, rnd: int, tracker: Any, ledger: Any) -> dict[str, int]:
    """Proposals per generator this round: ``fixed`` (``n_per_round`` each), or (with a bandit and
    two or more generators) the same total shared by DFT-confirmed hits per DFT evaluation.

    Args:
        labels: component name -> generator label (what its candidates record as ``generator``).
        fixed: component name -> ``n_per_round``.
    """
    if bandit_config is None or len(labels) < 2:
        return fixed
    from discovery.policies.bandit import GeneratorBandit

    arms = {name: GeneratorBandit.arm(label) for name, label in labels.items()}
    bandit = GeneratorBandit(bandit_config, list(arms.values()), rng)
    results = {i: e for i, e in state.candidate_dft().items() if e.ok and i in state.candidates}
    for name, arm in arms.items():
        mine = [i for i in results if state.candidates[i].generator == labels[name]]
        bandit.update(arm, len(mine), sum(i in hits for i in mine))
    shares = bandit.allocate(sum(fixed.values()))
    tracker.log_metrics({f"bandit_weight.{arm.replace('|', '.')}": w for arm, w in bandit.weights().items()},
                        step=rnd)
    ledger.append("bandit", str(rnd), {"quotas": shares, "weights": bandit.weights()}, rnd)
    return {name: shares[arm] for name, arm in arms.items()}
