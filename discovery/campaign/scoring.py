"""Scoring a round's pool: the surrogate's predicted e_above_hull, the posterior a policy sees, and
the context cost-aware policies need (CHGNet as the cheap fidelity)."""

from __future__ import annotations

from typing import Any

import numpy as np

from discovery.campaign_state import CampaignState
from discovery.posterior import Posterior
from discovery.records import Candidate, Prediction
from discovery.thermo import Hull

#: What policies rank: predicted e_above_hull, eV/atom.
OBJECTIVE_PROPERTY = "e_above_hull"


def predict_ehull(executor: Any, pool: list[Candidate], hull: Hull
                  ) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Predicted (e_above_hull mean, std) per candidate from the surrogate's members, and each
    candidate's members shifted the same way (for Thompson-style policies).

    The surrogate predicts formation energies; e_above_hull is that minus the reference hull's
    formation energy at the composition (candidates off the hull's system are left out).
    """
    members = np.asarray(executor.call("surrogate", "predict_members", pool), dtype=float)
    out, shifted = {}, {}
    for j, cand in enumerate(pool):
        ref = hull.reference_hull_formation_energy(cand.pmg.composition)
        if ref is not None:
            m = members[:, j] - ref
            out[cand.id] = (float(m.mean()), float(m.std()))
            shifted[cand.id] = m
    return out, shifted


def as_prediction(cand: Candidate, mean_std: tuple[float, float], model: str, rnd: int) -> Prediction:
    return Prediction(candidate_id=cand.id, property=OBJECTIVE_PROPERTY, mean=mean_std[0], std=mean_std[1],
                      model=model, round=rnd)


def posterior(pool: list[Candidate], preds: list[Prediction], members: dict[str, np.ndarray],
              embeddings: np.ndarray | None) -> Posterior:
    """What the policy sees: predicted e_above_hull with members (surrogate) or without (prior)."""
    mean = np.array([p.mean for p in preds], dtype=float)
    std = np.array([p.std for p in preds], dtype=float)
    member_arrays = {}
    if pool and all(c.id in members for c in pool) and preds and preds[0].model == "surrogate":
        member_arrays[OBJECTIVE_PROPERTY] = np.stack([members[c.id] for c in pool], axis=1)
    return Posterior(mean={OBJECTIVE_PROPERTY: mean}, std={OBJECTIVE_PROPERTY: std}, members=member_arrays,
                     embeddings=embeddings, model=preds[0].model if preds else "")


def policy_context(state: CampaignState, rnd: int, pool: list[Candidate], hull: Hull, cheap: bool,
                   mlip_ehull: dict[str, float]) -> dict[str, Any]:
    """Round, best utility so far and, for cost-aware policies (``cheap``: the surrogate ranks the
    pool; under the CHGNet prior CHGNet would count twice), CHGNet as the cheap fidelity: its
    e_above_hull of the pool (already computed by the screen) and past (CHGNet, DFT) pairs."""
    from pymatgen.core import Structure

    dft_ehull = state.e_above_reference_hull(hull)
    best = max((state.hit_threshold - v for v in dft_ehull.values()), default=0.0)
    if not cheap:
        return {"round": rnd, "best_utility": best}
    cheap_values = np.array([mlip_ehull.get(c.id, np.nan) for c in pool], dtype=float)
    mhull = state.mlip_hull()
    pairs = []
    for cid in dft_ehull:
        ev = state.mlip.get(cid)
        if ev is not None and ev.ok:
            res = mhull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
            if res is not None:
                pairs.append((res.e_above_reference_hull, dft_ehull[cid]))
    return {
        "round": rnd, "best_utility": best,
        "cheap_oracle": lambda idx: {OBJECTIVE_PROPERTY: cheap_values[np.asarray(idx, dtype=int)]},
        "cheap_pairs": {OBJECTIVE_PROPERTY: (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))},
    }
