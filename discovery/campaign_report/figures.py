"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes, so the page can
embed them and needs no files beside it.

Every function takes plain data from `discovery.campaign_report.data` and returns ``None`` where
there is nothing to draw yet (a campaign that has just started).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from discovery.campaign_report.data import (
    CurvePoint,
    MlipPair,
    ParityPoint,
    Result,
    random_order_expectation,
)

DPI = 100
HIT_STYLE = {"marker": "*", "s": 260, "color": "gold", "edgecolors": "black", "linewidths": 0.8, "zorder": 6}
REDISCOVERED_STYLE = {"marker": "o", "s": 420, "facecolors": "none", "edgecolors": "tab:red", "linewidths": 2.0,
                      "zorder": 7}
REFERENCE_STYLE = {"marker": "D", "s": 90, "facecolors": "none", "edgecolors": "tab:blue", "linewidths": 1.8,
                   "zorder": 5}
#: Unstable results further above the hull than this are left out of the hull diagram, eV/atom.
HULL_WINDOW_EV = 0.5
#: The composition plot shows at most this many compositions (those closest to the hull).
MAX_COMPOSITIONS = 60


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; the report is written by a driver or a CLI
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- hull


def _entries(results: Sequence[Result]):
    from pymatgen.analysis.phase_diagram import PDEntry

    entries = []
    for r in results:
        comp = r.structure.composition
        entries.append((PDEntry(comp, r.energy_per_atom * comp.num_atoms, name=r.formula), r))
    return entries


def hull_figures(results: Sequence[Result], elements: Sequence[str]) -> tuple[list[tuple[str, bytes]], str]:
    """The convex hull of the campaign's chemical system from its DFT energies.

    Up to four elements: pymatgen's phase diagram (PDPlotter, matplotlib backend) with the
    references and hits marked. More elements: formation energy against the hull per composition,
    plus the hulls of the (at most ternary) subsystems that hold the best candidates.

    Returns:
        ``(caption, png)`` pairs, and a note (empty, or why there is no hull yet).
    """
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    entries = _entries(results)
    if not entries:
        return [], "no DFT result yet"
    try:
        diagram = PhaseDiagram([e for e, _ in entries])
    except ValueError as exc:  # an element's reference has not been computed yet
        return [], f"no hull yet: {exc}"
    system = "-".join(elements)
    if 2 <= len(diagram.elements) <= 4:
        return [(f"{system}: convex hull of the DFT energies", _phase_diagram(diagram, entries))], ""
    figures = [(f"{system}: formation energy per composition against the campaign hull",
                _composition_plot(diagram, entries))]
    for subsystem in _best_subsystems(results, 3):
        sub = [(e, r) for e, r in entries if {el.symbol for el in e.composition.elements} <= set(subsystem)]
        try:
            sub_diagram = PhaseDiagram([e for e, _ in sub])
        except ValueError:
            continue
        figures.append((f"{'-'.join(subsystem)}: convex hull of the subsystem", _phase_diagram(sub_diagram, sub)))
    return figures, ""


def _best_subsystems(results: Sequence[Result], n: int) -> list[tuple[str, ...]]:
    """Chemical systems (2 or 3 elements) of the candidates closest to the hull, hits first."""
    ranked = sorted((r for r in results if not r.reference and r.e_above_hull is not None),
                    key=lambda r: (not r.hit, r.e_above_hull))
    out: list[tuple[str, ...]] = []
    for r in ranked:
        system = tuple(sorted(el.symbol for el in r.structure.composition.elements))
        if 2 <= len(system) <= 3 and system not in out:
            out.append(system)
        if len(out) == n:
            break
    return out


