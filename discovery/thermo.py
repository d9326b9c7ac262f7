"""Formation energies and energies above the hull, one fidelity at a time.

A `Hull` is built from evaluations of a single fidelity and oracle fingerprint: the elemental
references, the campaign's reference phases and every validated candidate. Mixing fidelities is
refused, because CHGNet and GPAW energies have different zeros.

Units: eV/atom throughout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure

from discovery.records import Evaluation


@dataclass(frozen=True)
class ThermoResult:
    formation_energy_per_atom: float
    e_above_hull: float
    """Energy above the hull of references plus all validated candidates (>= 0)."""
    e_above_reference_hull: float
    """Energy above the hull of the references alone; negative means a new stable phase."""


def _composition(evaluation: Evaluation) -> Composition:
    return Structure.from_dict(evaluation.relaxed_structure).composition


class Hull:
    """Convex hull of one fidelity.

    Args:
        references: ok evaluations of elemental references and reference phases.
        others: ok evaluations of validated candidates (they shape the campaign hull).
    """

    def __init__(self, references: Iterable[Evaluation], others: Iterable[Evaluation] = ()):
        references = [e for e in references if e.ok]
        others = [e for e in others if e.ok]
        fids = {(e.fidelity, e.oracle_fingerprint) for e in [*references, *others]}
        if len(fids) > 1:
            raise ValueError(f"a hull needs one fidelity and oracle, got {sorted(fids)}")
        self._ref_entries = [self._entry(e) for e in references]
        self._all_entries = self._ref_entries + [self._entry(e) for e in others]
        self.elements = sorted({el.symbol for e in self._ref_entries for el in e.composition.elements
                                if len(e.composition.elements) == 1})
        self._ref_pd = self._diagram(self._ref_entries)
        self._pd = self._diagram(self._all_entries)

    @staticmethod
    def _entry(e: Evaluation) -> PDEntry:
        comp = _composition(e)
        return PDEntry(comp, e.energy_per_atom * comp.num_atoms, name=e.candidate_id)

    def _diagram(self, entries: list[PDEntry]) -> PhaseDiagram | None:
        if not self.elements:
            return None
        try:
            return PhaseDiagram(entries)
        except ValueError:  # an element lacks a reference
            return None

    def covers(self, composition: Composition) -> bool:
        return self._pd is not None and all(el.symbol in self.elements for el in composition.elements)

    def evaluate(self, composition: Composition, energy_per_atom: float) -> ThermoResult | None:
        """Formation energy and hull distances of a composition at a given energy per atom."""
        if not self.covers(composition):
            return None
        entry = PDEntry(composition, energy_per_atom * composition.num_atoms)
        ef = self._pd.get_form_energy_per_atom(entry)
        ehull = self._pd.get_e_above_hull(entry, allow_negative=True)
        eref = self._ref_pd.get_e_above_hull(entry, allow_negative=True)
        return ThermoResult(float(ef), max(0.0, float(ehull)), float(eref))

    def reference_hull_formation_energy(self, composition: Composition) -> float | None:
        """Formation energy per atom of the references' hull at this composition.

        A predicted formation energy minus this is a predicted ``e_above_reference_hull``, the
        quantity policies rank on (the references' hull does not move while a round is planned).
        """
        if not self.covers(composition):
            return None
        e_hull = self._ref_pd.get_hull_energy_per_atom(composition)
        entry = PDEntry(composition, e_hull * composition.num_atoms)
        return float(self._ref_pd.get_form_energy_per_atom(entry))

    def formation_energy(self, composition: Composition, energy_per_atom: float) -> float | None:
        if not self.covers(composition):
            return None
        entry = PDEntry(composition, energy_per_atom * composition.num_atoms)
        return float(self._pd.get_form_energy_per_atom(entry))
