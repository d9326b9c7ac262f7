"""What a campaign has found, computed from its ledger alone (works while it runs).

`campaign_status` backs ``discovery status DIR --json`` and the table printed at the end of a run;
`round_metrics` is what the campaign logs when a round's DFT is back; `write_artifacts` writes the
CIFs of validated candidates and the discovery-curve PNG. All of them read a
`~discovery.campaign_state.CampaignState` (built from the ledger), never a live campaign.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from discovery.campaign_state import CampaignState
from discovery.errors import LedgerError
from discovery.fileio import atomic_write, write_text_atomic
from discovery.hits import hit_ids, rediscovered, withheld_found
from discovery.ledger.sqlite import SqliteLedger
from discovery.records import Evaluation

LEDGER_NAME = "ledger.sqlite"


def is_running(out_dir: Path) -> bool:
    """True while a driver holds the campaign's writer lock."""
    from filelock import FileLock, Timeout

    path = out_dir / "ledger.lock"
    if not path.exists():
        return False
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def _wall_s(times: list[float], sessions: list[tuple[str, int, dict[str, Any], float]], running: bool) -> float:
    """Sum of driver sessions; a killed session ends at its last record."""
    total, start = 0.0, None
    for key, _, payload, created in sessions:
        if key == "start":
            if start is not None:  # previous session was killed: it ended at its last record
                total += max(t for t in times if t < created) - start
            start = payload["t"]
        elif key == "end" and start is not None:
            total += payload["t"] - start
            start = None
    if start is not None:
        total += (time.time() if running else max(times)) - start
    return total


def campaign_clock(sessions: list[tuple[str, float]], times: list[float]):
    """A function from a record's time to the campaign's running time at that moment: the sum of
    the driver sessions before it, so the pause between a stop and a resume does not count. A
    killed session (no end record) ended at its last record, as in ``discovery status``."""
    spans: list[list[float]] = []
    for key, t in sessions:
        if key == "start":
            if spans and spans[-1][1] is None:
                spans[-1][1] = max([x for x in times if spans[-1][0] <= x < t], default=spans[-1][0])
            spans.append([t, None])
        elif key == "end" and spans and spans[-1][1] is None:
            spans[-1][1] = t
    if spans and spans[-1][1] is None:
        spans[-1][1] = max([spans[-1][0], *times])

    def clock(t: float) -> float:
        total = 0.0
        for start, end in spans:
            if t <= start:
                break
            total += min(t, end) - start
        return total

    return clock


def campaign_status(out_dir: str | Path) -> dict[str, Any]:
    """Counts, best candidates and DFT utilisation of the campaign in ``out_dir``.

    Raises:
        LedgerError: ``out_dir`` holds no campaign, or its ledger is damaged.
    """
    out_dir = Path(out_dir)
    ledger = SqliteLedger(out_dir / LEDGER_NAME, writer=False)
    try:
        meta = ledger.meta()
        state = CampaignState.from_ledger(ledger)
        rounds = [p for _, _, p, _ in ledger.rows("round")]
        n_submitted = ledger.count("submission")
        times, sessions = ledger.times(), list(ledger.rows("session"))
    finally:
        ledger.close()
    running = is_running(out_dir)  # after the reads: the lock file of a damaged ledger stays untouched
    wall = _wall_s(times, sessions, running)

    refs, dft, candidates = state.references, state.dft, state.candidates
    mlip = [e for i, e in state.mlip.items() if i not in refs]
    cand_dft = state.candidate_dft()
    hull = state.dft_hull()
    known_after_relax = rediscovered(cand_dft, state.reference_results(dft))
    hit_set = hit_ids(cand_dft, state.reference_results(dft), hull, state.hit_threshold, known_after_relax)
    best = []
    for cid, ev in cand_dft.items():
        if not ev.ok:
            continue
        s = Structure.from_dict(ev.relaxed_structure)
        res = hull.evaluate(s.composition, ev.energy_per_atom)
        c = candidates.get(cid)
        best.append({
            "id": cid, "formula": s.composition.reduced_formula,
            "generator": c.generator if c else "?", "round": c.round if c else -1,
            "energy_per_atom": ev.energy_per_atom,
            "formation_energy_per_atom": res.formation_energy_per_atom if res else None,
            "e_above_hull": res.e_above_hull if res else None,
            "e_above_reference_hull": res.e_above_reference_hull if res else None,
            "novel": cid not in known_after_relax,
            "hit": cid in hit_set,
            "dft_wall_s": ev.provenance.wall_s,
        })
    curve = [(r["e_above_hull"], r["novel"]) for r in best]  # ledger order = order of completion
    best.sort(key=lambda r: (r["e_above_hull"] is None, r["e_above_hull"] or 0.0,
                             r["formation_energy_per_atom"] or 0.0))
    threshold = state.hit_threshold

    attempts = state.attempt_counts()  # from the ledger alone: work folders may sit on other nodes
    clock = campaign_clock([(key, p["t"]) for key, _, p, _ in sessions], times)
    milestones = _milestones(state, hit_set, meta.get("withheld", []), hull, clock)

    slots = meta.get("dft_slots", 1)
    busy = sum(e.provenance.wall_s for e in dft.values() if not e.extra.get("reused"))
    unique = _unique_structures([e for e in cand_dft.values() if e.ok])
    return {
        "name": meta.get("name"),
        "running": running,
        "rounds": len(rounds),
        "candidates_proposed": sum(r["proposed"] for r in rounds),
        "candidates_valid": sum(r["valid"] for r in rounds),
        "candidates_novel": sum(r["novel"] for r in rounds),
        "mlip_relaxed": sum(1 for e in mlip if e.ok),
        "dft_submitted": n_submitted,
        "dft_completed": sum(1 for e in cand_dft.values() if e.ok),
        "dft_failed": sum(1 for e in cand_dft.values() if not e.ok),
        "dft_failures": _failure_classes(cand_dft.values()),
        "dft_references_completed": sum(1 for i in refs if i in dft and dft[i].ok),
        "dft_references_failed": sum(1 for i in refs if i in dft and not dft[i].ok),
        "dft_unique_structures": unique,
        **attempts,
        "hits": len(hit_set),
        **milestones,
        "hit_e_above_hull_ev": threshold,
        "best": best[:10],
        "curve": curve,
        "wall_s": wall,
        "dft_busy_fraction": busy / (slots * wall) if wall > 0 else 0.0,
        "dft_slots": slots,
    }