def _phase_diagram(diagram, entries) -> bytes:
    from pymatgen.analysis.phase_diagram import PDPlotter

    plt = _pyplot()
    dim = len(diagram.elements)
    fig = plt.figure(figsize=(8, 6))
    ax = fig.add_subplot(111, projection="3d") if dim == 4 else fig.add_subplot(111)
    plotter = PDPlotter(diagram, show_unstable=HULL_WINDOW_EV, backend="matplotlib")
    plotter.get_plot(ax=ax, label_unstable=False)
    if dim == 3:  # equal aspect with both limits fixed: let the box adapt (matplotlib warns otherwise)
        ax.set_adjustable("box")
    for text in [*ax.texts, *fig.texts]:  # pymatgen's defaults are poster-sized
        text.set_fontsize(10)
    if dim == 2:
        ax.xaxis.label.set_size(11)
        ax.yaxis.label.set_size(11)
        ax.set_xlabel(f"fraction of {diagram.elements[1].symbol}")
    _, stable, unstable = plotter.pd_plot_data
    where = {id(entry): coords for coords, entry in stable.items()}
    where.update({id(entry): coords for entry, coords in unstable.items()})
    marks: dict[str, list] = {"hit": [], "reference": [], "rediscovered": []}
    for entry, r in entries:
        coords = where.get(id(entry))
        if coords is None or (r.e_above_hull or 0.0) > HULL_WINDOW_EV:
            continue
        if r.rediscovered:
            marks["rediscovered"].append(tuple(coords))
        if r.hit:
            marks["hit"].append(tuple(coords))
        elif r.reference and len(entry.composition.elements) > 1:
            marks["reference"].append(tuple(coords))
    for kind, style, label in (("reference", REFERENCE_STYLE, "reference phase"), ("hit", HIT_STYLE, "hit"),
                               ("rediscovered", REDISCOVERED_STYLE, "rediscovered withheld phase")):
        if marks[kind]:
            ax.scatter(*zip(*marks[kind], strict=True), label=label, **style)
    handles, labels = ax.get_legend_handles_labels()
    if dim < 4:  # name pymatgen's own markers too
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], marker="o", ls="", color="tab:green", markeredgecolor="k"),
                    Line2D([], [], marker="s", ls="", color="r", markeredgecolor="k")]
        labels += ["on the hull", f"above the hull (< {HULL_WINDOW_EV} eV/atom)"]
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    fig.set_size_inches(8, 6)
    return _png(fig)


