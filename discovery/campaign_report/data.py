"""Everything the campaign report shows, read from the campaign folder alone (ledger, campaign.yaml,
CIFs), so it works on a finished, running or resumed campaign.

The ledger is opened read-only; derived quantities (hull, hits, novelty) come from the same
`~discovery.campaign_state.CampaignState` and `discovery.hits` definitions that ``discovery status``
and the campaign itself use.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from discovery.campaign_state import CampaignState
from discovery.errors import LedgerError
from discovery.hits import hit_ids, rediscovered
from discovery.ledger.sqlite import SqliteLedger
from discovery.records import Evaluation
from discovery.report import LEDGER_NAME, campaign_clock, campaign_status
from discovery.thermo import Hull

#: Example messages shown per DFT failure class.
FAILURE_EXAMPLES = 3


@dataclass
class Result:
    """One successful DFT result (a candidate or a reference) on the campaign hull.

    Units: eV/atom for energies, seconds for times.
    """

    id: str
    formula: str
    structure: Structure
    reference: bool
    generator: str
    generator_version: str
    round: int
    parent_ids: tuple[str, ...]
    conditions: dict[str, Any]
    energy_per_atom: float
    formation_energy: float | None
    e_above_hull: float | None
    e_above_reference_hull: float | None
    novel: bool
    hit: bool
    rediscovered: bool  # matches a phase the campaign withheld (`validation.withhold`)
    dft_wall_s: float
    cif: Path | None


@dataclass
class CurvePoint:
    """The campaign after its ``calls``-th candidate DFT result (failures count as calls), with
    that result's own E above hull (None: failed or off the hull) and whether it is a hit."""

    calls: int
    wall_s: float
    best_e_above_hull: float | None
    hits: int
    e_above_hull: float | None = None
    hit: bool = False


@dataclass
class ParityPoint:
    """A selected candidate's predicted e_above_hull (against the references' hull) and DFT's."""

    id: str
    formula: str
    round: int
    model: str
    mean: float
    std: float
    dft: float


@dataclass
class MlipPair:
    """CHGNet's and DFT's formation energies of one structure, each on its own references."""

    id: str
    formula: str
    reference: bool
    mlip: float
    dft: float


@dataclass
class GeneratorRound:
    """The funnel of one generator in one round. None: not recorded by the campaign that wrote the
    ledger (older ledgers keep only per-round totals)."""

    round: int
    generator: str
    proposed: int | None
    valid: int | None
    novel: int
    mlip_relaxed: int
    mlip_passed: int | None
    selected: int
    dft_ok: int
    hits: int
    bandit_weight: float | None


@dataclass
class FailureClass:
    error_class: str
    count: int
    retryable: bool
    examples: list[tuple[str, str]]  # (formula, message)


@dataclass
class ReportData:
    """What `discovery.campaign_report.html` renders."""

    out_dir: Path
    status: dict[str, Any]
    meta: dict[str, Any]
    elements: list[str]
    hit_threshold: float
    results: list[Result]
    curve: list[CurvePoint]
    parity: list[ParityPoint]
    mlip_pairs: list[MlipPair]
    rounds: list[dict[str, Any]]
    generator_rounds: list[GeneratorRound]
    failures: list[FailureClass]
    fits: list[dict[str, Any]]
    fingerprints: dict[str, str]
    campaign_yaml: str | None

    @property
    def candidates(self) -> list[Result]:
        return [r for r in self.results if not r.reference]

    @property
    def hits(self) -> list[Result]:
        return [r for r in self.results if r.hit]


def load_report_data(out_dir: str | Path) -> ReportData:
    """Read the campaign in ``out_dir``.

    Raises:
        LedgerError: ``out_dir`` is missing or holds no campaign ledger.
    """
    out_dir = Path(out_dir)
    if not (out_dir / LEDGER_NAME).is_file():
        raise LedgerError(f"{out_dir}: no campaign here (no {LEDGER_NAME})")
    status = campaign_status(out_dir)
    ledger = SqliteLedger(out_dir / LEDGER_NAME, writer=False)
    try:
        meta = ledger.meta()
        state = CampaignState.from_ledger(ledger)
        rounds = [p for _, _, p, _ in ledger.rows("round")]
        fits = [{"round": r, **p} for _, r, p, _ in ledger.rows("fit")]
        bandit = {r: p.get("weights", {}) for _, r, p, _ in ledger.rows("bandit")}
        selections = ledger.selections()
        sessions = [(key, p["t"]) for key, _, p, _ in ledger.rows("session")]
        evaluations = [(p, created) for _, _, p, created in ledger.rows("evaluation")]
    finally:
        ledger.close()

    # arrival time of each DFT result of the campaign's settings, in ledger order
    arrivals = [(p["candidate_id"], p["status"], created) for p, created in evaluations
                if p["oracle_fingerprint"] == state.dft_fingerprint and p["fidelity"] == state.dft_fidelity]
    hull = state.dft_hull()
    results = _results(state, hull, out_dir, {r["id"] for r in status["rediscovered"]})
    by_id = {r.id: r for r in results}
    clock = campaign_clock(sessions, [t for _, t in evaluations])
    campaign_yaml = out_dir / "campaign.yaml"
    return ReportData(
        out_dir=out_dir, status=status, meta=meta, elements=hull.elements, hit_threshold=state.hit_threshold,
        results=results,
        curve=_curve(state, arrivals, by_id, clock),
        parity=_parity(selections, by_id, state),
        mlip_pairs=_mlip_pairs(state, hull),
        rounds=rounds,
        generator_rounds=_generator_rounds(state, rounds, selections, bandit, by_id),
        failures=_failures(state),
        fits=fits,
        fingerprints=_fingerprints(meta, state),
        campaign_yaml=campaign_yaml.read_text(errors="replace") if campaign_yaml.is_file() else None,
    )


