"""The campaign driver: decides what to compute; executors do the computing.

Step order of one round (see DESIGN.md §1):

1. **learn**: refit the surrogate on every DFT label so far (formation energies from the DFT
   hull), and give generators the known structures and hits.
2. **propose**: every generator proposes candidates (in parallel on Ray).
3. **filter**: structural and compositional validity, de-duplication, novelty; rejections counted.
4. **score**: the surrogate predicts formation energy; predicted e_above_hull is that minus the
   hull's formation energy at the composition.
5. **screen**: CHGNet relaxes the most promising ``mlip.top_k`` and drops those far above the
   CHGNet hull (its own references; never mixed with DFT).
6. **select**: the policy picks ``dft_per_round`` candidates under the diversity constraints.
7. **validate**: DFT starts from the CHGNet-relaxed structures, asynchronously: a new round is
   planned as soon as the DFT queue runs low, so slots never wait for a batch barrier.
8. **record**: every result is appended to the ledger and tracked.

Cold start: until the DFT hull is complete and the surrogate has ``MIN_LABELS`` labels,
candidates are ranked by their CHGNet e_above_hull (an explicit cheap-fidelity prior, recorded
as model "mlip-prior" in the selection) instead of the surrogate; with the MLIP switched off they
are taken in a seeded random order (model "uninformed").

The driver is the only ledger writer and never imports Ray. Resume: everything decided or
computed is in the ledger, so a restarted driver re-submits only what has no result, and the
oracle's work folders return results that finished while no driver was watching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from discovery.build import ComponentSpec
from discovery.config import CampaignConfig
from discovery.executor import Executor
from discovery.ledger.sqlite import SqliteLedger, evaluation_key
from discovery.objective import Bound, Objective
from discovery.posterior import Posterior
from discovery.records import Candidate, Evaluation, Fidelity, Prediction
from discovery.thermo import Hull

log = logging.getLogger(__name__)

MIN_LABELS = 5  # DFT formation energies (elements count, at 0 eV/atom) before the surrogate trains
PRIOR_STD_EV = 0.1  # uncertainty attached to the CHGNet prior, eV/atom
OBJECTIVE_PROPERTY = "e_above_hull"  # what policies rank: predicted e_above_hull, eV/atom


def hit_objective(config: CampaignConfig) -> Objective:
    """The campaign's notion of a hit as an `Objective`: ``e_above_hull <= hit_e_above_hull_ev``."""
    return Objective(name="hit", bounds=[Bound(property=OBJECTIVE_PROPERTY,
                                               max=config.objective.hit_e_above_hull_ev)])


