"""How fast a search finds hits: recall curves, calls to a recall level, AF and EF.

Conventions (used by `discovery benchmark` and stated in its output):

- a *call* is one expensive oracle evaluation chosen by the policy; the initial labelled set is
  free (every policy starts from the same one) and is not counted;
- *recall* after c calls = hits among all labelled candidates (initial set included) / hits in the
  whole pool;
- AF_r (acceleration factor at recall r) = calls random sampling needs to reach r / calls the
  policy needs (> 1 means faster than random);
- EF (enhancement factor) = hit rate of the policy's calls / hit rate of the pool (the hit rate
  random sampling has in expectation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def hits_needed(total_hits: int, fraction: float) -> int:
    """Hits that make up ``fraction`` recall (at least one)."""
    return max(1, math.ceil(fraction * total_hits - 1e-9))


def calls_to_recall(calls: Sequence[int], hits: Sequence[int], total_hits: int, fraction: float
                    ) -> int | None:
    """First number of calls after which recall >= ``fraction``; None if never reached.

    Args:
        calls: cumulative calls after each batch (the first entry may be 0, the initial set).
        hits: cumulative hits found after the same batches.
    """
    if total_hits <= 0:
        return None
    need = hits_needed(total_hits, fraction)
    for c, h in zip(calls, hits, strict=True):
        if h >= need:
            return int(c)
    return None


def expected_random_calls(pool_size: int, pool_hits: int, hits_wanted: int) -> float | None:
    """Expected draws without replacement until ``hits_wanted`` hits, from a pool of ``pool_size``
    holding ``pool_hits`` hits: r (N + 1) / (K + 1) (mean of the negative hypergeometric)."""
    if hits_wanted <= 0:
        return 0.0
    if hits_wanted > pool_hits:
        return None
    return hits_wanted * (pool_size + 1) / (pool_hits + 1)


def enhancement_factor(found: int, calls: int, pool_hits: int, pool_size: int) -> float | None:
    """Hit rate of ``calls`` (with ``found`` hits) over the pool's hit rate."""
    if calls <= 0 or pool_hits <= 0 or pool_size <= 0:
        return None
    return (found / calls) / (pool_hits / pool_size)