def _milestones(state: CampaignState, hit_set: set[str], withheld: list[dict], hull, clock) -> dict[str, Any]:
    """When the campaign found things: ``first_hit`` and one entry per rediscovered withheld phase
    (``rediscovered``), each with its DFT call number (every DFT result counts, references too, in
    the order they were recorded, retries included) and the campaign's running time then
    (`campaign_clock` at the worker's end time, s);
    ``withheld`` is how many phases were kept from it."""
    call = {ev.candidate_id: i for i, ev in enumerate(state.dft_attempts, 1)}  # the last attempt's number

    def when(cid: str) -> dict[str, Any]:
        ev = state.dft[cid]
        done = ev.provenance.started_at + ev.provenance.wall_s
        return {"id": cid, "formula": Structure.from_dict(ev.relaxed_structure).composition.reduced_formula,
                "dft_call": call[cid], "wall_s": clock(done)}

    first = min(hit_set, key=call.__getitem__, default=None)
    phases = [Structure.from_dict(w["structure"]) for w in withheld]
    found = withheld_found(state.candidate_dft(), phases, hull, state.hit_threshold)
    return {"first_hit": None if first is None else when(first),
            "withheld": len(withheld),
            "rediscovered": [{**when(cid), "prototype": withheld[i]["prototype"]}
                             for i, cid in sorted(found.items(), key=lambda kv: call[kv[1]])]}


def milestone_lines(status: dict[str, Any]) -> list[str]:
    """'first hit ...' and, when phases were withheld, 'rediscovered k of n withheld known phases ...'."""
    def at(event: dict) -> str:
        wall = "" if event["wall_s"] is None else f", {event['wall_s']:.0f} s"
        return f"DFT call {event['dft_call']}{wall}"

    first = status.get("first_hit")
    lines = [f"first hit: {first['formula']} at {at(first)}" if first else "first hit: none yet"]
    if status.get("withheld"):
        found = status["rediscovered"]
        lines.append(f"rediscovered {len(found)} of {status['withheld']} withheld known phases"
                     + "".join(f"; {r['formula']} ({r['prototype']}) at {at(r)}" for r in found))
    return lines


def _failure_classes(evals) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in evals:
        if not e.ok and e.failure is not None:
            out[e.failure.error_class] = out.get(e.failure.error_class, 0) + 1
    return out


def _unique_structures(evals: list[Evaluation]) -> int:
    """Distinct relaxed structures (pymatgen StructureMatcher within each formula)."""
    from discovery.structures import structure_matcher

    by_formula: dict[str, list[Structure]] = {}
    for e in evals:
        s = Structure.from_dict(e.relaxed_structure)
        by_formula.setdefault(s.composition.reduced_formula, []).append(s)
    matcher = structure_matcher()
    return sum(len(matcher.group_structures(group)) for group in by_formula.values())


