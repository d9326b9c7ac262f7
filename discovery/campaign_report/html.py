"""One self-contained ``report.html`` per campaign: inline CSS, figures as base64 data URIs, no
script and no external address, so it opens anywhere without a network (and can be mailed or
logged to MLflow as one file). Links to the campaign's CIFs are relative to the report."""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from discovery.campaign_report import figures
from discovery.campaign_report.data import (
    ReportData,
    Result,
    calibration,
    load_report_data,
)
from discovery.errors import ConfigError
from discovery.fileio import write_text_atomic
from discovery.report import milestone_lines

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
#: Candidates shown in the structures table; hits beyond them are added up to MAX_STRUCTURES rows.
TOP_STRUCTURES = 15
MAX_STRUCTURES = 40
#: The sections of the page: (anchor, title), in order.
SECTIONS = (("summary", "Summary"), ("hull", "Convex hull"), ("discovery", "Discovery curves"),
            ("surrogate", "Surrogate parity and calibration"), ("mlip", "CHGNet against DFT"),
            ("generators", "Generators per round"), ("structures", "Top structures"),
            ("failures", "DFT failures"), ("settings", "Settings and campaign file"))

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:0 1.2em 3em;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin:.8em 0 .2em}h2{font-size:1.25em;border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}
nav{font-size:.9em;margin:.6em 0 1em}nav a{margin-right:1em;color:#2456a6;text-decoration:none}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:right;vertical-align:middle}th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.hit td{background:#fff6cc}tr.total td{background:#f7f7f7;font-weight:600}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{color:#666;font-size:.9em}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.8em;overflow:auto;font-size:.8em;max-height:40em}
code{font-size:.9em}.cell img{width:96px;height:auto;border:none}.small{font-size:.8em;color:#555}
.tag{display:inline-block;padding:0 .4em;border-radius:.3em;background:#ffe38a;font-size:.8em}
"""


def write_report(out_dir: str | Path, out_file: str | Path | None = None) -> Path:
    """Render the campaign in ``out_dir`` to ``out_file`` (default ``out_dir/report.html``).

    The file is replaced atomically, so a report re-rendered while a campaign runs is never seen
    half-written.

    Raises:
        LedgerError: ``out_dir`` holds no campaign.
        ConfigError: ``out_file`` cannot be written (a folder, no permission, a full disk).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_file = Path(out_file) if out_file is not None else out_dir / REPORT_NAME
    if out_file.is_dir():
        raise ConfigError(f"--out {out_file}: is a folder; give a file name")
    data = load_report_data(out_dir)
    page = render(data, out_file.parent, started)
    try:
        write_text_atomic(out_file, page)
    except OSError as exc:
        raise ConfigError(f"{out_file}: cannot write the report ({exc.strerror or exc})") from None
    return out_file


def try_write_report(out_dir: str | Path, tracker: Any = None) -> Path | None:
    """`write_report` at the end of a run: a report that fails to render is a warning, never a
    failed campaign. Logged to ``tracker`` (MLflow) when one is given."""
    try:
        path = write_report(out_dir)
    except Exception as exc:  # noqa: BLE001 - the campaign's results are in the ledger either way
        log.warning("campaign report not written: %s: %s", type(exc).__name__, exc)
        return None
    if tracker is not None:
        try:
            tracker.log_artifact(path)
        except Exception as exc:  # noqa: BLE001 - same: the report is on disk
            log.warning("campaign report not logged to the tracker: %s: %s", type(exc).__name__, exc)
    return path


# ------------------------------------------------------------------------------------ rendering


def render(data: ReportData, base: Path, started: float | None = None) -> str:
    """The page; ``base`` is the folder the page will live in (CIF links are relative to it)."""
    started = time.perf_counter() if started is None else started
    status = data.status
    name = status.get("name") or data.meta.get("name") or data.out_dir.name
    body = [
        f"<h1>{_e(name)}: campaign report</h1>",
        (f'<p class="note">{_e(data.out_dir.resolve())} &middot; '
         f'{"running" if status.get("running") else "not running"} &middot; '
         f"written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"),
        "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in SECTIONS) + "</nav>",
        _summary(data), _hull(data), _discovery(data), _surrogate(data), _mlip(data), _generators(data),
        _structures(data, base), _failures(data), _settings(data),
    ]
    body.append(f'<p class="note">rendered in {time.perf_counter() - started:.1f} s from the ledger of '
                f"{_e(data.out_dir.name)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(name)}: campaign report</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(anchor: str, *parts: str) -> str:
    title = dict(SECTIONS)[anchor]
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def _figure(png: bytes | None, caption: str, alt: str) -> str:
    if png is None:
        return ""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure><img src="{src}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: Iterable[int] = (0,),
           row_classes: Sequence[str] | None = None) -> str:
    """A table; cells are escaped unless they are already markup (`Markup`)."""
    left = set(left)
    head = "".join(f'<th{" class=l" if i in left else ""}>{_e(h)}</th>' for i, h in enumerate(header))
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>" if any(header) else "<table><tbody>"]
    for k, row in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        cells = "".join(f'<td{" class=l" if i in left else ""}>{c if isinstance(c, Markup) else _e(c)}</td>'
                        for i, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Markup(str):
    """Already-escaped HTML for a table cell."""


def _f(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _n(x: Any) -> str:
    return "n/a" if x is None else str(x)


# ---------------------------------------------------------------------------------- sections


def _summary(data: ReportData) -> str:
    s = data.status
    best = min((r.e_above_hull for r in data.candidates if r.e_above_hull is not None), default=None)
    rows = [
        ("rounds planned", s["rounds"]),
        ("candidates proposed / valid / novel",
         f"{s['candidates_proposed']} / {s['candidates_valid']} / {s['candidates_novel']}"),
        ("CHGNet relaxations (candidates)", s["mlip_relaxed"]),
        ("DFT: candidates ok / failed", f"{s['dft_completed']} / {s['dft_failed']}"),
        ("DFT: references ok / failed", f"{s['dft_references_completed']} / {s['dft_references_failed']}"),
        ("DFT attempts (retries included)", s.get("dft_attempts", "n/a")),
        ("hits", f"{s['hits']} (novel, E above hull <= {data.hit_threshold:g} eV/atom)"),
        ("best E above hull of a candidate", _f(best) + " eV/atom" if best is not None else "n/a"),
        *((line.split(": ", 1) if line.startswith("first hit") else ("validation", line))
          for line in milestone_lines(s)),
        ("wall time", f"{s['wall_s'] / 60:.1f} min"),
        ("DFT slots busy", f"{100 * s['dft_busy_fraction']:.0f} % of {s['dft_slots']} slot(s)"),
    ]
    return _section("summary", _table(("", ""), rows),
                    '<p class="note">A <b>hit</b> is a DFT-validated candidate whose relaxed structure lies '
                    f"within {data.hit_threshold:g} eV/atom of the campaign hull and is new: not a relaxed "
                    "reference and not what an earlier result relaxed into (StructureMatcher).</p>")


def _hull(data: ReportData) -> str:
    figs, note = figures.hull_figures(data.results, data.elements)
    parts = [_figure(png, caption, f"convex hull: {caption}") for caption, png in figs]
    refs = sorted({r.formula for r in data.results if r.reference})
    parts.append(f'<p class="note">References: {_e(", ".join(refs) or "none yet")}. Stars mark hits, open '
                 "diamonds the reference phases; in the phase diagrams circles are on the hull and squares "
                 f"above it (those more than {figures.HULL_WINDOW_EV} eV/atom above are left out).</p>")
    if note:
        parts.append(f'<p class="note">{_e(note)}</p>')
    return _section("hull", *parts)


def _discovery(data: ReportData) -> str:
    png = figures.discovery_curves(data.curve, [p.e_above_hull for p in data.curve], [p.hit for p in data.curve],
                                   data.hit_threshold)
    if png is None:
        return _section("discovery", '<p class="note">No candidate DFT result yet.</p>')
    return _section("discovery", _figure(
        png, "Best E above the final campaign hull and hits after each candidate DFT result (failures count "
             "as calls; references are not counted), against calls and against the campaign's wall time "
             "(pauses between a stop and a resume left out). Dashed: the same results in a random order "
             "(expectation).", "discovery curves"))


def _surrogate(data: ReportData) -> str:
    # a seeded random order (no surrogate, no MLIP yet) predicts nothing: left out, but counted
    points = [p for p in data.parity if p.model != "uninformed"]
    uninformed = len(data.parity) - len(points)
    table = calibration(points)
    parts = [_figure(figures.surrogate_parity(points, data.hit_threshold),
                     "What ranked each selected candidate (the surrogate's mean +- std, or the CHGNet prior "
                     "before the surrogate trains) against DFT's E above the references' hull; dotted: the "
                     "hit bound.", "surrogate parity")]
    if uninformed:
        parts.append(f'<p class="note">{uninformed} selected candidate(s) with a DFT result were taken in a '
                     "seeded random order (no surrogate or MLIP prior yet) and are left out.</p>")
    if table:
        parts.append(_figure(figures.calibration_figure(table),
                             "Calibration: share of DFT results within 1 and 2 predicted std (dashed: 68 % and "
                             "95 %, what a calibrated Gaussian gives).", "calibration"))
        parts.append(_table(("round", "ranked by", "n", "within 1 std", "within 2 std", "MAE (eV/atom)"),
                            [(k, v["model"], v["n"], f"{100 * v['within_1sigma']:.0f} %",
                              f"{100 * v['within_2sigma']:.0f} %", f"{v['mae']:.3f}") for k, v in table.items()],
                            left=(0, 1)))
    else:
        parts.append('<p class="note">No selected candidate has a DFT result yet.</p>')
    if data.fits:
        parts.append("<p>Surrogate fits (the model that ranks the next round):</p>")
        parts.append(_table(("round", "labels (train / val)", "val MAE", "train MAE", "std scale", "wall (s)"),
                            [(f["round"], f"{f.get('n_train')} / {f.get('n_val')}", _f(f.get("val_mae"), "{:.3f}"),
                              _f(f.get("train_mae"), "{:.3f}"), _f(f.get("variance_scale"), "{:.2f}"),
                              _f(f.get("wall_s"), "{:.1f}")) for f in data.fits]))
    return _section("surrogate", *parts)


def _mlip(data: ReportData) -> str:
    pairs = data.mlip_pairs
    if not pairs:
        return _section("mlip", '<p class="note">No structure was relaxed by both CHGNet and DFT '
                                "(the MLIP screen is off, or no result is back yet).</p>")
    diff = [p.mlip - p.dft for p in pairs]
    bias = sum(diff) / len(diff)
    spread = (sum((d - bias) ** 2 for d in diff) / len(diff)) ** 0.5
    mae = sum(abs(d) for d in diff) / len(diff)
    return _section("mlip", _figure(figures.mlip_parity(pairs),
                                    "CHGNet against DFT formation energies, each against its own elemental "
                                    "references (the two fidelities never share a hull).", "CHGNet parity"),
                    _table(("structures", "bias CHGNet - DFT", "std of the difference", "MAE"),
                           [(len(pairs), f"{bias:+.3f} eV/atom", f"{spread:.3f} eV/atom", f"{mae:.3f} eV/atom")]))


def _generators(data: ReportData) -> str:
    rows, classes = [], []
    by_round: dict[int, list] = {}
    for g in data.generator_rounds:
        by_round.setdefault(g.round, []).append(g)
    totals = {rec["round"]: rec for rec in data.rounds}
    for rnd in sorted(set(by_round) | set(totals)):
        for g in by_round.get(rnd, []):
            rows.append((rnd, g.generator, _n(g.proposed), _n(g.valid), g.novel, g.mlip_relaxed, _n(g.mlip_passed),
                         g.selected, g.dft_ok, g.hits,
                         "n/a" if g.bandit_weight is None else f"{g.bandit_weight:.2f}"))
            classes.append("hit" if g.hits else "")
        t = totals.get(rnd)
        if t is not None:
            rows.append((rnd, f"all ({t.get('scored_by') or '?'})", t.get("proposed"), t.get("valid"), t.get("novel"),
                         t.get("mlip_relaxed"), t.get("mlip_passed"), t.get("selected"),
                         sum(g.dft_ok for g in by_round.get(rnd, [])), sum(g.hits for g in by_round.get(rnd, [])), ""))
            classes.append("total")
    if not rows:
        return _section("generators", '<p class="note">No round planned yet.</p>')
    return _section("generators", _table(
        ("round", "generator", "proposed", "valid", "novel", "CHGNet relaxed", "CHGNet passed", "selected",
         "DFT ok", "DFT hits", "bandit weight"), rows, left=(1,), row_classes=classes),
        '<p class="note">Novel: passed validity, de-duplication and novelty and entered the ledger. CHGNet '
        "passed: relaxed into something new and close enough to the CHGNet hull to be selectable. The total "
        "row is the round's own record (with what ranked its pool). n/a: not counted (no CHGNet screen, or a "
        "ledger written by a version that kept only round totals).</p>")


def _space_group(structure) -> str:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from discovery.structures import quiet_spglib

    try:
        with quiet_spglib():
            sga = SpacegroupAnalyzer(structure, symprec=0.1)
            return f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"
    except Exception:  # noqa: BLE001 - spglib gives up on some distorted cells
        return "n/a"


def _lineage(r: Result) -> Markup:
    conditions = {k: v for k, v in r.conditions.items() if k != "round"}
    parts = [f"<b>{_e(r.generator)}</b> v{_e(r.generator_version)}, round {r.round}"]
    if conditions:
        parts.append(f'<span class="small">{_e(json.dumps(conditions, default=str, sort_keys=True))}</span>')
    if r.parent_ids:
        parts.append(f'<span class="small">parents: {_e(", ".join(r.parent_ids))}</span>')
    return Markup("<br>".join(parts))


def _cif_link(r: Result, base: Path) -> Markup:
    if r.cif is None:
        return Markup('<span class="small">not written yet</span>')
    rel = Path(os.path.relpath(r.cif.resolve(), base.resolve())).as_posix()
    return Markup(f'<a href="{_e(quote(rel))}">{_e(r.cif.name)}</a>')


def top_structures(data: ReportData, n: int = TOP_STRUCTURES, most: int = MAX_STRUCTURES) -> list[Result]:
    """The ``n`` candidates closest to the hull, then the next hits, ``most`` rows in all."""
    ranked = sorted(data.candidates, key=lambda r: (r.e_above_hull is None, r.e_above_hull or 0.0,
                                                     r.formation_energy or 0.0))
    return (ranked[:n] + [r for r in ranked[n:] if r.hit])[:most]


def _structures(data: ReportData, base: Path) -> str:
    top = top_structures(data)
    if not top:
        return _section("structures", '<p class="note">No candidate DFT result yet.</p>')
    rows, classes = [], []
    for i, r in enumerate(top, 1):
        png = figures.structure_picture(r.structure)
        picture = Markup(f'<span class="cell"><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                         f'alt="cell of {_e(r.formula)}"></span>')
        flag = Markup('<span class="tag">hit</span>') if r.hit else ("novel" if r.novel else "known")
        rows.append((i, picture, Markup(f"<b>{_e(r.formula)}</b><br><span class=small>{_e(r.id)}</span>"),
                     _f(r.formation_energy), _f(r.e_above_hull), _f(r.e_above_reference_hull),
                     _space_group(r.structure), len(r.structure), flag, _lineage(r), _cif_link(r, base)))
        classes.append("hit" if r.hit else "")
    return _section("structures", _table(
        ("#", "cell", "formula", "E_f (eV/atom)", "E above hull", "vs references", "space group", "atoms", "",
         "lineage (generator, version, round, conditions, parents)", "CIF"),
        rows, left=(1, 2, 8, 9, 10), row_classes=classes),
        f'<p class="note">The {TOP_STRUCTURES} candidates closest to the campaign hull, then the other hits '
        f"({sum(r.hit for r in top)} of {len(data.hits)} hits shown, at most {MAX_STRUCTURES} rows); relaxed DFT "
        "structures. "
        "'vs references' below 0: below the hull of the reference phases alone. Space groups at symprec "
        "0.1 A.</p>")


def _failures(data: ReportData) -> str:
    if not data.failures:
        return _section("failures", '<p class="note">No DFT calculation failed.</p>')
    rows = [(f.error_class, f.count, "yes" if f.retryable else "no",
             Markup("<br>".join(f"<b>{_e(formula)}</b>: {_e(msg[:300])}" for formula, msg in f.examples)))
            for f in data.failures]
    return _section("failures", _table(("error class", "attempts", "retryable", "examples"), rows, left=(0, 3)),
                    '<p class="note">Every failed attempt, references and retries included; failures are data '
                    "(ledger records), not crashes.</p>")


def _settings(data: ReportData) -> str:
    parts = [_table(("setting", "value"), sorted(data.fingerprints.items()), left=(0, 1))]
    if data.campaign_yaml is not None:
        parts.append("<p>The campaign file stored with the campaign (<code>campaign.yaml</code>):</p>")
        parts.append(f"<pre>{_e(data.campaign_yaml)}</pre>")
    else:
        parts.append('<p class="note">No campaign.yaml in the campaign folder.</p>')
    return _section("settings", *parts)