def _composition_plot(diagram, entries) -> bytes:
    from pymatgen.analysis.phase_diagram import PDEntry

    plt = _pyplot()
    by_formula: dict[str, list[Result]] = {}
    for _, r in entries:
        if len(r.structure.composition.elements) > 1 and r.formation_energy is not None:
            by_formula.setdefault(r.formula, []).append(r)
    closest = sorted(by_formula, key=lambda f: min(r.e_above_hull or 0.0 for r in by_formula[f]))[:MAX_COMPOSITIONS]
    formulas = sorted(closest, key=lambda f: (len(by_formula[f][0].structure.composition.elements), f))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(formulas) + 2), 4.8))
    xs, ys, cs, hits, refs, found = [], [], [], [], [], []
    for i, f in enumerate(formulas):
        comp = by_formula[f][0].structure.composition.reduced_composition
        e_hull = diagram.get_hull_energy_per_atom(comp)
        ef_hull = diagram.get_form_energy_per_atom(PDEntry(comp, e_hull * comp.num_atoms))
        ax.plot([i - 0.35, i + 0.35], [ef_hull, ef_hull], color="black", lw=2, zorder=2,
                label="campaign hull" if i == 0 else None)
        for r in by_formula[f]:
            (refs if r.reference else hits if r.hit else xs).append((i, r.formation_energy))
            if r.rediscovered:
                found.append((i, r.formation_energy))
            if not r.reference and not r.hit:
                cs.append(r.e_above_hull or 0.0)
    if xs:
        sc = ax.scatter([p[0] for p in xs], [p[1] for p in xs], c=cs, cmap="viridis_r", s=30, zorder=3,
                        vmin=0.0, vmax=max(0.2, max(cs)), label="candidate")
        fig.colorbar(sc, ax=ax, label="E above hull (eV/atom)")
    if refs:
        ax.scatter(*zip(*refs, strict=True), label="reference phase", **REFERENCE_STYLE)
    if hits:
        ax.scatter(*zip(*hits, strict=True), label="hit", **HIT_STYLE)
    if found:
        ax.scatter(*zip(*found, strict=True), label="rediscovered withheld phase", **REDISCOVERED_STYLE)
    ys = [p[1] for p in [*xs, *refs, *hits]]
    ax.set_xticks(range(len(formulas)), formulas, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("formation energy (eV/atom)")
    if ys:
        ax.set_ylim(min(ys) - 0.1, max(ys) + 0.1)
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


# ------------------------------------------------------------------------------------- discovery


def discovery_curves(curve: Sequence[CurvePoint], values: Sequence[float | None], hit_flags: Sequence[bool],
                     threshold: float) -> bytes | None:
    """Hits and best E above hull against DFT calls and against the campaign's wall time, with
    what the same results would give in a random order (expectation).

    Args:
        curve: the campaign after each candidate DFT result, in arrival order.
        values, hit_flags: each call's E above hull (None: failed) and whether it is a hit, in
            the same order (for the random-order expectation).
        threshold: the hit bound, eV/atom.
    """
    if not curve:
        return None
    plt = _pyplot()
    exp_hits, exp_best = random_order_expectation(list(values), list(hit_flags))
    wall = [p.wall_s for p in curve]
    scale, unit = (3600.0, "h") if wall[-1] > 3 * 3600 else (60.0, "min")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, xs, label in ((axes[0], [p.calls for p in curve], "candidate DFT calls"),
                          (axes[1], [w / scale for w in wall], f"campaign wall time ({unit})")):
        best = [math.nan if p.best_e_above_hull is None else p.best_e_above_hull for p in curve]
        ax.step(xs, best, where="post", color="tab:blue", label="best E above hull")
        ax.plot(xs, [math.nan if v is None else v for v in exp_best], ls="--", color="tab:blue", alpha=0.6,
                label="best, random order")
        ax.axhline(threshold, ls=":", color="grey", label=f"hit bound {threshold:g} eV/atom")
        ax.set_xlabel(label)
        ax.set_ylabel("best E above hull (eV/atom)", color="tab:blue")
        twin = ax.twinx()
        twin.step(xs, [p.hits for p in curve], where="post", color="tab:orange", label="hits")
        twin.plot(xs, exp_hits, ls="--", color="tab:orange", alpha=0.6, label="hits, random order")
        twin.set_ylabel("hits", color="tab:orange")
        twin.set_ylim(0, max(1, max(p.hits for p in curve)) * 1.15)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------- surrogates

MODEL_MARKERS = {"surrogate": "o", "mlip-prior": "^", "uninformed": "s"}


def surrogate_parity(points: Sequence[ParityPoint], threshold: float) -> bytes | None:
    """Predicted E above the references' hull (mean +- std) against DFT, coloured by round."""
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    rounds = sorted({p.round for p in points})
    cmap = plt.get_cmap("viridis", max(2, len(rounds)))
    for k, rnd in enumerate(rounds):
        for model in sorted({p.model for p in points if p.round == rnd}):
            pts = [p for p in points if p.round == rnd and p.model == model]
            ax.errorbar([p.dft for p in pts], [p.mean for p in pts], yerr=[p.std for p in pts],
                        fmt=MODEL_MARKERS.get(model, "o"), color=cmap(k), ms=6, capsize=2, alpha=0.85,
                        label=f"round {rnd} ({model})")
    lo = min(min(p.dft for p in points), min(p.mean - p.std for p in points))
    hi = max(max(p.dft for p in points), max(p.mean + p.std for p in points))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8)
    ax.axvline(threshold, ls=":", color="grey")
    ax.axhline(threshold, ls=":", color="grey")
    ax.set_xlabel("DFT E above reference hull (eV/atom)")
    ax.set_ylabel("predicted when selected (eV/atom)")
    ax.legend(fontsize=7, ncol=1 + len(rounds) // 8, loc="best")
    fig.tight_layout()
    return _png(fig)


def calibration_figure(table: dict[str, dict[str, Any]]) -> bytes | None:
    """Share of DFT values within 1 and 2 predicted std, per round, against the Gaussian 68/95 %."""
    if not table:
        return None
    plt = _pyplot()
    keys = list(table)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(keys) + 2.5), 3.6))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [table[k]["within_1sigma"] for k in keys], width=0.4, label="within 1 std")
    ax.bar([x + 0.2 for x in xs], [table[k]["within_2sigma"] for k in keys], width=0.4, label="within 2 std")
    ax.axhline(0.683, ls="--", color="tab:blue", lw=0.8)
    ax.axhline(0.954, ls="--", color="tab:orange", lw=0.8)
    ax.set_xticks(list(xs), [f"round {k}" if k != "all" else "all" for k in keys], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of DFT results")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _png(fig)


def mlip_parity(pairs: Sequence[MlipPair]) -> bytes | None:
    """CHGNet against DFT formation energies (each on its own references): the cheap fidelity's
    bias and noise."""
    if not pairs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for ref, style, label in ((False, {"marker": "o", "color": "tab:green"}, "candidate"),
                              (True, {"marker": "s", "color": "tab:blue"}, "reference phase")):
        pts = [p for p in pairs if p.reference == ref]
        if pts:
            ax.scatter([p.dft for p in pts], [p.mlip for p in pts], s=28, alpha=0.85, label=label, **style)
    lo = min(min(p.dft for p in pairs), min(p.mlip for p in pairs))
    hi = max(max(p.dft for p in pairs), max(p.mlip for p in pairs))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8)
    ax.set_xlabel("DFT formation energy (eV/atom)")
    ax.set_ylabel("CHGNet formation energy (eV/atom)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------------- structures


def structure_picture(structure) -> bytes:
    """A small picture of the cell: atoms in jmol colours at 0.45 of their covalent radii, drawn
    back to front, and the cell edges, seen along ASE's ``10x,-20y,0z`` view.

    A plain projection rather than ``ase.visualize.plot.plot_atoms``: ASE dashes the cell edges
    into hundreds of patches, ten times slower, and the report draws one picture per structure.
    """
    import numpy as np
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors
    from ase.utils import rotate
    from matplotlib.patches import Circle

    plt = _pyplot()
    rot = rotate("10x,-20y,0z")
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    corners = corners @ structure.lattice.matrix @ rot
    positions = structure.lattice.get_cartesian_coords(structure.frac_coords % 1.0) @ rot  # atoms inside the cell
    numbers = structure.atomic_numbers
    radii = 0.45 * covalent_radii[list(numbers)]
    fig = plt.figure(figsize=(1.4, 1.4))
    ax = fig.add_axes((0, 0, 1, 1))
    for a in range(8):
        for b in range(a + 1, 8):
            if (a ^ b).bit_count() == 1:  # corners differing in one lattice vector: an edge
                ax.plot(corners[[a, b], 0], corners[[a, b], 1], color="0.45", lw=0.7, zorder=0)
    for k, i in enumerate(np.argsort(positions[:, 2])):  # larger z is nearer the viewer
        ax.add_patch(Circle(positions[i, :2], radii[i], facecolor=jmol_colors[numbers[i]], edgecolor="black",
                            lw=0.6, zorder=1 + k))
    points = np.vstack([corners[:, :2], positions[:, :2] - radii[:, None], positions[:, :2] + radii[:, None]])
    lo, hi = points.min(axis=0), points.max(axis=0)
    half = 0.52 * float((hi - lo).max())
    mid = (lo + hi) / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_aspect("equal")
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, transparent=True)
    plt.close(fig)
    return buf.getvalue()
