"""The MLIP screen of a round: CHGNet relaxes the most promising candidates; those that relax into
something known, or land far above the CHGNet hull (its own references, never mixed with DFT), are
dropped; the rest carry their CHGNet e_above_hull (the prior before the surrogate trains)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from discovery.campaign.scoring import as_prediction
from discovery.campaign_state import CampaignState
from discovery.records import Candidate, Evaluation, Prediction

#: Uncertainty attached to the CHGNet prior, eV/atom.
PRIOR_STD_EV = 0.1


@dataclass
class RoundStats:
    """The funnel of one round, as recorded in the ledger and MLflow."""

    round: int
    proposed: int = 0
    valid: int = 0
    novel: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    mlip_relaxed: int = 0
    mlip_not_novel: int = 0
    mlip_passed: int = 0
    selected: int = 0
    scored_by: str = ""
    by_generator: dict[str, dict[str, int]] = field(default_factory=dict)
    """The funnel per generator label (`generator_funnel`), for the campaign report."""


def generator_funnel(proposed: list[Candidate], reasons: dict[str, str], accepted: list[Candidate],
                     passed: list[Candidate] | None, selected: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per generator label: proposed, valid (structure and composition), novel, CHGNet-passed
    (left out when ``passed`` is None: no MLIP screen) and selected.

    Args:
        reasons: candidate id -> why the filter rejected it (`discovery.filters.FilterResult`).
        passed: the pool the MLIP screen kept; selected: the chosen ids (all from that pool).
    """
    from discovery.filters import REASON_COMPOSITION, REASON_STRUCTURE

    out: dict[str, dict[str, int]] = {}

    def row(label: str) -> dict[str, int]:
        return out.setdefault(label, {"proposed": 0, "valid": 0, "novel": 0, "selected": 0,
                                      **({} if passed is None else {"mlip_passed": 0})})

    for c in proposed:
        row(c.generator)["proposed"] += 1
        row(c.generator)["valid"] += reasons.get(c.id) not in (REASON_STRUCTURE, REASON_COMPOSITION)
    for c in accepted:
        row(c.generator)["novel"] += 1
    by_id = {c.id: c for c in accepted}
    for c in passed or ():
        row(c.generator)["mlip_passed"] += 1
    for cid in selected:
        if cid in by_id:
            row(by_id[cid].generator)["selected"] += 1
    return out


def novel_after_relaxation(candidate_filter: Any, pairs: list[tuple[Candidate, Evaluation]]
                           ) -> list[tuple[Candidate, Evaluation]]:
    """Keep candidates whose relaxed structure is new: not known, and not what another candidate of
    the batch relaxed into. Relaxed structures join the known set either way."""
    relaxed = [CampaignState.relaxed_copy(c, ev) for c, ev in pairs]
    accepted = {c.id for c in candidate_filter.apply(relaxed).accepted}
    candidate_filter.add_known(relaxed)
    return [pair for pair, r in zip(pairs, relaxed, strict=True) if r.id in accepted]


def screen(rnd: int, ranked: list[Candidate], preds: dict[str, tuple[float, float]] | None, *, config: Any,
           executor: Any, state: CampaignState, candidate_filter: Any, record_mlip: Any, reporter: Any,
           stats: RoundStats, mlip_ehull: dict[str, float]) -> tuple[list[Candidate], list[Prediction]]:
    """CHGNet-relax the top ``mlip.top_k`` of ``ranked``; keep those close to the CHGNet hull.

    Without the MLIP the whole ranked pool passes, with the surrogate's predictions or, before the
    surrogate trains, uninformed ones (a seeded random order).
    """
    if not config.mlip.enabled:
        if preds is not None:
            return ranked, [as_prediction(c, preds[c.id], "surrogate", rnd) for c in ranked]
        return ranked, [as_prediction(c, (0.0, PRIOR_STD_EV), "uninformed", rnd) for c in ranked]
    batch = ranked[: config.mlip.top_k]
    reporter.status(f"round {rnd}: CHGNet relaxing {len(batch)} candidates")
    evals = executor.call("mlip", "evaluate_many", batch) if batch else []
    mhull = state.mlip_hull()
    for ev in evals:
        record_mlip(ev, rnd)
    fresh = novel_after_relaxation(candidate_filter, [(c, ev) for c, ev in zip(batch, evals, strict=True) if ev.ok])
    stats.mlip_relaxed = sum(1 for ev in evals if ev.ok)
    stats.mlip_not_novel = stats.mlip_relaxed - len(fresh)
    kept, out = [], []
    for cand, ev in fresh:
        res = mhull.evaluate(cand.pmg.composition, ev.energy_per_atom)
        if res is None or res.e_above_reference_hull > config.mlip.max_e_above_hull_ev:
            continue
        mlip_ehull[cand.id] = res.e_above_reference_hull
        kept.append(cand)
        if preds is not None:
            out.append(as_prediction(cand, preds[cand.id], "surrogate", rnd))
        else:
            out.append(as_prediction(cand, (res.e_above_reference_hull, PRIOR_STD_EV), "mlip-prior", rnd))
    stats.mlip_passed = len(kept)
    return kept, out
