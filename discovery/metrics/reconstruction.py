"""Reconstruction match rate and RMSE exactly as CD-VAE's ``scripts/compute_metrics.py: RecEval``.

- Matcher: ``StructureMatcher(**CDVAE_MATCHER)`` = stol 0.5, angle_tol 10 degrees, ltol 0.3 (the
  house's one definition of CD-VAE's matcher settings).
- A pair counts as matched when the prediction is valid and ``get_rms_dist(pred, true)`` is not
  None (an exception counts as unmatched, as in CD-VAE).
- Match rate = matched / *all* pairs (None and invalid predictions count as unmatched).
- RMSE = mean over matched pairs of the normalised RMS displacement, ``get_rms_dist(...)[0]``
  (divided by (volume / n_sites)^(1/3) by pymatgen; dimensionless), None without a match.

Validity of a prediction, ``validity=``:

- ``"cdvae"`` (default, CD-VAE's ``Crystal.valid``): structurally valid, compositionally valid
  (SMACT) and with a CrystalNN fingerprint (`discovery.metrics.validity`,
  `discovery.metrics.fingerprints`; the fingerprints are cached and reused by coverage). Note that
  this makes a SMACT-invalid ground truth unreconstructable, as in CD-VAE;
- ``"structural"``: structural validity only (cheap; not CD-VAE's number);
- ``"none"``: only None predictions are invalid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

#: CD-VAE's StructureMatcher settings for reconstruction (``RecEval``). Units: stol and ltol are
#: fractions (of (V/n)^(1/3) and of the lattice lengths), angle_tol in degrees.
CDVAE_MATCHER: dict[str, float] = dict(stol=0.5, angle_tol=10, ltol=0.3)


def cdvae_matcher():
    """A pymatgen ``StructureMatcher`` with `CDVAE_MATCHER` settings."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**CDVAE_MATCHER)


def prediction_validity(predicted: Sequence, validity: Literal["cdvae", "structural", "none"] = "cdvae",
                        n_jobs: int = 1, cache=None) -> np.ndarray:
    """Per prediction, whether it counts as valid under ``validity`` (module docstring). Shapes: (n,)."""
    from discovery.metrics.fingerprints import fingerprints
    from discovery.metrics.validity import compositionally_valid, structurally_valid

    predicted = list(predicted)
    present = np.array([p is not None for p in predicted], dtype=bool)
    if validity == "none":
        return present
    if validity not in ("cdvae", "structural"):
        raise ValueError(f"validity must be 'cdvae', 'structural' or 'none', not {validity!r}")
    ok = np.array([structurally_valid(p) for p in predicted], dtype=bool)
    if validity == "cdvae":
        ok &= np.array([compositionally_valid(p) for p in predicted], dtype=bool)
        ok &= fingerprints(predicted, n_jobs=n_jobs, cache=cache).ok
    return ok


def reconstruction_metrics(predicted: Sequence, true: Sequence,
                           validity: Literal["cdvae", "structural", "none"] = "cdvae", n_jobs: int = 1,
                           cache=None) -> dict[str, float | int | None]:
    """CD-VAE's reconstruction match rate and RMSE (module docstring).

    Args:
        predicted: reconstructed pymatgen Structures, None where decoding failed.
        true: the ground-truth Structures, same length and order.
        validity: which predictions may match ("cdvae", "structural" or "none").
        n_jobs: worker processes for CrystalNN (``validity="cdvae"`` only).
        cache: fingerprint cache (default: the process-wide one).

    Returns:
        ``match_rate`` (matched / n, in [0, 1]), ``rmse`` (mean normalised RMS over matched pairs,
        None without a match), ``n`` (pairs), ``n_matched``, ``n_valid`` (valid predictions),
        and ``rms_dists`` (per pair, None where unmatched).
    """
    predicted, true = list(predicted), list(true)
    if len(predicted) != len(true):
        raise ValueError(f"reconstruction_metrics: {len(predicted)} predictions for {len(true)} true structures")
    valid = prediction_validity(predicted, validity, n_jobs=n_jobs, cache=cache)
    matcher = cdvae_matcher()
    rms: list[float | None] = []
    for pred, gt, ok in zip(predicted, true, valid, strict=True):
        if not ok or gt is None:
            rms.append(None)
            continue
        try:
            out = matcher.get_rms_dist(pred, gt)
        except Exception as exc:  # noqa: BLE001 - CD-VAE counts any matcher failure as unmatched
            log.debug("get_rms_dist failed: %s", exc)
            out = None
        rms.append(None if out is None or not math.isfinite(float(out[0])) else float(out[0]))
    matched = [r for r in rms if r is not None]
    n = len(predicted)
    return {
        "match_rate": len(matched) / n if n else 0.0,
        "rmse": float(np.mean(matched)) if matched else None,
        "n": n,
        "n_matched": len(matched),
        "n_valid": int(valid.sum()),
        "rms_dists": rms,
    }
