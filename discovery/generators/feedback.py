"""What generators that re-target on DFT-confirmed hits share: reading the hits out of ``update``'s
feedback (`discovery.protocols.Generator.update`)."""

from __future__ import annotations

from typing import Any

from discovery.records import Candidate


def record_hits(feedback: dict[str, Any], candidates: dict[str, Candidate], hits: dict[str, None]) -> None:
    """Add the ids of ``feedback["hits"]`` (candidates or ids) to ``hits`` (an ordered set), and the
    structures of those given as candidates to ``candidates``."""
    for hit in feedback.get("hits", ()) or ():
        if isinstance(hit, Candidate):
            candidates[hit.id] = hit
            hits.setdefault(hit.id, None)
        else:
            hits.setdefault(str(hit), None)
