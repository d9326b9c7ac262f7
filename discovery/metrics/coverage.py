"""COV-R and COV-P exactly as CD-VAE's ``scripts/eval_utils.py: compute_cov`` (MODELS.md 4.5).

- Fingerprints: `discovery.metrics.fingerprints` (CrystalNN "ops" averaged over sites; Magpie
  standardised by CD-VAE's fixed CompScaler, NaN -> 0).
- Generated crystals without a fingerprint (failed decode, CrystalNN failure) are dropped from the
  distance matrices but stay in COV-P's denominator (``n_generated``, default: all generated).
- COV-R: the fraction of reference crystals whose nearest generated crystal in structure distance is
  within ``struct_cutoff`` *and* whose nearest generated crystal in composition distance is within
  ``comp_cutoff`` (two nearest neighbours, taken separately, as CD-VAE does).
- COV-P: the number of generated crystals whose nearest reference crystal is within both cutoffs
  (again separately), divided by ``n_generated``.
- Also CD-VAE's AMSD / AMCD (mean nearest-neighbour structure / composition distance, recall and
  precision sides).
- Thresholds per data set: `COV_CUTOFFS` (CD-VAE's ``COV_Cutoffs``).

In CD-VAE's ``GenEval.get_coverage`` the generated list is *all* generated crystals, valid or not
(only those whose fingerprint failed are dropped), not the 1,000 valid ones the EMDs use;
`discovery.metrics.generation.generation_metrics` does the same.

Deviation: a reference crystal without a fingerprint is dropped with a warning (CD-VAE would crash).
Distances are computed in blocks, so 10,000 x 10,000 comparisons need little memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from discovery.metrics.fingerprints import FingerprintCache, Fingerprints, fingerprints

log = logging.getLogger(__name__)

#: CD-VAE's (structure, composition) coverage thresholds per data set.
COV_CUTOFFS: dict[str, tuple[float, float]] = {
    "perov_5": (0.2, 4.0),
    "carbon_24": (0.2, 4.0),
    "mp_20": (0.4, 10.0),
}
_BLOCK = 2048


def cutoffs_for(dataset: str) -> tuple[float, float]:
    """CD-VAE's (structure, composition) thresholds for ``dataset``; ConfigError if unknown."""
    from discovery.errors import ConfigError

    try:
        return COV_CUTOFFS[dataset]
    except KeyError:
        raise ConfigError(f"coverage: unknown data set {dataset!r}; expected one of {sorted(COV_CUTOFFS)} "
                          "or explicit cutoffs") from None


def nearest_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest-neighbour distances both ways, in blocks.

    Shapes: a (n, d), b (m, d) -> (n,) distance of each row of a to its nearest row of b, and
    (m,) of each row of b to its nearest row of a.
    """
    from scipy.spatial.distance import cdist

    a_min = np.full(len(a), np.inf)
    b_min = np.full(len(b), np.inf)
    for start in range(0, len(a), _BLOCK):
        d = cdist(a[start:start + _BLOCK], b)
        if d.size:
            a_min[start:start + _BLOCK] = d.min(axis=1)
            b_min = np.minimum(b_min, d.min(axis=0))
    return a_min, b_min


def coverage_from_fingerprints(generated: Fingerprints, reference: Fingerprints, struct_cutoff: float,
                               comp_cutoff: float, n_generated: int | None = None) -> dict[str, float | int | None]:
    """`coverage` on precomputed fingerprints (rows with ``ok = False`` are dropped).

    Returns:
        ``cov_recall``, ``cov_precision`` (fractions in [0, 1]), ``amsd_recall``, ``amsd_precision``,
        ``amcd_recall``, ``amcd_precision`` (None without generated fingerprints), ``n_generated``
        (COV-P's denominator), ``n_fingerprinted`` (generated crystals with fingerprints),
        ``n_reference`` (reference crystals with fingerprints).
    """
    n_generated = len(generated) if n_generated is None else int(n_generated)
    gen = generated.select(generated.ok)
    ref = reference.select(reference.ok)
    if len(ref) < len(reference):
        log.warning("coverage: %d of %d reference crystals have no fingerprint and are left out",
                    len(reference) - len(ref), len(reference))
    out: dict[str, float | int | None] = {"n_generated": n_generated, "n_fingerprinted": len(gen),
                                          "n_reference": len(ref)}
    if len(gen) == 0 or len(ref) == 0:
        out.update(cov_recall=0.0, cov_precision=0.0, amsd_recall=None, amsd_precision=None,
                   amcd_recall=None, amcd_precision=None)
        return out
    struc_precision, struc_recall = nearest_distances(gen.struct, ref.struct)
    comp_precision, comp_recall = nearest_distances(gen.comp, ref.comp)
    recall = (struc_recall <= struct_cutoff) & (comp_recall <= comp_cutoff)
    precision = (struc_precision <= struct_cutoff) & (comp_precision <= comp_cutoff)
    out.update(
        cov_recall=float(recall.mean()),
        cov_precision=float(precision.sum() / max(n_generated, 1)),
        amsd_recall=float(struc_recall.mean()), amsd_precision=float(struc_precision.mean()),
        amcd_recall=float(comp_recall.mean()), amcd_precision=float(comp_precision.mean()),
    )
    return out


def coverage(generated: Sequence, reference: Sequence, dataset: str = "perov_5",
             cutoffs: tuple[float, float] | None = None, n_generated: int | None = None, n_jobs: int = 1,
             cache: FingerprintCache | None = None) -> dict[str, float | int | None]:
    """COV-R and COV-P of generated crystals against reference crystals, as CD-VAE (module docstring).

    Args:
        generated: generated pymatgen Structures (None where decoding failed: no fingerprint, but
            counted in COV-P's denominator).
        reference: the reference crystals (CD-VAE: the test set).
        dataset: picks CD-VAE's thresholds from `COV_CUTOFFS` ("perov_5", "carbon_24", "mp_20").
        cutoffs: explicit (structure, composition) thresholds instead of ``dataset``'s.
        n_generated: COV-P's denominator (default ``len(generated)``); pass the number of all
            generated crystals when ``generated`` is already a subset.
        n_jobs: worker processes for CrystalNN.
        cache: fingerprint cache (default: the process-wide one).

    Returns:
        See `coverage_from_fingerprints`.
    """
    struct_cutoff, comp_cutoff = cutoffs if cutoffs is not None else cutoffs_for(dataset)
    gen_fp = fingerprints(generated, n_jobs=n_jobs, cache=cache)
    ref_fp = fingerprints(reference, n_jobs=n_jobs, cache=cache)
    return coverage_from_fingerprints(gen_fp, ref_fp, struct_cutoff, comp_cutoff,
                                      n_generated=len(gen_fp) if n_generated is None else n_generated)