class Reporter:
    """Progress sink; the CLI renders it with rich, tests use this silent default."""

    def status(self, message: str) -> None:
        log.info(message)

    def dft_progress(self, done: int, total: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class RoundStats:
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


class Campaign:
    """Run one campaign in ``out_dir`` with a ledger, an executor and a tracker.

    Args:
        config: the validated campaign.
        out_dir: campaign folder (ledger, work folders, checkpoints, artifacts).
        ledger: the writer ledger of this folder.
        executor: where work runs (local or Ray).
        components: specs of the named components (``generator:<kind>``, ``surrogate``, ``mlip``).
        dft: spec of the DFT oracle; ``dft.extra["fingerprint"]`` identifies its settings.
        seeds: known structures the campaign starts from (prototypes, datasets).
        references: elemental references and reference phases (anchor both hulls).
        candidate_filter: validity/dedupe/novelty filter (already knows ``seeds``).
        policy: the selection policy.
        tracker: MLflow or null tracker.
    """

    def __init__(self, config: CampaignConfig, out_dir: Path, ledger: SqliteLedger, executor: Executor,
                 components: dict[str, ComponentSpec], dft: ComponentSpec, seeds: Sequence[Candidate],
                 references: Sequence[Candidate], candidate_filter: Any, policy: Any, tracker: Any,
                 reporter: Reporter | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.ledger = ledger
        self.executor = executor
        self.components = components
        self.dft_spec = dft
        self.dft_fp = dft.extra["fingerprint"]
        self.dft_fidelity = dft.extra["fidelity"]
        self.seeds = list(seeds)
        self.references = {c.id: c for c in references}
        self.filter = candidate_filter
        self.policy = policy
        self.tracker = tracker
        self.reporter = reporter or Reporter()
        self.generators = [name for name in components if name.startswith("generator:")]
        self.seed_seq = np.random.SeedSequence(config.seed)
        # state restored from the ledger
        self.candidates: dict[str, Candidate] = {}
        self.dft: dict[str, Evaluation] = {}
        self.mlip: dict[str, Evaluation] = {}
        self.submitted: dict[str, int] = {}  # candidate id -> round
        self._resubmit: list[tuple[int, Candidate]] = []  # unfinished submissions found on resume
        self.predicted: dict[str, tuple[float, float]] = {}
        self.next_round = 0
        self.round_open: dict[int, set[str]] = {}
        self.surrogate_fitted = False
        self.scored_by: dict[int, str] = {}  # round -> "surrogate" | "mlip-prior"
        self._hits: set[str] = set()  # novel DFT hits when this round was planned
        self._members: dict[str, np.ndarray] = {}  # candidate id -> members' e_above_hull (this round)
        self._mlip_ehull: dict[str, float] = {}  # candidate id -> CHGNet e_above_hull (this round's pool)

    # ================================================================ run

    def run(self) -> None:
        started = time.time()
        self.ledger.append("session", "start", {"event": "start", "t": started})
        self._restore()
        self.executor.start(self.components, self.dft_spec, self.config.execution.dft_slots)
        try:
            self._start_references()
            while True:
                self._record(self.executor.completed(timeout_s=0))
                if self.next_round < self.config.rounds and self._queue_low():
                    self._plan_round(self.next_round)
                    self.next_round += 1
                    continue
                if self.executor.outstanding == 0 and self.next_round >= self.config.rounds:
                    break
                self._record(self.executor.completed(timeout_s=1.0))
        finally:
            self.executor.shutdown()
            self.ledger.append("session", "end", {"event": "end", "t": time.time()})
            self.reporter.close()

    def _queue_low(self) -> bool:
        """Plan the next round while every slot still has one calculation queued behind the running
        one, so planning (training, proposing, CHGNet) overlaps DFT instead of idling slots."""
        return self.executor.outstanding <= 2 * self.config.execution.dft_slots

    # ================================================================ resume

    def _restore(self) -> None:
        self.candidates = self.ledger.candidates()
        for e in self.ledger.evaluations():
            if e.fidelity == self.dft_fidelity and e.oracle_fingerprint == self.dft_fp:
                self.dft[e.candidate_id] = e
            elif e.fidelity == Fidelity.MLIP:
                self.mlip[e.candidate_id] = e
        for sel in self.ledger.selections():
            self.predicted.update(sel.predictions)
        rounds = {r: p for _, r, p, _ in self.ledger.rows("round")}
        self.scored_by = {r: p["scored_by"] for r, p in rounds.items()}
        self.next_round = max(rounds) + 1 if rounds else 0
        self.filter.add_known([c for c in self.candidates.values()])
        self.filter.add_known([self._relaxed_copy(self.candidates[i], e)
                               for i, e in [*self.mlip.items(), *self.dft.items()]
                               if e.ok and i in self.candidates])
        resubmit = []
        for key, rnd, payload, _ in self.ledger.rows("submission"):
            cid = payload["candidate"]["id"]
            self.submitted[cid] = rnd
            if cid not in self.dft:
                resubmit.append((rnd, Candidate.model_validate(payload["candidate"])))
        if self.candidates or resubmit:
            self.reporter.status(
                f"resuming: {len(self.dft)} DFT results kept, {len(resubmit)} unfinished calculations "
                f"re-queued, next round {self.next_round}")
        self._resubmit = resubmit

    # ================================================================ references

    def _start_references(self) -> None:
        """Queue DFT for every reference not yet computed and relax all of them with the MLIP."""
        for ref in self.references.values():
            if ref.id not in self.candidates:
                self.ledger.add_candidate(ref)
                self.candidates[ref.id] = ref
        for rnd, cand in self._resubmit:
            self.round_open.setdefault(rnd, set()).add(cand.id)
            self.executor.submit_dft(cand)
        for ref in self.references.values():
            if ref.id not in self.dft and ref.id not in self.submitted:
                self._submit(ref, -1)
        self._progress()
        if self.config.mlip.enabled:
            todo = [r for r in self.references.values() if r.id not in self.mlip]
            if todo:
                self.reporter.status(f"CHGNet: relaxing {len(todo)} references")
                for ev in self.executor.call("mlip", "evaluate_many", todo):
                    self._record_mlip(ev, -1)

    def _submit(self, cand: Candidate, rnd: int) -> None:
        self.ledger.append("submission", evaluation_key(cand.id, self.dft_fp),
                           {"candidate": cand.model_dump(mode="json")}, rnd)
        self.submitted[cand.id] = rnd
        self.round_open.setdefault(rnd, set()).add(cand.id)
        self.executor.submit_dft(cand)

    # ================================================================ recording

    def _record(self, evaluations: list[Evaluation]) -> None:
        for ev in evaluations:
            rnd = self.submitted.get(ev.candidate_id, -1)
            self.ledger.add_evaluation(ev, rnd)
            self.dft[ev.candidate_id] = ev
            name = self.candidates[ev.candidate_id].formula if ev.candidate_id in self.candidates else ev.candidate_id
            if ev.ok:
                if ev.candidate_id in self.candidates:  # later proposals must be new after DFT too
                    self.filter.add_known([self._relaxed_copy(self.candidates[ev.candidate_id], ev)])
                self.reporter.status(f"DFT done: {name} E = {ev.energy_per_atom:.4f} eV/atom "
                                     f"({ev.provenance.wall_s:.0f} s)")
            else:
                self.reporter.status(f"DFT failed: {name}: {ev.failure.error_class}: {ev.failure.message[:120]}")
            pending = self.round_open.get(rnd)
            if pending is not None:
                pending.discard(ev.candidate_id)
                if not pending and rnd >= 0:
                    self._round_finished(rnd)
        if evaluations:
            self._progress()

    def _record_mlip(self, ev: Evaluation, rnd: int) -> None:
        self.ledger.add_evaluation(ev, rnd)
        self.mlip[ev.candidate_id] = ev

    def _progress(self) -> None:
        total = len(self.references) + self.config.rounds * self.config.dft_per_round
        self.reporter.dft_progress(len(self.dft), max(total, len(self.submitted)))

    # ================================================================ hulls

    def _reference_evals(self, evals: dict[str, Evaluation]) -> list[Evaluation]:
        return [evals[i] for i in self.references if i in evals and evals[i].ok]

    def dft_hull(self) -> Hull:
        refs = self._reference_evals(self.dft)
        others = [e for i, e in self.dft.items() if i not in self.references and e.ok]
        return Hull(refs, others)

    def mlip_hull(self) -> Hull:
        return Hull(self._reference_evals(self.mlip))

    def _labels(self, hull: Hull) -> tuple[list[Candidate], list[float], list[str]]:
        """DFT formation energies of every computed compound (references included).

        Returns the relaxed structures as new candidates (their own content id, the proposal as
        parent, so no feature cache keyed by id can hand back the unrelaxed structure), the
        formation energies, and the ids of the candidates they came from."""
        cands, targets, sources = [], [], []
        for cid, ev in self.dft.items():
            if not ev.ok or cid not in self.candidates:
                continue
            relaxed = self._relaxed_copy(self.candidates[cid], ev)
            ef = hull.formation_energy(relaxed.pmg.composition, ev.energy_per_atom)
            if ef is not None:
                cands.append(relaxed)
                targets.append(ef)
                sources.append(cid)
        return cands, targets, sources

    # ================================================================ one round

    def _rng(self, rnd: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(rnd, stream)))

    def _plan_round(self, rnd: int) -> None:
        t0 = time.time()
        stats = RoundStats(rnd)
        hull = self.dft_hull()
        self._hits = self.novel_hits(hull)  # StructureMatcher over all results: once per round
        self._members, self._mlip_ehull = {}, {}
        self._learn(rnd, hull)

        # propose: the bandit shares the proposal budget among generators by DFT-confirmed hits
        quotas = self._proposal_quotas(rnd, hull)
        calls = []
        for i, name in enumerate(self.generators):
            if quotas[name] > 0:
                calls.append((name, "propose", (quotas[name], {"round": rnd}, self._rng(rnd, 100 + i))))
        self.reporter.status(f"round {rnd}: proposing with {len(calls)} generator(s): "
                             + ", ".join(f"{n.split(':', 1)[1]} {q}" for n, q in quotas.items()))
        proposed = [c.model_copy(update={"round": rnd}) for batch in self.executor.call_many(calls)
                    for c in batch]
        stats.proposed = len(proposed)

        # filter
        result = self.filter.apply(proposed, [])
        accepted = result.accepted
        stats.rejected = dict(result.rejected)
        stats.novel = len(accepted)
        stats.valid = stats.proposed - sum(v for k, v in result.rejected.items()
                                           if k in ("invalid_structure", "invalid_composition"))
        for c in accepted:
            self.ledger.add_candidate(c)
            self.candidates[c.id] = c
        self.filter.add_known(accepted)

        # score
        preds = self._predict(accepted, hull)
        prior = "mlip-prior" if self.config.mlip.enabled else "uninformed"
        stats.scored_by = self.scored_by[rnd] = "surrogate" if preds is not None else prior

        # screen with the MLIP
        pool, pool_preds = self._screen(rnd, accepted, preds, stats)

        # select
        posterior = self._posterior(pool, pool_preds)
        context = self._policy_context(rnd, pool, hull, cheap=preds is not None)
        selection = self.policy.select(pool, posterior, self.config.dft_per_round, context)
        selection = selection.model_copy(update={"policy": f"{selection.policy}/{stats.scored_by}"})
        self.ledger.add_selection(selection)
        self.predicted.update(selection.predictions)
        stats.selected = len(selection.candidate_ids)
        by_id = {c.id: c for c in pool}
        for cid in selection.candidate_ids:
            self._submit(self._dft_start(by_id[cid]), rnd)
        if not selection.candidate_ids:
            self.round_open.setdefault(rnd, set())
        self.ledger.append("round", str(rnd), {**stats.__dict__, "wall_s": time.time() - t0}, rnd)
        self.tracker.log_metrics({"proposed": stats.proposed, "valid": stats.valid, "novel": stats.novel,
                                  "mlip_relaxed": stats.mlip_relaxed, "mlip_passed": stats.mlip_passed,
                                  "selected": stats.selected, "plan_wall_s": time.time() - t0}, step=rnd)
        self.reporter.status(
            f"round {rnd}: proposed {stats.proposed}, valid {stats.valid}, novel {stats.novel}, "
            f"CHGNet relaxed {stats.mlip_relaxed} ({stats.mlip_not_novel} relaxed into known structures, "
            f"{stats.mlip_passed} kept), selected {stats.selected} "
            f"by {selection.policy} in {time.time() - t0:.0f} s")
        if not selection.candidate_ids:
            self._round_finished(rnd)

    def _learn(self, rnd: int, hull: Hull) -> None:
        """Refit the surrogate on every DFT label and tell generators what DFT confirmed."""
        known = self.seeds + [self.candidates[i] for i in self.dft if i in self.candidates
                              and i not in self.references]
        hits = sorted(self._hits)
        cands, targets, sources = self._labels(hull)
        labels = [(c, t) for c, t, src in zip(cands, targets, sources, strict=True) if src not in self.references]
        feedback = {"known": known, "hits": hits, "round": rnd, "labels": labels,
                    "property": "formation_energy_per_atom"}
        for name in self.generators:
            self.executor.call(name, "update", feedback)
        if len(cands) < MIN_LABELS:
            self.surrogate_fitted = False
            return
        self.reporter.status(f"round {rnd}: training the surrogate on {len(cands)} DFT labels")
        report = self.executor.call("surrogate", "fit", cands, targets)
        ckpt = None
        if self.config.surrogate.kind == "cgcnn_ensemble":  # forests are refit, never unpickled
            ckpt = self.out_dir / "checkpoints" / f"surrogate-round{rnd}.pt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            self.executor.call("surrogate", "save", ckpt)
            self.tracker.log_artifact(ckpt, "checkpoints")
        self.surrogate_fitted = True
        scale = report.variance_scale
        self.ledger.append("fit", str(rnd), {**report.model_dump(mode="json"),
                                             "checkpoint": None if ckpt is None else str(ckpt),
                                             "variance_scale": scale}, rnd)
        self.tracker.log_metrics({k: v for k, v in {"surrogate_val_mae": report.val_mae,
                                                    "surrogate_train_mae": report.train_mae,
                                                    "surrogate_n_train": report.n_train,
                                                    "surrogate_variance_scale": scale}.items()
                                  if v is not None}, step=rnd)

    def novel_hits(self, hull: Hull) -> set[str]:
        """DFT-validated candidates within the hit distance of the hull whose relaxed structure is
        new (not a reference, not what an earlier candidate relaxed into): the one definition of a
        hit used by status, per-round metrics, generators and the bandit."""
        from discovery.report import rediscovered

        results = {i: e for i, e in self.dft.items() if i not in self.references}
        repeated = rediscovered(results, self._reference_evals(self.dft))
        return {i for i in results if i not in repeated and self._is_hit(i, hull)}

    def _proposal_quotas(self, rnd: int, hull: Hull) -> dict[str, int]:
        """Proposals per generator this round: fixed ``n_per_round`` each, or (with a bandit) the
        same total shared by DFT-confirmed hits per DFT evaluation of each generator's candidates."""
        fixed = {name: self.components[name].config.n_per_round for name in self.generators}
        if self.config.bandit is None or len(self.generators) < 2:
            return fixed
        from discovery.policies.bandit import GeneratorBandit

        arms = {name: GeneratorBandit.arm(name.split(":", 1)[1]) for name in self.generators}
        bandit = GeneratorBandit(self.config.bandit, list(arms.values()), self._rng(rnd, 3))
        hits = self._hits
        for name, arm in arms.items():
            gen = name.split(":", 1)[1]
            mine = [i for i, e in self.dft.items() if e.ok and i in self.candidates
                    and i not in self.references and self.candidates[i].generator == gen]
            bandit.update(arm, len(mine), sum(i in hits for i in mine))
        shares = bandit.allocate(sum(fixed.values()))
        self.tracker.log_metrics({f"bandit_weight.{arm.replace('|', '.')}": w
                                  for arm, w in bandit.weights().items()}, step=rnd)
        self.ledger.append("bandit", str(rnd), {"quotas": shares, "weights": bandit.weights()}, rnd)
        return {name: shares[arm] for name, arm in arms.items()}

    def _is_hit(self, cid: str, hull: Hull) -> bool:
        ev = self.dft.get(cid)
        if ev is None or not ev.ok:
            return False
        from pymatgen.core import Structure

        res = hull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
        return res is not None and res.e_above_hull <= self.config.objective.hit_e_above_hull_ev

    def _predict(self, pool: list[Candidate], hull: Hull) -> dict[str, tuple[float, float]] | None:
        """Predicted (e_above_hull mean, std) per candidate from the surrogate, or None (cold start).

        The ensemble members' predictions, shifted the same way, are kept for the policy."""
        if not self.surrogate_fitted or not pool:
            return None
        members = np.asarray(self.executor.call("surrogate", "predict_members", pool), dtype=float)
        out = {}
        self._members = {}
        for j, cand in enumerate(pool):
            ref = hull.reference_hull_formation_energy(cand.pmg.composition)
            if ref is not None:
                m = members[:, j] - ref
                out[cand.id] = (float(m.mean()), float(m.std()))
                self._members[cand.id] = m
        return out

    def _posterior(self, pool: list[Candidate], preds: list[Prediction]) -> Posterior:
        """What the policy sees: predicted e_above_hull with members (surrogate) or without (prior)."""
        mean = np.array([p.mean for p in preds], dtype=float)
        std = np.array([p.std for p in preds], dtype=float)
        members = {}
        if pool and all(c.id in self._members for c in pool) and preds and preds[0].model == "surrogate":
            members[OBJECTIVE_PROPERTY] = np.stack([self._members[c.id] for c in pool], axis=1)
        embeddings = None
        if (self.surrogate_fitted and pool and self.config.policy.diversity.method in
                ("kcenter", "dpp", "min_distance")):
            embeddings = np.asarray(self.executor.call("surrogate", "embed", pool))
        return Posterior(mean={OBJECTIVE_PROPERTY: mean}, std={OBJECTIVE_PROPERTY: std}, members=members,
                         embeddings=embeddings, model=preds[0].model if preds else "")

    def _policy_context(self, rnd: int, pool: list[Candidate], hull: Hull, cheap: bool) -> dict[str, Any]:
        """Round, best utility so far and, for cost-aware policies (``cheap``: the surrogate ranks
        the pool; under the CHGNet prior CHGNet would count twice), CHGNet as the cheap fidelity:
        its e_above_hull of the pool (already computed by the screen) and past (CHGNet, DFT) pairs."""
        from pymatgen.core import Structure

        threshold = self.config.objective.hit_e_above_hull_ev
        dft_ehull = {}
        for cid, ev in self.dft.items():
            if ev.ok and cid not in self.references:
                res = hull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
                if res is not None:
                    dft_ehull[cid] = res.e_above_reference_hull
        best = max((threshold - v for v in dft_ehull.values()), default=0.0)
        if not cheap:
            return {"round": rnd, "best_utility": best}
        cheap_values = np.array([self._mlip_ehull.get(c.id, np.nan) for c in pool], dtype=float)
        mhull = self.mlip_hull()
        pairs = []
        for cid in dft_ehull:
            ev = self.mlip.get(cid)
            if ev is not None and ev.ok:
                res = mhull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
                if res is not None:
                    pairs.append((res.e_above_reference_hull, dft_ehull[cid]))
        return {
            "round": rnd, "best_utility": best,
            "cheap_oracle": lambda idx: {OBJECTIVE_PROPERTY: cheap_values[np.asarray(idx, dtype=int)]},
            "cheap_pairs": {OBJECTIVE_PROPERTY: (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))},
        }

    def _screen(self, rnd: int, pool: list[Candidate], preds: dict[str, tuple[float, float]] | None,
                stats: RoundStats) -> tuple[list[Candidate], list[Prediction]]:
        """CHGNet-relax the most promising candidates; keep those close to the CHGNet hull."""
        if preds is not None:
            kappa = getattr(self.config.policy, "kappa", 1.0)
            ranked = sorted((c for c in pool if c.id in preds),
                            key=lambda c: preds[c.id][0] - kappa * preds[c.id][1])
        else:
            order = self._rng(rnd, 1).permutation(len(pool))
            ranked = [pool[i] for i in order]
        if not self.config.mlip.enabled:
            if preds is not None:
                return ranked, [self._as_prediction(c, preds[c.id], "surrogate", rnd) for c in ranked]
            # no MLIP and no surrogate yet: every candidate looks the same, in a seeded random order
            return ranked, [self._as_prediction(c, (0.0, PRIOR_STD_EV), "uninformed", rnd) for c in ranked]
        batch = ranked[: self.config.mlip.top_k]
        self.reporter.status(f"round {rnd}: CHGNet relaxing {len(batch)} candidates")
        evals = self.executor.call("mlip", "evaluate_many", batch) if batch else []
        mhull = self.mlip_hull()
        for ev in evals:
            self._record_mlip(ev, rnd)
        fresh = self._novel_after_relaxation([(c, ev) for c, ev in zip(batch, evals, strict=True) if ev.ok])
        stats.mlip_relaxed = sum(1 for ev in evals if ev.ok)
        stats.mlip_not_novel = stats.mlip_relaxed - len(fresh)
        kept, out = [], []
        for cand, ev in fresh:
            res = mhull.evaluate(cand.pmg.composition, ev.energy_per_atom)
            if res is None or res.e_above_reference_hull > self.config.mlip.max_e_above_hull_ev:
                continue
            self._mlip_ehull[cand.id] = res.e_above_reference_hull
            kept.append(cand)
            if preds is not None:
                out.append(self._as_prediction(cand, preds[cand.id], "surrogate", rnd))
            else:
                out.append(self._as_prediction(cand, (res.e_above_reference_hull, PRIOR_STD_EV),
                                               "mlip-prior", rnd))
        stats.mlip_passed = len(kept)
        return kept, out

    def _novel_after_relaxation(self, pairs: list[tuple[Candidate, Evaluation]]
                                ) -> list[tuple[Candidate, Evaluation]]:
        """Keep candidates whose relaxed structure is new: not known, and not what another candidate
        of the batch relaxed into. Relaxed structures join the known set either way."""
        relaxed = [self._relaxed_copy(c, ev) for c, ev in pairs]
        accepted = {c.id for c in self.filter.apply(relaxed).accepted}
        self.filter.add_known(relaxed)
        return [pair for pair, r in zip(pairs, relaxed, strict=True) if r.id in accepted]

    @staticmethod
    def _relaxed_copy(cand: Candidate, ev: Evaluation) -> Candidate:
        from pymatgen.core import Structure

        from discovery.structures import make_candidate

        return make_candidate(Structure.from_dict(ev.relaxed_structure), cand.generator,
                              parent_ids=(cand.id,), round=cand.round)

    @staticmethod
    def _as_prediction(cand: Candidate, mean_std: tuple[float, float], model: str, rnd: int) -> Prediction:
        return Prediction(candidate_id=cand.id, property="e_above_hull", mean=mean_std[0], std=mean_std[1],
                          model=model, round=rnd)

    def _dft_start(self, cand: Candidate) -> Candidate:
        """DFT starts from the MLIP-relaxed structure, symmetrised, when there is one."""
        from pymatgen.core import Structure

        from discovery.structures import symmetrized

        ev = self.mlip.get(cand.id)
        if ev is not None and ev.ok:
            start = symmetrized(Structure.from_dict(ev.relaxed_structure))
            return cand.model_copy(update={"structure": start.as_dict(),
                                           "conditions": {**cand.conditions, "start": "mlip-relaxed"}})
        return cand

    # ================================================================ per-round metrics

    def _round_finished(self, rnd: int) -> None:
        """All DFT of round ``rnd`` is back: log what it found and how good the predictions were."""
        from discovery.report import round_metrics

        metrics = round_metrics(self, rnd)
        self.tracker.log_metrics(metrics, step=rnd)
        self.reporter.status(f"round {rnd} complete: " + ", ".join(
            f"{k} {v:.3g}" for k, v in metrics.items()))
