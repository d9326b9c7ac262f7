"""One retrospective campaign: one policy, one seed, one objective, a labelled table as the oracle.

Step order of a batch (the same as a live round, minus generation and DFT):

1. **learn**: one surrogate per objective property is fit on every label revealed so far;
2. **score**: it predicts mean, std and members over the unlabelled pool;
3. **select**: the policy picks ``batch_size`` candidates (the multi-fidelity policy may first
   spend simulated cheap calls);
4. **reveal**: the `ReplayOracle` answers; calibration of the batch's predictions is recorded
   (fraction of the new labels inside +-1 and +-2 predicted std) before they join the labels.

Randomness: ``SeedSequence(seed)`` spawns the initial-set, policy and surrogate streams, so a run is
a pure function of (table, config, policy, seed); the initial set depends on the seed only, so all
policies of one seed start from the same labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from discovery.benchmark.config import BenchmarkConfig, PolicyEntry
from discovery.errors import DataError
from discovery.objective import Objective
from discovery.oracles.replay_oracle import ReplayOracle, ReplayTable, SimulatedCheapOracle
from discovery.posterior import Posterior

log = logging.getLogger(__name__)

@dataclass
class ReplayRun:
    """What one run found. ``calls[i]``/``hits[i]`` are cumulative after batch i (entry 0 is the
    initial labelled set: 0 calls)."""

    policy: str
    objective: str
    seed: int
    pool_size: int
    pool_hits: int
    initial_size: int
    initial_hits: int
    calls: list[int] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    cheap_calls: int = 0
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Caches shared by every surrogate built in this process (e.g. the pool's descriptors, computed once
#: rather than every batch); see `discovery.kinds.BuildContext.shared`.
_SHARED: dict[str, Any] = {}


def make_surrogate(config, prop: str, seed: np.random.SeedSequence):
    """A surrogate of the configured (registered) kind predicting ``prop``."""
    from discovery import registry
    from discovery.kinds import BuildContext

    return registry.build(config.model_copy(update={"property": prop}), BuildContext(seed=seed, shared=_SHARED))


def hit_mask(table: ReplayTable, objective: Objective) -> np.ndarray:
    """(n,) bool: which rows of the table are hits (a missing value is not a hit)."""
    values = {p: table.values[p] for p in objective.properties}
    with np.errstate(invalid="ignore"):
        u = objective.utility(values)
    return np.nan_to_num(u, nan=-1.0) >= 0


def initial_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The seed's initial labelled set (the same for every policy)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    size = min(n - 1, max(2, int(round(fraction * n))))
    return np.sort(rng.choice(n, size=size, replace=False))


def run_replay(table: ReplayTable, config: BenchmarkConfig, entry: PolicyEntry, objective: Objective,
               seed: int) -> ReplayRun:
    """Run one retrospective campaign and return its discovery curve."""
    run = None
    for run in iter_replay(table, config, entry, objective, seed):
        pass
    assert run is not None
    return run


def iter_replay(table: ReplayTable, config: BenchmarkConfig, entry: PolicyEntry, objective: Objective,
                seed: int) -> Iterator[ReplayRun]:
    """Run one retrospective campaign, yielding the (growing) run after every batch, and once
    more, finished (calibration and wall time filled in), at the end.

    Random (the baseline) keeps going past ``config.budget`` until it reaches
    ``config.random_until_recall`` so the factors against it are measured.
    """
    from discovery import registry
    from discovery.kinds import BuildContext
    from discovery.surrogates.calibration import coverage

    t0 = time.perf_counter()
    n = len(table)
    props = objective.properties
    oracle = ReplayOracle(table, props)
    hits_all = hit_mask(table, objective)
    pool_hits = int(hits_all.sum())
    ss = np.random.SeedSequence(seed)
    _, policy_seq, surrogate_seq = ss.spawn(3)
    policy = registry.build(entry.policy, BuildContext(objective=objective, rng=np.random.default_rng(policy_seq)))
    cheap = SimulatedCheapOracle(table, props, config.cheap.noise_std, config.cheap.bias, seed)
    cheap_seen: dict[int, dict[str, float]] = {}

    labelled = list(initial_indices(n, config.initial_fraction, seed))
    is_labelled = np.zeros(n, dtype=bool)
    is_labelled[labelled] = True
    known: dict[str, np.ndarray] = {p: np.full(n, np.nan) for p in props}
    for i in labelled:
        for p, v in oracle.values(int(i)).items():
            known[p][i] = v

    run = ReplayRun(policy=entry.label, objective=objective.name, seed=seed, pool_size=n,
                    pool_hits=pool_hits, initial_size=len(labelled),
                    initial_hits=int(hits_all[labelled].sum()))
    run.calls.append(0)
    run.hits.append(run.initial_hits)
    cover = {p: {"n": 0, "in1": 0, "in2": 0} for p in props}
    is_random = not policy.needs_surrogate
    limit = n if is_random else config.budget
    target_hits = np.ceil(config.random_until_recall * pool_hits) if is_random else None
    calls = 0
    batch = 0
    while calls < limit and not is_labelled.all():
        if is_random and calls >= config.budget and run.hits[-1] >= target_hits:
            break
        pool_idx = np.flatnonzero(~is_labelled)
        pool = [table.candidates[i] for i in pool_idx]
        scales = {p: _scale(known[p]) for p in props}
        if is_random:
            posterior = Posterior(mean={p: np.zeros(len(pool)) for p in props},
                                  std={p: np.ones(len(pool)) for p in props}, model="none")
        else:
            posterior = _posterior(config, entry, props, table, known, pool, surrogate_seq)
        with np.errstate(invalid="ignore"):
            utilities = objective.utility({p: known[p] for p in props}, scales)
        finite = utilities[np.isfinite(utilities)]

        def cheap_oracle(local: list[int], _pool_idx=pool_idx) -> dict[str, np.ndarray]:
            global_idx = _pool_idx[np.asarray(local, dtype=int)]
            out = cheap(global_idx)
            for j, g in enumerate(global_idx):
                cheap_seen[int(g)] = {p: float(out[p][j]) for p in props}
            return out

        pairs = {p: (np.array([v[p] for g, v in cheap_seen.items() if is_labelled[g]]),
                     np.array([known[p][g] for g in cheap_seen if is_labelled[g]])) for p in props}
        context = {"round": batch, "scales": scales,
                   "best_utility": float(finite.max()) if finite.size else 0.0,
                   "cheap_oracle": cheap_oracle, "cheap_pairs": pairs}
        k = min(config.batch_size, limit - calls, len(pool))
        if calls < config.budget:  # every run has a batch boundary at the budget (random goes on)
            k = min(k, config.budget - calls)
        selection = policy.select(pool, posterior, k, context)
        local = {c.id: j for j, c in enumerate(pool)}
        chosen_local = [local[cid] for cid in selection.candidate_ids]
        chosen = pool_idx[chosen_local]
        for j, g in zip(chosen_local, chosen, strict=True):
            values = oracle.values(int(g))
            for p in props:
                known[p][g] = values.get(p, np.nan)
                if not is_random and np.isfinite(known[p][g]):
                    c = coverage(np.array([known[p][g]]), posterior.mean[p][[j]], posterior.std[p][[j]])
                    cover[p]["n"] += 1
                    cover[p]["in1"] += c["within_1sigma"]
                    cover[p]["in2"] += c["within_2sigma"]
        is_labelled[chosen] = True
        calls += len(chosen)
        run.cheap_calls += int(selection.cheap_evaluations)
        run.calls.append(calls)
        run.hits.append(int((hits_all & is_labelled).sum()))
        yield run
        batch += 1
        if not len(chosen):
            break
    run.calibration = {p: {"n": c["n"],
                           "within_1sigma": c["in1"] / c["n"] if c["n"] else float("nan"),
                           "within_2sigma": c["in2"] / c["n"] if c["n"] else float("nan")}
                       for p, c in cover.items()}
    run.wall_s = time.perf_counter() - t0
    log.info("%s/%s seed %d: %d of %d hits after %d calls (%.1f s)", entry.label, objective.name, seed,
             run.hits[-1], pool_hits, calls, run.wall_s)
    yield run


def _scale(values: np.ndarray) -> float:
    """Typical spread of a property's labels so far (1 when there are too few to tell)."""
    finite = values[np.isfinite(values)]
    s = float(finite.std()) if len(finite) > 1 else 0.0
    return s if s > 0 else 1.0


