"""`Campaign`: the loop that decides what to compute; executors do the computing.

The loop refills DFT slots asynchronously: a new round is planned as soon as the DFT queue runs
low (`Campaign._queue_low`), so slots never wait for a batch barrier. A round is planned only from the
results of rounds at least ``execution.information_lag`` rounds back (`Campaign._visible`), waiting for
them if need be, so what a campaign finds does not depend on timing. What one round does is in
`Campaign._plan_round`, step by step (learn, propose, filter, score, screen, select, submit); the
steps' details live in `discovery.campaign.scoring`, `.screening` and `.allocation`. Everything
decided or computed goes to the ledger first (the driver is its only writer), so a restarted
driver re-submits only what has no result (`Campaign._restore`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from discovery.build import ComponentSpec
from discovery.campaign.allocation import campaign_arms, proposal_quotas
from discovery.campaign.scoring import OBJECTIVE_PROPERTY, policy_context, posterior, predict_ehull
from discovery.campaign.screening import RoundStats, generator_funnel, screen
from discovery.campaign_state import CampaignState
from discovery.config import CampaignConfig
from discovery.errors import ConfigError, InfrastructureError, LedgerError
from discovery.executor import Executor
from discovery.ledger.sqlite import SqliteLedger, evaluation_key
from discovery.objective import Bound, Objective
from discovery.records import Candidate, Evaluation
from discovery.thermo import Hull

log = logging.getLogger(__name__)

MIN_LABELS = 5  # DFT formation energies (elements count, at 0 eV/atom) before the surrogate trains


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


class Campaign:
    """Run one campaign in ``out_dir`` with a ledger, an executor and a tracker.

    Args:
        config: the validated campaign.
        out_dir: campaign folder (ledger, work folders, checkpoints, artifacts).
        ledger: the writer ledger of this folder.
        executor: where work runs (local or Ray).
        components: specs of the named components (``generator:<label>``, ``surrogate``, ``mlip``);
            a generator's label is what its candidates record (`generator_labels`).
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
        self.seeds = list(seeds)
        self.references = {c.id: c for c in references}
        self.filter = candidate_filter
        self.policy = policy
        self.tracker = tracker
        self.reporter = reporter or Reporter()
        self.generators = [name for name in components if name.startswith("generator:")]
        self.labels = {name: name.split(":", 1)[1] for name in self.generators}
        self.arms = campaign_arms({n: components[n] for n in self.generators}, config.composition_first)
        self.state = CampaignState(dft_fingerprint=dft.extra["fingerprint"], dft_fidelity=dft.extra["fidelity"],
                                   hit_threshold=config.objective.hit_e_above_hull_ev,
                                   references=set(self.references))
        # unfinished submissions found on resume: (round, attempt, candidate, needs a new submission record)
        self._resubmit: list[tuple[int, int, Candidate, bool]] = []
        self._inflight: dict[str, tuple[int, int, Candidate]] = {}  # id -> (round, attempt, submitted candidate)
        self.next_round = 0
        self.round_open: dict[int, set[str]] = {}
        self.surrogate_fitted = False
        self._hits: set[str] = set()  # hits when this round was planned
        self._members: dict[str, np.ndarray] = {}  # candidate id -> members' e_above_hull (this round)
        self._mlip_ehull: dict[str, float] = {}  # candidate id -> CHGNet e_above_hull (this round's pool)
        self._dft_known: set[str] = set()  # candidates whose DFT-relaxed copy the filter knows

    # ================================================================ run

    def run(self) -> None:
        started = time.time()
        self.ledger.append("session", "start", {"event": "start", "t": started})
        self._restore()
        self.executor.start(self.components, self.dft_spec, self.config.execution.dft_slots)
        in_flight: BaseException | None = None
        try:
            self._start_references()
            while True:
                self._record(self.executor.completed(timeout_s=0))
                if self.next_round < self.config.rounds and self._queue_low() and self._can_plan(self.next_round):
                    self._plan_round(self.next_round)
                    self.next_round += 1
                    continue
                if self.executor.outstanding == 0 and self.next_round >= self.config.rounds:
                    break
                if self.executor.outstanding == 0 and self._inflight:  # never waits on what nobody computes
                    raise InfrastructureError(f"the executor lost {len(self._inflight)} DFT calculation(s) "
                                              "still in flight; --resume submits them again")
                self._record(self.executor.completed(timeout_s=1.0))
        except BaseException as exc:
            in_flight = exc
            raise
        finally:
            self.executor.shutdown()
            try:
                self.ledger.append("session", "end", {"event": "end", "t": time.time()})
            except LedgerError:  # a full disk: the error in flight (if any) is the one to report
                if in_flight is None:
                    raise
            finally:
                self.reporter.close()

    def _queue_low(self) -> bool:
        """Plan the next round while every slot still has one calculation queued behind the running
        one, so planning (training, proposing, CHGNet) overlaps DFT instead of idling slots."""
        return self.executor.outstanding <= 2 * self.config.execution.dft_slots

    def _visible(self, rnd: int) -> int:
        """The last round whose results round ``rnd`` is planned from (references are round -1)."""
        return rnd - 1 - self.config.execution.information_lag

    def _can_plan(self, rnd: int) -> bool:
        """Every calculation of the rounds round ``rnd`` sees is back (retries included)."""
        last = self._visible(rnd)
        return not any(r <= last for r, _, _ in self._inflight.values())

    # ================================================================ resume

    def _restore(self) -> None:
        restored = CampaignState.from_ledger(self.ledger, self.state.dft_fingerprint, self.state.dft_fidelity,
                                             self.state.hit_threshold)
        restored.references |= self.state.references
        self.state = restored
        rounds = [r for _, r, _, _ in self.ledger.rows("round")]
        self.next_round = max(rounds) + 1 if rounds else 0
        self.filter.add_known(list(self.state.candidates.values()))
        # DFT-relaxed structures become known when a plan first sees them (`_plan_round`), as they
        # did in the uninterrupted run
        self.filter.add_known([self.state.relaxed_copy(self.state.candidates[i], e)
                               for i, e in self.state.mlip.items() if e.ok and i in self.state.candidates])
        latest: dict[str, tuple[int, int, Candidate]] = {}
        for _, rnd, payload, _ in self.ledger.rows("submission"):
            cand = Candidate.model_validate(payload["candidate"])
            latest[cand.id] = (rnd, int(payload.get("attempt", 1)), cand)
        answered = {(e.candidate_id, e.attempt): e for e in self.ledger.evaluations()
                    if e.fidelity == self.state.dft_fidelity and e.oracle_fingerprint == self.state.dft_fingerprint}
        self._resubmit = []
        for cid, (rnd, attempt, cand) in latest.items():
            ev = answered.get((cid, attempt))
            if ev is None:  # in flight when the last driver stopped: the same attempt again
                self._resubmit.append((rnd, attempt, cand, False))
            elif self._retry(ev, attempt):  # a retryable failure with attempts left
                self._resubmit.append((rnd, attempt + 1, cand, True))
        if self.state.candidates or self._resubmit:
            self.reporter.status(
                f"resuming: {len(self.state.dft)} DFT results kept, {len(self._resubmit)} unfinished "
                f"calculations re-queued, next round {self.next_round}")

    def _retry(self, ev: Evaluation, attempt: int) -> bool:
        """A failed calculation is submitted again when its failure is retryable (a lost worker or
        node, an out-of-memory kill, a timeout) and it has attempts left (``execution.max_attempts``)."""
        return (not ev.ok and ev.failure is not None and ev.failure.retryable
                and attempt < self.config.execution.max_attempts)

    # ================================================================ references

    def _start_references(self) -> None:
        """Queue DFT for every reference not yet computed and relax all of them with the MLIP."""
        for ref in self.references.values():
            if ref.id not in self.state.candidates:
                self.ledger.add_candidate(ref)
                self.state.candidates[ref.id] = ref
        for rnd, attempt, cand, new_attempt in self._resubmit:
            if new_attempt:
                self._submit(cand, rnd, attempt)
            else:
                self._inflight[cand.id] = (rnd, attempt, cand)
                self.round_open.setdefault(rnd, set()).add(cand.id)
                self.executor.submit_dft(cand)
        for ref in self.references.values():
            if ref.id not in self.state.dft and ref.id not in self.state.submitted:
                self._submit(ref, -1)
        self._check_references()  # a resumed campaign whose references had all failed stops here
        self._progress()
        if self.config.mlip.enabled:
            todo = [r for r in self.references.values() if r.id not in self.state.mlip]
            if todo:
                self.reporter.status(f"CHGNet: relaxing {len(todo)} references")
                for ev in self.executor.call("mlip", "evaluate_many", todo):
                    self._record_mlip(ev, -1)

    def _check_references(self) -> None:
        """Stop once every reference has failed for good and for a reason of its own (not a lost
        worker): without them there is no hull, so no candidate can be judged, and later rounds
        would only spend DFT on nothing.

        Raises:
            ConfigError: one line with the first failures (the DFT settings are the usual cause).
        """
        results = [self.state.dft.get(cid) for cid in self.references]
        if not results or any(ev is None or ev.ok for ev in results) or self._inflight.keys() & self.references:
            return
        # infrastructure failures (a lost worker, a timeout) are no verdict on the settings: a
        # --resume with more attempts retries them, so the campaign goes on as before
        if any(ev.failure is None or ev.failure.retryable for ev in results):
            return
        shown = "; ".join(f"{self.references[ev.candidate_id].formula}: {ev.failure.error_class}"
                          for ev in results[:3] if ev.failure is not None)
        raise ConfigError(f"dft: every reference failed ({shown}{'; ...' if len(results) > 3 else ''}), so there "
                          "is no hull to judge candidates by; check the dft settings and start a new --out")

    def _submit(self, cand: Candidate, rnd: int, attempt: int = 1, dispatch: bool = True) -> None:
        """Record a DFT submission, then hand it to the executor (``dispatch=False``: the caller does,
        once the transaction holding the record has committed)."""
        self.ledger.append("submission", evaluation_key(cand.id, self.state.dft_fingerprint, attempt),
                           {"candidate": cand.model_dump(mode="json"), "attempt": attempt}, rnd)
        self.state.submitted[cand.id] = rnd
        self._inflight[cand.id] = (rnd, attempt, cand)
        self.round_open.setdefault(rnd, set()).add(cand.id)
        if dispatch:
            self.executor.submit_dft(cand)

    # ================================================================ recording

    def _record(self, evaluations: list[Evaluation]) -> None:
        for ev in evaluations:
            rnd, attempt, submitted = self._inflight.pop(
                ev.candidate_id, (self.state.submitted.get(ev.candidate_id, -1), 1, None))
            ev = ev.model_copy(update={"attempt": attempt})
            self.ledger.add_evaluation(ev, rnd)
            cand = self.state.candidates.get(ev.candidate_id)
            name = cand.formula if cand is not None else ev.candidate_id
            if submitted is not None and self._retry(ev, attempt):
                self.reporter.status(f"DFT failed: {name}: {ev.failure.error_class} (retryable); attempt "
                                     f"{attempt + 1} of {self.config.execution.max_attempts}")
                self._submit(submitted, rnd, attempt + 1)
                continue
            self.state.dft[ev.candidate_id] = ev
            if ev.ok:
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
        if any(ev.candidate_id in self.references for ev in evaluations):
            self._check_references()  # after the loop: every result of this batch is in the ledger

    def _record_mlip(self, ev: Evaluation, rnd: int) -> None:
        self.ledger.add_evaluation(ev, rnd)
        self.state.mlip[ev.candidate_id] = ev

    def _progress(self) -> None:
        total = len(self.references) + self.config.rounds * self.config.dft_per_round
        self.reporter.dft_progress(len(self.state.dft), max(total, len(self.state.submitted)))

    # ================================================================ one round

    def _rng(self, rnd: int, *stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(rnd, *stream)))

    def _plan_round(self, rnd: int) -> None:
        """Plan round ``rnd`` and record it in one ledger transaction: a driver killed while planning
        leaves no trace of the round, so a resume plans it again from the same state (the same
        candidates, selections and submissions as an uninterrupted run); only then does DFT start."""
        with self.ledger.transaction():
            submitted = self._plan(rnd)
        for cand in submitted:
            self.executor.submit_dft(cand)
        if not submitted:
            self._round_finished(rnd)

    def _plan(self, rnd: int) -> list[Candidate]:
        t0 = time.time()
        stats = RoundStats(rnd)
        seen = self.state.as_of(self._visible(rnd))  # what this round may know, whatever arrived since
        # later proposals must be new after DFT too (each result's relaxed copy is built once)
        fresh = [i for i, e in seen.candidate_dft().items() if e.ok and i in seen.candidates and i not in self._dft_known]
        self.filter.add_known([seen.relaxed_copy(seen.candidates[i], seen.dft[i]) for i in fresh])
        self._dft_known.update(fresh)
        hull = seen.dft_hull()
        self._hits = seen.hits(hull)  # StructureMatcher over all results: once per round
        self._members, self._mlip_ehull = {}, {}
        self._learn(rnd, hull, seen)

        # propose: the bandit shares the proposal budget among (generator, condition) arms by hits
        quotas = proposal_quotas(arms=self.arms, n_per_round={n: self.components[n].config.n_per_round
                                                              for n in self.generators},
                                 bandit_config=self.config.bandit, state=seen, hits=self._hits,
                                 rng=self._rng(rnd, 3), rnd=rnd, tracker=self.tracker, ledger=self.ledger)
        self.reporter.status(f"round {rnd}: proposing with {sum(q > 0 for q in quotas.values())} arm(s): "
                             + ", ".join(f"{a} {q}" for a, q in quotas.items()))
        proposed = self._propose(rnd, quotas)
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
            self.state.candidates[c.id] = c
        self.filter.add_known(accepted)

        # score
        preds = None
        if self.surrogate_fitted and accepted:
            preds, self._members = predict_ehull(self.executor, accepted, hull)
        prior = "mlip-prior" if self.config.mlip.enabled else "uninformed"
        stats.scored_by = self.state.scored_by[rnd] = "surrogate" if preds is not None else prior

        # screen with the MLIP
        if preds is not None:
            kappa = getattr(self.config.policy, "kappa", 1.0)
            ranked = sorted((c for c in accepted if c.id in preds), key=lambda c: preds[c.id][0] - kappa * preds[c.id][1])
        else:
            ranked = [accepted[i] for i in self._rng(rnd, 1).permutation(len(accepted))]
        pool, pool_preds = screen(rnd, ranked, preds, config=self.config, executor=self.executor, state=seen,
                                  candidate_filter=self.filter, record_mlip=self._record_mlip, reporter=self.reporter,
                                  stats=stats, mlip_ehull=self._mlip_ehull)

        # select
        embeddings = None
        if self.surrogate_fitted and pool and self.config.policy.diversity.needs_embeddings:
            embeddings = np.asarray(self.executor.call("surrogate", "embed", pool))
        context = policy_context(seen, rnd, pool, hull, cheap=preds is not None, mlip_ehull=self._mlip_ehull)
        if hasattr(self.policy, "rng"):  # a stream per round: a resumed driver draws what this one would
            self.policy.rng = self._rng(rnd, 4)
        selection = self.policy.select(pool, posterior(pool, pool_preds, self._members, embeddings),
                                       self.config.dft_per_round, context)
        selection = selection.model_copy(update={"policy": f"{selection.policy}/{stats.scored_by}"})
        self.ledger.add_selection(selection)
        self.state.predicted.update(selection.predictions)
        stats.selected = len(selection.candidate_ids)
        stats.by_generator = generator_funnel(proposed, result.reasons, accepted,
                                              pool if self.config.mlip.enabled else None, selection.candidate_ids)
        by_id = {c.id: c for c in pool}
        submitted = [self._dft_start(by_id[cid]) for cid in selection.candidate_ids]
        for cand in submitted:
            self._submit(cand, rnd, dispatch=False)
        if not submitted:
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
        return submitted

    def _propose(self, rnd: int, quotas: dict[str, int]) -> list[Candidate]:
        """Ask every arm with a quota for candidates (in parallel where the executor can); a
        composition-first arm asks its composition model for formulas first and spreads its quota
        over them. Candidates are stamped with their round, generator label and arm."""
        calls, arms = [], []
        for j, arm in enumerate(self.arms):
            quota = quotas.get(arm.name, 0)
            if quota <= 0:
                continue
            # the generator's own arm keeps the stream it has always had; other arms get their own
            stream = 100 + self.generators.index(arm.generator) if not (arm.conditions or arm.composition_model) \
                else 1000 + j
            rng = self._rng(rnd, stream)
            if arm.composition_model is None:
                calls.append((arm.generator, "propose", (quota, {"round": rnd, **arm.conditions}, rng)))
                arms.append(arm)
                continue
            cfg = self.config.composition_first
            found = self.executor.call(arm.composition_model, "propose_compositions",
                                       min(quota, cfg.compositions_per_arm), {"round": rnd}, rng)
            model = self.labels[arm.composition_model]
            for k, comp in enumerate(found):
                n = quota // len(found) + (k < quota % len(found))
                if n:
                    info = {key: comp[key] for key in ("target_formation_energy_ev",) if key in comp}
                    # a stream per formula: the same draws whether calls share this process or not
                    calls.append((arm.generator, "propose", (n, {"round": rnd, "composition": comp["composition"],
                                                                 "composition_model": model, **info},
                                                             self._rng(rnd, stream, k + 1))))
                    arms.append(arm)
        out = []
        for arm, batch in zip(arms, self.executor.call_many(calls), strict=True):
            label = self.labels[arm.generator]
            for c in batch:
                conditions = {**c.conditions, "arm": arm.name}
                if arm.composition_model is not None:
                    conditions.setdefault("structure_generator", label)
                out.append(c.model_copy(update={"round": rnd, "generator": label, "conditions": conditions}))
        return out

    def _learn(self, rnd: int, hull: Hull, state: CampaignState) -> None:
        """Refit the surrogate on every DFT label ``state`` holds and tell generators what DFT confirmed."""
        known = self.seeds + [state.candidates[i] for i in state.candidate_dft() if i in state.candidates]
        cands, targets, sources = state.labels(hull)
        labels = [(c, t) for c, t, src in zip(cands, targets, sources, strict=True) if src not in self.references]
        feedback = {"known": known, "hits": sorted(self._hits), "round": rnd, "labels": labels,
                    "property": "formation_energy_per_atom"}
        for name in self.generators:
            conditions = self.executor.call(name, "update", feedback)
            if conditions:  # what each generator now samples under: ledger and MLflow, every round
                label = self.labels[name]
                self.ledger.append("conditions", f"{rnd}:{label}", {"generator": label, **conditions}, rnd)
                self.tracker.log_metrics({f"conditions.{label}.{k}": float(v) for k, v in conditions.items()
                                          if isinstance(v, int | float) and not isinstance(v, bool)}, step=rnd)
        if len(cands) < MIN_LABELS:
            self.surrogate_fitted = False
            return
        self.reporter.status(f"round {rnd}: training the surrogate on {len(cands)} DFT labels")
        report = self.executor.call("surrogate", "fit", cands, targets)
        ckpt = None
        if self.components["surrogate"].registered.checkpoints:  # refit-only kinds (forests) save nothing
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

    def _dft_start(self, cand: Candidate) -> Candidate:
        """DFT starts from the MLIP-relaxed structure, symmetrised, when there is one."""
        from pymatgen.core import Structure

        from discovery.structures import symmetrized

        ev = self.state.mlip.get(cand.id)
        if ev is not None and ev.ok:
            start = symmetrized(Structure.from_dict(ev.relaxed_structure))
            return cand.model_copy(update={"structure": start.as_dict(),
                                           "conditions": {**cand.conditions, "start": "mlip-relaxed"}})
        return cand

    # ================================================================ per-round metrics

    def _round_finished(self, rnd: int) -> None:
        """All DFT of round ``rnd`` is back: log what it found and how good the predictions were."""
        from discovery.report import round_metrics

        metrics = round_metrics(self.state, rnd, [p for _, _, p, _ in self.ledger.rows("round")])
        self.tracker.log_metrics(metrics, step=rnd)
        self.reporter.status(f"round {rnd} complete: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))

