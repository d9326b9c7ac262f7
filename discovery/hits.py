"""The one definition of a hit, shared by the campaign (bandit, generator feedback, per-round
metrics) and the report (``discovery status``).

A hit is a DFT-validated candidate whose relaxed structure lies within ``threshold`` eV/atom of the
campaign hull *and* is new: not a relaxed reference and not what an earlier candidate relaxed into
(`rediscovered`, StructureMatcher with `discovery.structures.NOVELTY_MATCHER`). Generators propose
structures that are new before relaxation; DFT may relax one into a known phase. Such a result is
still data, but not a discovery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from discovery.records import Evaluation
from discovery.thermo import Hull


def rediscovered(results: Mapping[str, Evaluation], references: Sequence[Evaluation]) -> set[str]:
    """Ids of results whose relaxed structure matches a reference or an earlier validated result
    (``results`` in ledger order)."""
    from pymatgen.core import Structure

    from discovery.structures import structure_matcher

    matcher = structure_matcher()
    seen: dict[str, list[Structure]] = {}
    for ev in references:
        s = Structure.from_dict(ev.relaxed_structure)
        seen.setdefault(s.composition.reduced_formula, []).append(s)
    repeated = set()
    for cid, ev in results.items():
        if not ev.ok:
            continue
        s = Structure.from_dict(ev.relaxed_structure)
        group = seen.setdefault(s.composition.reduced_formula, [])
        if any(matcher.fit(s, other) for other in group):
            repeated.add(cid)
        else:
            group.append(s)
    return repeated


def matching(structure, pool) -> int | None:
    """Index of the first structure in ``pool`` that ``structure`` matches (same reduced formula,
    `discovery.structures.structure_matcher`), or None."""
    from discovery.structures import structure_matcher

    matcher = structure_matcher()
    formula = structure.composition.reduced_formula
    for i, other in enumerate(pool):
        if other.composition.reduced_formula == formula and matcher.fit(structure, other):
            return i
    return None


def withheld_found(results: Mapping[str, Evaluation], withheld: Sequence, hull: Hull,
                   threshold: float) -> dict[int, str]:
    """Withheld phase index -> the first result (``results`` in ledger order) that matches it and
    lies within ``threshold`` eV/atom of ``hull``: the phases the campaign rediscovered."""
    from pymatgen.core import Structure

    found: dict[int, str] = {}
    for cid, ev in results.items():
        e = e_above_hull(ev, hull)
        if e is None or e > threshold:
            continue
        i = matching(Structure.from_dict(ev.relaxed_structure), withheld)
        if i is not None and i not in found:
            found[i] = cid
    return found


def e_above_hull(ev: Evaluation, hull: Hull) -> float | None:
    """The relaxed structure's energy above ``hull`` (eV/atom), or None (failed, or off the hull's
    chemical system)."""
    if not ev.ok:
        return None
    from pymatgen.core import Structure

    res = hull.evaluate(Structure.from_dict(ev.relaxed_structure).composition, ev.energy_per_atom)
    return None if res is None else res.e_above_hull


def hit_ids(results: Mapping[str, Evaluation], references: Sequence[Evaluation], hull: Hull,
            threshold: float, repeated: set[str] | None = None) -> set[str]:
    """The hits among ``results`` (candidate id -> DFT evaluation, references excluded).

    ``repeated``: `rediscovered` of the same results, when the caller has it already.
    """
    if repeated is None:
        repeated = rediscovered(results, references)
    out = set()
    for cid, ev in results.items():
        if cid in repeated:
            continue
        e = e_above_hull(ev, hull)
        if e is not None and e <= threshold:
            out.add(cid)
    return out
