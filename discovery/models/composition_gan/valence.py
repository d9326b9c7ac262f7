"""From a generated vector to a charge-balanced composition (MODELS.md 3.3; the authors' ``src/evaluation.py``
and ``src/mcmc.py``).

1. **Clean** (`clean_fractions`): un-scaled bag-of-atoms entries below ``TH = 0.03`` are set to 0 and
   the rest renormalised to sum to 1.
2. **Valences**: each present element's pymatgen ``common_oxidation_states``. If an element has
   none, or the elements with more than one state do not all have the same number of states, the
   composition is returned unchanged (status ``no_states`` / ``mixed_state_counts``; the original
   flags and drops these). Otherwise the states form a matrix V (elements x k); single-state
   elements repeat their state in every column, and column j pairs the j-th states of the
   multi-state elements. ``y = x . V`` is the net charge per atom of each column's assignment.
3. **Metropolis-Hastings** (`metropolis_hastings`), at most 10,000 iterations: stop as soon as any
   ``|y_j| < 1e-6``; propose 256 candidates from ``N(x, diag(0.05))`` (0.05 is the *variance*, std
   0.224), clip at 1e-6, renormalise, round to 2 decimals; ``A = exp(-y*^2) / exp(-y^2)`` per
   (candidate, column); only the candidate with the largest A is considered and is accepted with
   probability ``min(1, A)`` (a greedy batch variant, not textbook MH); stop when that candidate's
   ``|charge| < 1e-6``. The start vector is rounded to 2 decimals too.
4. **Integer formula** (`integer_formula`): the smallest number of atoms N (at most ``max_atoms``)
   whose rounded counts reproduce every fraction within 0.01, reduced by their gcd.
5. **SMACT** (`smact_problem`): charge neutrality + Pauling electronegativity order of the integer
   formula with SMACT's oxidation states (the settings of `discovery.structures.composition_problem`).

Option (ours): ``assignments="product"`` uses every combination of the elements' common states as
the columns of V instead of the paper's zipped columns (`valence_matrix`); the default is the
paper's.

Deviation: the original compares the best candidate's *signed* charge with 1e-6 (``y < 1e-6``), which
also stops the chain at the first negative best charge; the stop here uses ``|y|`` (the evident
intent, and MODELS.md's "stop at |charge| < 1e-6"); ``signed_stop=True`` restores the original.

Randomness: only the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TH = 0.03
ITERATIONS = 10_000
PROPOSALS = 256
VARIANCE = 0.05
DECIMALS = 2
NEUTRAL_TOL = 1e-6
#: Most valence columns of the ``product`` variant.
MAX_PRODUCT_COLUMNS = 256


@dataclass
class Corrected:
    """One composition after valence correction.

    Attributes:
        fractions: element -> atomic fraction (2 decimals; elements rounded to 0 removed).
        status: ``neutral``, ``not_converged``, ``single_element``, ``no_states``,
            ``mixed_state_counts`` or ``empty``.
        charge: the smallest |net charge per atom| over the valence columns (0 for neutral).
        iterations: MH iterations run.
    """

    fractions: dict[str, float]
    status: str
    charge: float
    iterations: int = 0

    @property
    def neutral(self) -> bool:
        """Charge-neutral after MH (an element alone counts as neutral)."""
        return self.status in ("neutral", "single_element")


@lru_cache(maxsize=512)
def common_states(symbol: str) -> tuple[float, ...]:
    """pymatgen's common oxidation states of an element."""
    from pymatgen.core import Element

    return tuple(float(s) for s in Element(symbol).common_oxidation_states)


def clean_fractions(bag: np.ndarray, threshold: float = TH) -> np.ndarray:
    """Entries with ``|x| < threshold`` set to 0, the rest renormalised (rows of ``(n, n_elements)``)."""
    x = np.array(bag, dtype=float, copy=True)
    x[np.abs(x) < threshold] = 0.0
    s = x.sum(axis=-1, keepdims=True)
    return np.divide(x, s, out=np.zeros_like(x), where=s != 0)


def valence_matrix(symbols: Sequence[str], assignments: str = "columns") -> tuple[np.ndarray | None, str]:
    """V (elements x k) per the module docstring, or (None, reason).

    ``assignments="product"`` (ours, not the paper's) makes every combination of the elements'
    common states a column (at most `MAX_PRODUCT_COLUMNS`), so elements with different numbers of
    states are no longer returned unchanged.
    """
    states = [common_states(s) for s in symbols]
    if any(len(s) == 0 for s in states):
        return None, "no_states"
    if assignments == "product":
        if math.prod(len(s) for s in states) > MAX_PRODUCT_COLUMNS:
            return None, "mixed_state_counts"
        return np.array(list(itertools.product(*states)), dtype=float).T, ""
    multi = {len(s) for s in states if len(s) > 1}
    if len(multi) > 1:
        return None, "mixed_state_counts"
    k = multi.pop() if multi else 1
    return np.array([list(s) * k if len(s) == 1 else list(s) for s in states], dtype=float), ""


