"""The filter every proposal passes before it is scored: structural and compositional validity,
de-duplication within a batch and novelty against everything known (StructureMatcher with
`discovery.structures.NOVELTY_MATCHER` tolerances). Rejections are counted by reason, never
silently dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field

from discovery.configbase import Strict
from discovery.records import Candidate
from discovery.structures import (NOVELTY_MATCHER, _plain, composition_problem, quiet_spglib, structural_problem,
                                  structure_matcher)

if TYPE_CHECKING:
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

REASON_STRUCTURE = "invalid_structure"
REASON_COMPOSITION = "invalid_composition"
REASON_DUPLICATE = "duplicate"
REASON_KNOWN = "known"


class FilterConfig(Strict):
    """Validity, de-duplication and novelty checks applied to every proposal."""

    min_distance_a: float = Field(0.5, gt=0.0)
    charge_neutral: bool = True
    novelty: bool = True
    matcher_ltol: float = NOVELTY_MATCHER["ltol"]
    matcher_stol: float = NOVELTY_MATCHER["stol"]
    matcher_angle_tol: float = NOVELTY_MATCHER["angle_tol"]


@dataclass
class FilterResult:
    """What `CandidateFilter.apply` kept and why it dropped the rest.

    Attributes:
        accepted: candidates that passed every check, in input order.
        rejected: reason -> count, reasons being ``invalid_structure``, ``invalid_composition``,
            ``duplicate`` (of another candidate of the same batch) and ``known``.
        messages: candidate id -> reason message, for the rejected ones.
        reasons: candidate id -> reason, for the rejected ones (per-generator funnel counts).
    """

    accepted: list[Candidate] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


class CandidateFilter:
    """Validity, de-duplication and novelty checks applied to every proposal.

    Known structures are indexed by reduced formula (primitive cells, computed once), so a check
    only runs ``StructureMatcher`` against structures of the same formula, and a growing known set
    costs only its new members.

    Args:
        config: tolerances and switches (`FilterConfig`).
    """

    def __init__(self, config: FilterConfig):
        self.config = config
        self._matcher = structure_matcher(
            ltol=config.matcher_ltol,
            stol=config.matcher_stol,
            angle_tol=config.matcher_angle_tol,
            primitive_cell=False,  # structures are reduced to primitive cells once, in _prepare
            scale=True,
            attempt_supercell=False,
        )
        self._known_ids: set[str] = set()
        self._known: dict[str, list[Structure]] = defaultdict(list)

    @staticmethod
    def _prepare(structure: Structure) -> Structure:
        with quiet_spglib():
            s = _plain(structure)
            try:
                return s.get_primitive_structure()
            except Exception:
                return s

    @property
    def n_known(self) -> int:
        return len(self._known_ids)

    def add_known(self, candidates: Iterable[Candidate]) -> int:
        """Index candidates as known; returns how many were new to the index."""
        added = 0
        for cand in candidates:
            if cand.id in self._known_ids:
                continue
            self._known_ids.add(cand.id)
            self._known[cand.formula].append(self._prepare(cand.pmg))
            added += 1
        return added

    def _matches(self, structure: Structure, pool: Sequence[Structure]) -> bool:
        with quiet_spglib():
            for other in pool:
                try:
                    if self._matcher.fit(structure, other):
                        return True
                except Exception:  # a failed comparison counts as "different"
                    logger.debug("StructureMatcher failed", exc_info=True)
        return False

    def apply(self, candidates: Sequence[Candidate], known: Sequence[Candidate] = ()) -> FilterResult:
        """Check a batch in order: structure, composition, duplicate within batch, novelty.

        Args:
            candidates: proposals to check.
            known: structures already known (seeds, evaluated candidates); they are added to the
                internal index (see `add_known`) before checking. Accepted candidates are *not*
                added; call `add_known` for those the campaign keeps.

        Returns:
            `FilterResult` with accepted candidates and rejection counts.
        """
        self.add_known(known)
        result = FilterResult()
        batch_ids: set[str] = set()
        batch: dict[str, list[Structure]] = defaultdict(list)

        def reject(cand: Candidate, reason: str, message: str) -> None:
            result.rejected[reason] = result.rejected.get(reason, 0) + 1
            result.messages[cand.id] = message
            result.reasons[cand.id] = reason

        for cand in candidates:
            structure = cand.pmg
            problem = structural_problem(structure, self.config.min_distance_a)
            if problem:
                reject(cand, REASON_STRUCTURE, problem)
                continue
            if self.config.charge_neutral:
                problem = composition_problem(structure)
                if problem:
                    reject(cand, REASON_COMPOSITION, problem)
                    continue
            if cand.id in batch_ids:
                reject(cand, REASON_DUPLICATE, "same canonical id as an earlier candidate of the batch")
                continue
            prepared = self._prepare(structure)
            if self._matches(prepared, batch[cand.formula]):
                reject(cand, REASON_DUPLICATE, "matches an earlier candidate of the batch")
                continue
            if self.config.novelty:
                if cand.id in self._known_ids:
                    reject(cand, REASON_KNOWN, "same canonical id as a known structure")
                    continue
                if self._matches(prepared, self._known.get(cand.formula, ())):
                    reject(cand, REASON_KNOWN, "matches a known structure")
                    continue
            batch_ids.add(cand.id)
            batch[cand.formula].append(prepared)
            result.accepted.append(cand)
        if result.rejected:
            logger.debug("filter rejected %s of %d", result.rejected, len(candidates))
        return result