def _results(state: CampaignState, hull: Hull, out_dir: Path, withheld_found: set[str]) -> list[Result]:
    """Every successful DFT result, references first, then candidates in arrival order."""
    cand_dft = state.candidate_dft()
    references = state.reference_results(state.dft)
    known = rediscovered(cand_dft, references)
    hits = hit_ids(cand_dft, references, hull, state.hit_threshold, known)
    out = []
    for cid, ev in [*((e.candidate_id, e) for e in references), *cand_dft.items()]:
        if not ev.ok:
            continue
        s = Structure.from_dict(ev.relaxed_structure)
        res = hull.evaluate(s.composition, ev.energy_per_atom)
        c = state.candidates.get(cid)
        formula = s.composition.reduced_formula
        cif = out_dir / "cifs" / f"{formula}_{cid}.cif"  # the name `discovery.report.write_artifacts` gives it
        out.append(Result(
            id=cid, formula=formula, structure=s, reference=cid in state.references,
            generator=c.generator if c else "?", generator_version=c.generator_version if c else "?",
            round=c.round if c else -1, parent_ids=tuple(c.parent_ids) if c else (),
            conditions=dict(c.conditions) if c else {}, energy_per_atom=ev.energy_per_atom,
            formation_energy=res.formation_energy_per_atom if res else None,
            e_above_hull=res.e_above_hull if res else None,
            e_above_reference_hull=res.e_above_reference_hull if res else None,
            novel=cid not in state.references and cid not in known, hit=cid in hits,
            rediscovered=cid in withheld_found,
            dft_wall_s=ev.provenance.wall_s, cif=cif if cif.is_file() else None))
    return out


def _curve(state: CampaignState, arrivals: list[tuple[str, str, float]], by_id: dict[str, Result],
           clock) -> list[CurvePoint]:
    """Hits and best e_above_hull (on the final campaign hull) after each candidate DFT result."""
    out, best, hits, calls = [], None, 0, 0
    for cid, status, created in arrivals:
        if cid in state.references:
            continue
        calls += 1
        r = by_id.get(cid) if status == "ok" else None
        value = r.e_above_hull if r is not None else None
        if value is not None:
            best = value if best is None else min(best, value)
            hits += r.hit
        out.append(CurvePoint(calls, clock(created), best, hits, value, r is not None and r.hit))
    return out


def random_order_expectation(values: list[float | None], hits: list[bool]) -> tuple[list[float], list[float | None]]:
    """Expected hits and expected best value after k = 1..N calls had the same N results come in a
    uniformly random order (a failed call has value None). Exact: the best of k draws without
    replacement is the i-th smallest value with probability C(N-i, k-1) / C(N, k).
    """
    n = len(values)
    total_hits = sum(hits)
    ok = sorted(v for v in values if v is not None)
    exp_hits = [k * total_hits / n for k in range(1, n + 1)]
    exp_best: list[float | None] = []
    log_comb = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # noqa: E731
    for k in range(1, n + 1):
        # in logs: C(N, k) overflows a float beyond ~1,000 calls
        log_denom = log_comb(n, k)
        failed = n - len(ok)
        p_none = math.exp(log_comb(failed, k) - log_denom) if k <= failed else 0.0  # all k draws failed
        if p_none >= 1.0:
            exp_best.append(None)
            continue
        e = sum(v * math.exp(log_comb(n - i, k - 1) - log_denom) for i, v in enumerate(ok, start=1) if n - i >= k - 1)
        exp_best.append(e / (1.0 - p_none))
    return exp_hits, exp_best


def _parity(selections, by_id: dict[str, Result], state: CampaignState) -> list[ParityPoint]:
    """What ranked each selected candidate (surrogate, CHGNet prior) against what DFT found."""
    out = []
    for sel in selections:
        model = state.scored_by.get(sel.round) or sel.policy.rsplit("/", 1)[-1]
        for cid, (mean, std) in sel.predictions.items():
            r = by_id.get(cid)
            if r is not None and r.e_above_reference_hull is not None:
                out.append(ParityPoint(cid, r.formula, sel.round, model, float(mean), float(std),
                                       r.e_above_reference_hull))
    return out