def metropolis_hastings(x: np.ndarray, v: np.ndarray, rng: np.random.Generator, iterations: int = ITERATIONS,
                        proposals: int = PROPOSALS, variance: float = VARIANCE, signed_stop: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The greedy batch MH of the module docstring, for B chains of the same shape at once.

    Args:
        x: Shapes: ``(B, n)`` fractions (or ``(n,)`` for one chain).
        v: Shapes: ``(B, n, k)`` valence matrices (or ``(n, k)``).

    Returns:
        (fractions rounded to 2 decimals ``(B, n)``, iterations run per chain ``(B,)``); a chain
        stops at its own stopping rule and is left untouched afterwards.
    """
    single = np.ndim(x) == 1
    cur = np.atleast_2d(np.asarray(x, dtype=float))
    v = np.asarray(v, dtype=float).reshape(len(cur), cur.shape[1], -1)
    cur = np.round(cur / cur.sum(axis=1, keepdims=True), DECIMALS)
    std = math.sqrt(variance)
    n_chains, n = cur.shape
    its = np.zeros(n_chains, dtype=int)
    active = np.ones(n_chains, dtype=bool)
    rows = np.arange(n_chains)
    for it in range(iterations):
        y_now = np.einsum("bn,bnk->bk", cur, v)
        active &= ~np.any(np.abs(y_now) < NEUTRAL_TOL, axis=1)
        if not active.any():
            break
        idx = rows[active]
        its[idx] = it + 1
        cand = rng.normal(cur[idx, None, :], std, size=(len(idx), proposals, n)).clip(min=1e-6)
        cand = np.round(cand / cand.sum(axis=2, keepdims=True), DECIMALS)
        y_star = np.einsum("bpn,bnk->bpk", cand, v[idx])
        ratio = np.exp(-y_star * y_star) / np.exp(-y_now[idx, None, :] ** 2)
        flat = ratio.reshape(len(idx), -1).argmax(axis=1)
        a, c = np.unravel_index(flat, ratio.shape[1:])
        best_ratio = ratio[np.arange(len(idx)), a, c]
        accept = rng.random(len(idx)) < np.minimum(1.0, best_ratio)
        cur[idx[accept]] = cand[np.arange(len(idx))[accept], a[accept]]
        best = y_star[np.arange(len(idx)), a, c]
        stop = (best < NEUTRAL_TOL) if signed_stop else (np.abs(best) < NEUTRAL_TOL)
        active[idx[stop]] = False
    return (cur[0], its[0]) if single else (cur, its)


def correct(fractions: Mapping[str, float], rng: np.random.Generator, iterations: int = ITERATIONS,
            signed_stop: bool = False, assignments: str = "columns") -> Corrected:
    """Valence-correct one cleaned composition (element -> fraction, zeros allowed)."""
    return correct_many([fractions], rng, iterations, signed_stop, assignments)[0]


def correct_many(compositions: Sequence[Mapping[str, float]], rng: np.random.Generator,
                 iterations: int = ITERATIONS, signed_stop: bool = False,
                 assignments: str = "columns") -> list[Corrected]:
    """Valence-correct many compositions; chains with the same (elements, columns) shape run together."""
    out: list[Corrected | None] = [None] * len(compositions)
    groups: dict[tuple[int, int], list[tuple[int, list[str], np.ndarray, np.ndarray]]] = {}
    for i, fractions in enumerate(compositions):
        items = [(el, float(f)) for el, f in fractions.items() if f > 0]
        if not items:
            out[i] = Corrected({}, "empty", math.inf)
            continue
        symbols = [el for el, _ in items]
        x = np.array([f for _, f in items])
        if len(items) == 1:
            out[i] = Corrected({symbols[0]: 1.0}, "single_element", 0.0)
            continue
        v, reason = valence_matrix(symbols, assignments)
        if v is None:
            x = np.round(x / x.sum(), DECIMALS)
            out[i] = Corrected({s: float(f) for s, f in zip(symbols, x, strict=True) if f > 0}, reason, math.nan)
            continue
        groups.setdefault(v.shape, []).append((i, symbols, x, v))
    for members in groups.values():
        xs = np.stack([m[2] for m in members])
        vs = np.stack([m[3] for m in members])
        res, its = metropolis_hastings(xs, vs, rng, iterations, signed_stop=signed_stop)
        for (i, symbols, _, v), r, n_it in zip(members, res, its, strict=True):
            charge = float(np.min(np.abs(r @ v)))
            status = "neutral" if charge < NEUTRAL_TOL else "not_converged"
            out[i] = Corrected({s: float(f) for s, f in zip(symbols, r, strict=True) if f > 0}, status, charge,
                               int(n_it))
    return out  # type: ignore[return-value]


def integer_formula(fractions: Mapping[str, float], max_atoms: int = 20, tol: float = 0.01) -> dict[str, int] | None:
    """Smallest integer counts (at most ``max_atoms`` atoms) within ``tol`` of every fraction, or None."""
    items = [(el, f) for el, f in fractions.items() if f > 0]
    if not items:
        return None
    total = sum(f for _, f in items)
    fr = np.array([f / total for _, f in items])
    for n in range(len(items), max_atoms + 1):
        counts = np.round(fr * n).astype(int)
        if (counts >= 1).all() and np.max(np.abs(counts / counts.sum() - fr)) <= tol:
            g = math.gcd(*counts.tolist())
            return {el: int(c) // g for (el, _), c in zip(items, counts, strict=True)}
    return None


def smact_problem(counts: Mapping[str, float]) -> str | None:
    """Why a composition fails SMACT's neutrality + electronegativity test, or None when it passes."""
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    comp = Composition(dict(counts))
    if len(comp.elements) <= 1:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = smact_validity(comp, use_pauling_test=True, include_alloys=True, mixed_valence=True)
    except Exception as exc:  # smact has no data for some elements
        return f"{comp.reduced_formula}: SMACT cannot check it ({type(exc).__name__})"
    return None if ok else f"{comp.reduced_formula}: no charge-neutral, electronegativity-ordered states (SMACT)"