def _posterior(config: BenchmarkConfig, entry: PolicyEntry, props: list[str], table: ReplayTable,
               known: dict[str, np.ndarray], pool: list, surrogate_seq: np.random.SeedSequence
               ) -> Posterior:
    """Fit one surrogate per property on its labels and predict the pool."""
    mean, std, members = {}, {}, {}
    embeddings = None
    needs_embedding = entry.policy.diversity.needs_embeddings
    for k, p in enumerate(props):
        have = np.flatnonzero(np.isfinite(known[p]))
        if len(have) < 2:
            fix = f"{table.bad_values[p]}: fix those cells or " if p in table.bad_values else ""
            raise DataError(f"{table.source}: fewer than 2 labelled rows of {p!r} in the initial set; "
                            f"{fix}raise initial_fraction")
        surrogate = make_surrogate(config.surrogate, p,
                                   np.random.SeedSequence(surrogate_seq.entropy,
                                                          spawn_key=(*surrogate_seq.spawn_key, k)))
        surrogate.fit([table.candidates[i] for i in have], known[p][have])
        # members carry the calibrated spread: their mean and std are the prediction
        members[p] = np.asarray(surrogate.predict_members(pool), dtype=float)
        mean[p] = members[p].mean(axis=0)
        std[p] = members[p].std(axis=0)
        if k == 0 and needs_embedding:
            embeddings = np.asarray(surrogate.embed(pool))
    return Posterior(mean=mean, std=std, members=members, embeddings=embeddings,
                     model=config.surrogate.kind)