def calibration(points: list[ParityPoint]) -> dict[str, dict[str, float]]:
    """Per round (and ``all``): the share of DFT values within 1 and 2 predicted std, the MAE, n."""
    groups: dict[str, list[ParityPoint]] = defaultdict(list)
    for p in points:
        groups[str(p.round)].append(p)
    if points:
        groups["all"] = list(points)
    out = {}
    for key, pts in groups.items():
        z = [abs(p.mean - p.dft) / max(p.std, 1e-9) for p in pts]
        out[key] = {"n": len(pts), "within_1sigma": sum(v <= 1 for v in z) / len(z),
                    "within_2sigma": sum(v <= 2 for v in z) / len(z),
                    "mae": sum(abs(p.mean - p.dft) for p in pts) / len(pts),
                    "model": ",".join(sorted({p.model for p in pts}))}
    return out


def _mlip_pairs(state: CampaignState, hull: Hull) -> list[MlipPair]:
    """Structures relaxed by both CHGNet and DFT (elements excluded: 0 eV/atom on both sides)."""
    mhull = state.mlip_hull()
    out = []
    for cid, mev in state.mlip.items():
        dev = state.dft.get(cid)
        if not (mev.ok and dev is not None and dev.ok):
            continue
        ms, ds = Structure.from_dict(mev.relaxed_structure), Structure.from_dict(dev.relaxed_structure)
        if len(ds.composition.elements) < 2:
            continue
        ef_mlip = mhull.formation_energy(ms.composition, mev.energy_per_atom)
        ef_dft = hull.formation_energy(ds.composition, dev.energy_per_atom)
        if ef_mlip is not None and ef_dft is not None:
            out.append(MlipPair(cid, ds.composition.reduced_formula, cid in state.references, ef_mlip, ef_dft))
    return out


def _generator_rounds(state: CampaignState, rounds: list[dict[str, Any]], selections, bandit: dict[int, dict],
                      by_id: dict[str, Result]) -> list[GeneratorRound]:
    """Per round and generator: the funnel counts the round recorded (``by_generator``) where the
    campaign wrote them, the rest counted from the ledger's candidates, CHGNet results, selections
    and DFT results."""
    novel: Counter = Counter()
    for c in state.candidates.values():
        if c.id not in state.references:
            novel[c.round, c.generator] += 1
    relaxed = Counter((state.candidates[i].round, state.candidates[i].generator) for i, e in state.mlip.items()
                      if e.ok and i in state.candidates and i not in state.references)
    selected = Counter((sel.round, state.candidates[i].generator) for sel in selections for i in sel.candidate_ids
                       if i in state.candidates)
    ok = Counter((r.round, r.generator) for r in by_id.values() if not r.reference)
    hits = Counter((r.round, r.generator) for r in by_id.values() if r.hit)
    recorded = {rec["round"]: rec.get("by_generator") or {} for rec in rounds}
    keys = set(novel) | set(selected) | {(rnd, g) for rnd, gens in recorded.items() for g in gens}
    out = []
    for rnd, gen in sorted(keys):
        own = recorded.get(rnd, {}).get(gen, {})
        weights = bandit.get(rnd)
        weight = sum(w for arm, w in weights.items() if arm.split("|", 1)[0] == gen) if weights else None
        out.append(GeneratorRound(
            round=rnd, generator=gen, proposed=own.get("proposed"), valid=own.get("valid"),
            novel=own.get("novel", novel[rnd, gen]), mlip_relaxed=relaxed[rnd, gen],
            mlip_passed=own.get("mlip_passed"), selected=selected[rnd, gen], dft_ok=ok[rnd, gen],
            hits=hits[rnd, gen], bandit_weight=weight))
    return out


def _failures(state: CampaignState) -> list[FailureClass]:
    """Failed DFT attempts (retries and references included) by error class, most frequent first."""
    groups: dict[str, list[Evaluation]] = defaultdict(list)
    for ev in state.dft_attempts:
        if not ev.ok and ev.failure is not None:
            groups[ev.failure.error_class].append(ev)
    out = []
    for cls, evs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        examples, seen = [], set()
        for ev in evs:
            message = ev.failure.message.strip()
            if message in seen:
                continue
            seen.add(message)
            c = state.candidates.get(ev.candidate_id)
            examples.append((c.formula if c else ev.candidate_id, message))
            if len(examples) == FAILURE_EXAMPLES:
                break
        out.append(FailureClass(cls, len(evs), any(e.failure.retryable for e in evs), examples))
    return out


def _fingerprints(meta: dict[str, Any], state: CampaignState) -> dict[str, str]:
    """The settings that define what the results mean: campaign, DFT, MLIP and code versions."""
    out = {k: str(meta[k]) for k in ("name", "code_version", "config_fingerprint", "dft_fingerprint",
                                     "dft_fidelity", "hit_e_above_hull_ev", "dft_slots") if k in meta}
    codes = sorted({f"{e.provenance.code} {e.provenance.code_version}" for e in state.dft_attempts})
    if codes:
        out["dft_code"] = ", ".join(codes)
    mlip = sorted({f"{e.oracle} {e.provenance.code_version} (settings {e.oracle_fingerprint})"
                   for e in state.mlip.values()})
    if mlip:
        out["mlip"] = ", ".join(mlip)
    return out