def round_metrics(state: CampaignState, rnd: int, planned: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics logged when the DFT of round ``rnd`` is back.

    Args:
        state: what the campaign has computed.
        rnd: the round.
        planned: the ledger's ``round`` records (the funnel counts of every round planned so far).
    """
    hull = state.dft_hull()
    ids = [cid for cid, r in state.submitted.items() if r == rnd]
    done = [state.dft[i] for i in ids if i in state.dft]
    errors, z, best_ef, best_eh = [], [], None, None
    for cid, ev in state.candidate_dft().items():
        if not ev.ok:
            continue
        res = hull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
        if res is None:
            continue
        best_ef = res.formation_energy_per_atom if best_ef is None else min(best_ef, res.formation_energy_per_atom)
        best_eh = res.e_above_hull if best_eh is None else min(best_eh, res.e_above_hull)
        if cid in ids and cid in state.predicted:
            mean, std = state.predicted[cid]
            errors.append(abs(mean - res.e_above_reference_hull))
            z.append(abs(mean - res.e_above_reference_hull) / max(std, 1e-9))
    cand_dft = state.candidate_dft()
    metrics: dict[str, float] = {
        "candidates_proposed": sum(p["proposed"] for p in planned),
        "candidates_valid": sum(p["valid"] for p in planned),
        "candidates_novel": sum(p["novel"] for p in planned),
        "mlip_relaxed": sum(1 for i, e in state.mlip.items() if e.ok and i not in state.references),
        "dft_failed_total": sum(1 for e in cand_dft.values() if not e.ok),
        "dft_completed_round": sum(1 for e in done if e.ok),
        "dft_failed_round": sum(1 for e in done if not e.ok),
        "dft_completed_total": sum(1 for e in cand_dft.values() if e.ok),
        "hits": len(state.hits(hull)),
    }
    if best_ef is not None:
        metrics["best_formation_energy"] = best_ef
        metrics["best_e_above_hull"] = best_eh
    if errors:  # how well the model that ranked this round predicted what DFT then found
        model = state.scored_by.get(rnd, "surrogate").replace("-", "_")
        metrics[f"{model}_mae_new_dft"] = sum(errors) / len(errors)
        # calibration: the share of new DFT labels inside +-1 and +-2 predicted std
        metrics[f"{model}_within_1sigma"] = sum(v <= 1 for v in z) / len(z)
        metrics[f"{model}_within_2sigma"] = sum(v <= 2 for v in z) / len(z)
    return metrics


def write_artifacts(out_dir: Path, status: dict[str, Any]) -> list[Path]:
    """CIFs of every validated candidate and the discovery curve; returns the files written."""
    out_dir = Path(out_dir)
    ledger = SqliteLedger(out_dir / LEDGER_NAME, writer=False)
    try:
        meta = ledger.meta()
        evals = [e for e in ledger.evaluations()
                 if e.oracle_fingerprint == meta.get("dft_fingerprint") and e.ok]
    finally:
        ledger.close()
    cif_dir = out_dir / "cifs"
    cif_dir.mkdir(exist_ok=True)
    written = []
    for e in evals:
        s = Structure.from_dict(e.relaxed_structure)
        path = cif_dir / f"{s.composition.reduced_formula}_{e.candidate_id}.cif"
        if not path.exists():  # written atomically: a file that exists is whole
            write_text_atomic(path, s.to(fmt="cif"))
        written.append(path)
    written.append(plot_discovery_curve(out_dir, status))
    return written


def plot_discovery_curve(out_dir: Path, status: dict[str, Any]) -> Path:
    """Best e_above_hull and hits against the number of DFT calculations, in evaluation order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = status.get("curve", [])
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        xs = list(range(1, len(curve) + 1))
        best, hits, running, n = [], [], float("inf"), 0
        for e_hull, novel in curve:
            if e_hull is not None:
                running = min(running, e_hull)
                n += novel and e_hull <= status["hit_e_above_hull_ev"]
            best.append(running if running < float("inf") else float("nan"))
            hits.append(n)
        ax.plot(xs, best, "o-", label="best E above hull")
        ax.set_ylabel("best E above hull (eV/atom)")
        ax2 = ax.twinx()
        ax2.step(xs, hits, where="post", color="tab:orange", label="hits")
        ax2.set_ylabel("hits (novel, DFT-validated)")
    ax.set_xlabel("DFT calculations")
    ax.set_title(f"{status.get('name')}: discovery curve")
    fig.tight_layout()
    path = Path(out_dir) / "discovery_curve.png"
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def load_status_or_raise(out_dir: Path) -> dict[str, Any]:
    if not (Path(out_dir) / LEDGER_NAME).is_file():
        raise LedgerError(f"{out_dir}: no campaign here (no {LEDGER_NAME})")
    return campaign_status(out_dir)
