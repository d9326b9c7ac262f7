"""What a campaign has computed, as data: candidates, DFT and MLIP results, submissions and the
predictions that selected them, with the hulls and labels derived from them.

The campaign driver keeps one `CampaignState` up to date as results arrive; the report
(`discovery status`, per-round metrics) builds the same object from the ledger alone
(`CampaignState.from_ledger`), so both read one definition of every derived quantity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from discovery.hits import hit_ids
from discovery.records import Candidate, Evaluation, Fidelity
from discovery.thermo import Hull


@dataclass
class CampaignState:
    """Everything decided or computed so far.

    Attributes:
        dft_fingerprint, dft_fidelity: the DFT settings whose results count (others are ignored).
        references: ids of the reference candidates (elements, reference phases).
        candidates: every candidate recorded, by id.
        dft: DFT evaluations of the campaign's settings, by candidate id, in arrival order (the
            latest attempt of each).
        dft_attempts: every DFT evaluation record of the campaign's settings, retries included.
        mlip: MLIP evaluations, by candidate id.
        submitted: candidate id -> round it was submitted to DFT in (-1: references).
        predicted: candidate id -> (mean, std) of the objective when it was selected.
        scored_by: round -> what ranked its pool ("surrogate", "mlip-prior", "uninformed").
        hit_threshold: the objective's e_above_hull bound, eV/atom.
    """

    dft_fingerprint: str
    dft_fidelity: str
    hit_threshold: float
    references: set[str] = field(default_factory=set)
    candidates: dict[str, Candidate] = field(default_factory=dict)
    dft: dict[str, Evaluation] = field(default_factory=dict)
    dft_attempts: list[Evaluation] = field(default_factory=list)
    mlip: dict[str, Evaluation] = field(default_factory=dict)
    submitted: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, tuple[float, float]] = field(default_factory=dict)
    scored_by: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, ledger: Any, dft_fingerprint: str | None = None, dft_fidelity: str | None = None,
                    hit_threshold: float | None = None) -> CampaignState:
        """The state recorded in ``ledger`` (settings default to those in its meta record)."""
        meta = ledger.meta()
        state = cls(dft_fingerprint=dft_fingerprint or meta.get("dft_fingerprint", ""),
                    dft_fidelity=str(dft_fidelity or meta.get("dft_fidelity", Fidelity.DFT)),
                    hit_threshold=meta.get("hit_e_above_hull_ev", 0.05) if hit_threshold is None else hit_threshold)
        state.candidates = ledger.candidates()
        state.references = {cid for cid, c in state.candidates.items() if c.generator == "reference"}
        for e in ledger.evaluations():
            state.add_evaluation(e)
        for sel in ledger.selections():
            state.predicted.update(sel.predictions)
        for _, rnd, payload, _ in ledger.rows("round"):
            state.scored_by[rnd] = payload.get("scored_by", "")
        for _, rnd, payload, _ in ledger.rows("submission"):
            state.submitted[payload["candidate"]["id"]] = rnd
        return state

    def add_evaluation(self, ev: Evaluation) -> bool:
        """File an evaluation under DFT or MLIP; False when it belongs to neither (other settings)."""
        if ev.fidelity == self.dft_fidelity and ev.oracle_fingerprint == self.dft_fingerprint:
            self.dft[ev.candidate_id] = ev
            self.dft_attempts.append(ev)
            return True
        if ev.fidelity == Fidelity.MLIP:
            self.mlip[ev.candidate_id] = ev
            return True
        return False

    def as_of(self, last_round: int) -> CampaignState:
        """What a plan may see: the DFT results of calculations submitted in rounds <= ``last_round``
        (references are round -1), in (round, candidate id) order rather than arrival order, so that
        what a round is planned from does not depend on timing. Candidates, MLIP results, submissions
        and predictions are shared with this state (planning writes MLIP results through it)."""
        def key(cid: str) -> tuple[int, str]:
            return self.submitted.get(cid, -1), cid

        visible = sorted((cid for cid in self.dft if key(cid)[0] <= last_round), key=key)
        return CampaignState(
            dft_fingerprint=self.dft_fingerprint, dft_fidelity=self.dft_fidelity, hit_threshold=self.hit_threshold,
            references=self.references, candidates=self.candidates, dft={cid: self.dft[cid] for cid in visible},
            dft_attempts=sorted((e for e in self.dft_attempts if key(e.candidate_id)[0] <= last_round),
                                key=lambda e: (*key(e.candidate_id), e.attempt)),
            mlip=self.mlip, submitted=self.submitted, predicted=self.predicted, scored_by=self.scored_by)

    # ------------------------------------------------------------------ derived

    def reference_results(self, evals: dict[str, Evaluation]) -> list[Evaluation]:
        """The successful evaluations of references in ``evals``."""
        return [evals[i] for i in self.references if i in evals and evals[i].ok]

    def attempt_counts(self) -> dict[str, float]:
        """``dft_attempts`` (evaluation records, retries included), ``dft_retried`` (candidates
        evaluated more than once), ``nodes_lost`` (attempts lost with their worker or node) and
        ``dft_repeated`` (calculations that ran to completion more than once for one candidate and
        settings: from the work folder's run count each result carries, and from successful results
        recorded twice), all from the ledger."""
        per_candidate: dict[str, int] = {}
        ok_per_candidate: dict[str, int] = {}
        repeated = 0
        for ev in self.dft_attempts:
            per_candidate[ev.candidate_id] = per_candidate.get(ev.candidate_id, 0) + 1
            if ev.ok:
                ok_per_candidate[ev.candidate_id] = ok_per_candidate.get(ev.candidate_id, 0) + 1
                repeated += max(0, int(ev.extra.get("runs", 1)) - 1) if not ev.extra.get("reused") else 0
        repeated += sum(n - 1 for n in ok_per_candidate.values())
        return {"dft_attempts": len(self.dft_attempts),
                "dft_retried": sum(1 for n in per_candidate.values() if n > 1),
                "nodes_lost": sum(1 for ev in self.dft_attempts
                                  if not ev.ok and ev.failure is not None and ev.failure.error_class == "WorkerLost"),
                "dft_repeated": repeated}

    def candidate_dft(self) -> dict[str, Evaluation]:
        """DFT results of proposed candidates (references excluded), in arrival order."""
        return {i: e for i, e in self.dft.items() if i not in self.references}

    def dft_hull(self) -> Hull:
        """The campaign hull: DFT references plus every successful candidate."""
        return Hull(self.reference_results(self.dft), [e for e in self.candidate_dft().values() if e.ok])

    def mlip_hull(self) -> Hull:
        """The MLIP's own reference hull (never mixed with DFT)."""
        return Hull(self.reference_results(self.mlip))

    def hits(self, hull: Hull | None = None) -> set[str]:
        """The campaign's hits (`discovery.hits`)."""
        return hit_ids(self.candidate_dft(), self.reference_results(self.dft), hull or self.dft_hull(),
                       self.hit_threshold)

    @staticmethod
    def relaxed_copy(cand: Candidate, ev: Evaluation) -> Candidate:
        """The relaxed structure of ``ev`` as a candidate of its own (its content id, ``cand`` as
        parent), so no feature cache keyed by id hands back the unrelaxed structure."""
        from pymatgen.core import Structure

        from discovery.structures import make_candidate

        return make_candidate(Structure.from_dict(ev.relaxed_structure), cand.generator,
                              parent_ids=(cand.id,), round=cand.round)

    def labels(self, hull: Hull) -> tuple[list[Candidate], list[float], list[str]]:
        """DFT formation energies of every computed compound (references included).

        Returns:
            The relaxed structures as candidates (`relaxed_copy`), their formation energies
            (eV/atom) and the ids of the candidates they came from.
        """
        cands, targets, sources = [], [], []
        for cid, ev in self.dft.items():
            if not ev.ok or cid not in self.candidates:
                continue
            relaxed = self.relaxed_copy(self.candidates[cid], ev)
            ef = hull.formation_energy(relaxed.pmg.composition, ev.energy_per_atom)
            if ef is not None:
                cands.append(relaxed)
                targets.append(ef)
                sources.append(cid)
        return cands, targets, sources

    def e_above_reference_hull(self, hull: Hull) -> dict[str, float]:
        """Candidate id -> DFT energy above the reference hull (eV/atom) of every successful result."""
        from pymatgen.core import Structure

        out = {}
        for cid, ev in self.candidate_dft().items():
            if ev.ok:
                res = hull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
                if res is not None:
                    out[cid] = res.e_above_reference_hull
        return out
