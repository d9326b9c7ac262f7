"""CD-VAE's generation metrics, one implementation for every generator (MODELS.md 4.5; entry point).

Follows ``scripts/compute_metrics.py`` and ``scripts/eval_utils.py`` of txie-93/cdvae (snapshot
f857f598). The parts live in small modules and are re-exported here:

- validity (`discovery.metrics.validity`): `structurally_valid`, `compositionally_valid`,
  `crystal_from_arrays`;
- fingerprints (`discovery.metrics.fingerprints`): matminer CrystalNN "ops" and Magpie with CD-VAE's
  fixed scaler, cached; `fingerprints`, `FingerprintCache`;
- coverage (`discovery.metrics.coverage`): `coverage`, `COV_CUTOFFS`;
- reconstruction (`discovery.metrics.reconstruction`): `reconstruction_metrics`, `CDVAE_MATCHER`;
- here: `property_emds`, `generation_metrics` (CD-VAE's ``GenEval``) and
  `optimization_success_rates` (``OptEval``).

`generation_metrics` follows ``GenEval``:

- a crystal is valid when structurally valid, compositionally valid and fingerprintable; the three
  rates are over *all* generated crystals (a None, i.e. a failed decode, is invalid in all three;
  CD-VAE can still judge the composition of a crystal whose lattice failed, we cannot);
- ``n_valid_sample`` valid crystals (CD-VAE: 1,000) are drawn at random (seeded here; CD-VAE used
  numpy's global state). CD-VAE aborts when fewer are valid; we use all valid ones and report
  ``n_eval`` (with a warning);
- EMDs (``scipy.stats.wasserstein_distance``) of density, number of elements and, with a
  predictor, the property: the drawn valid crystals against *all* reference crystals;
- diversity: mean pairwise fingerprint distance of the drawn crystals (composition standardised);
- COV-R / COV-P: as CD-VAE's ``get_coverage``, over *all* generated crystals that have a
  fingerprint (valid or not), COV-P's denominator being all generated crystals. The same coverage
  over the valid crystals only is reported as ``cov_recall_valid`` / ``cov_precision_valid``.

`optimization_success_rates` follows ``OptEval``: SR_p is the fraction of optimisation runs whose
best property (minimised; among valid decoded crystals; a run without one fails) is at or below the
p-th percentile of the training property. CD-VAE hard-codes the percentiles of its training sets,
kept here as `CDVAE_SR_THRESHOLDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from discovery.metrics.coverage import COV_CUTOFFS, coverage, coverage_from_fingerprints, cutoffs_for
from discovery.metrics.fingerprints import (
    FingerprintCache,
    Fingerprints,
    composition_fingerprint,
    fingerprints,
    standardise_composition,
    structure_fingerprint,
)
from discovery.metrics.reconstruction import CDVAE_MATCHER, cdvae_matcher, reconstruction_metrics
from discovery.metrics.validity import (
    compositionally_valid,
    crystal_from_arrays,
    smact_valid,
    structurally_valid,
)

__all__ = [
    "CDVAE_MATCHER", "CDVAE_SR_THRESHOLDS", "COV_CUTOFFS", "FingerprintCache", "Fingerprints", "best_of_runs",
    "cdvae_matcher", "composition_fingerprint", "compositionally_valid", "coverage", "coverage_from_fingerprints",
    "crystal_from_arrays", "cutoffs_for", "fingerprints", "generation_metrics", "optimization_success_rates",
    "property_emds", "reconstruction_metrics", "smact_valid", "standardise_composition", "structurally_valid",
    "structure_fingerprint",
]

log = logging.getLogger(__name__)

#: CD-VAE's hard-coded 5th / 10th / 15th percentiles of the training property (``Percentiles`` in
#: compute_metrics.py): formation energy per atom (mp_20, eV/atom), energy per atom (carbon_24,
#: eV/atom), heat_ref (perov_5, eV/atom).
CDVAE_SR_THRESHOLDS: dict[str, tuple[float, float, float]] = {
    "mp_20": (-3.17562208, -2.82196882, -2.52814761),
    "carbon_24": (-154.527093, -154.45865733, -154.44206825),
    "perov_5": (0.43924842, 0.61202443, 0.7364607),
}

#: A property predictor: structures -> one value per structure.
PropertyFn = Callable[[list], Sequence[float]]


def _n_elements(structure) -> int:
    return len(structure.composition.elements)


def property_emds(generated: Sequence, reference: Sequence,
                  property_fn: PropertyFn | None = None) -> dict[str, float | None]:
    """Wasserstein-1 distances between generated and reference crystals (CD-VAE's EMDs).

    Args:
        generated: the generated crystals to compare (CD-VAE: 1,000 valid ones); None entries are skipped.
        reference: the reference crystals (CD-VAE: the test set).
        property_fn: optional predictor called once on each list of structures.

    Returns:
        ``emd_density`` (g/cm^3), ``emd_n_elements`` (number of distinct elements) and
        ``emd_property`` (the predictor's unit; None without a predictor); None when a side is empty.
    """
    from scipy.stats import wasserstein_distance

    gen = [s for s in generated if s is not None]
    ref = [s for s in reference if s is not None]
    if not gen or not ref:
        return {"emd_density": None, "emd_n_elements": None, "emd_property": None}
    out: dict[str, float | None] = {
        "emd_density": float(wasserstein_distance([float(s.density) for s in gen], [float(s.density) for s in ref])),
        "emd_n_elements": float(wasserstein_distance([_n_elements(s) for s in gen], [_n_elements(s) for s in ref])),
        "emd_property": None,
    }
    if property_fn is not None:
        gen_p = np.asarray(property_fn(gen), dtype=float).reshape(-1)
        ref_p = np.asarray(property_fn(ref), dtype=float).reshape(-1)
        gen_p, ref_p = gen_p[np.isfinite(gen_p)], ref_p[np.isfinite(ref_p)]
        if gen_p.size and ref_p.size:
            out["emd_property"] = float(wasserstein_distance(gen_p, ref_p))
    return out


def _mean_pdist(x: np.ndarray) -> float | None:
    from scipy.spatial.distance import pdist

    return float(pdist(x).mean()) if len(x) > 1 else None


def generation_metrics(generated: Sequence, reference: Sequence, dataset: str = "perov_5",
                       n_valid_sample: int = 1000, seed: int = 0, property_fn: PropertyFn | None = None,
                       cutoffs: tuple[float, float] | None = None, n_jobs: int = 1,
                       cache: FingerprintCache | None = None) -> dict[str, float | int | str | None]:
    """CD-VAE's generation metrics (``GenEval``; module docstring).

    Args:
        generated: generated pymatgen Structures, None where decoding failed (CD-VAE: 10,000).
        reference: the reference crystals (CD-VAE: the test set).
        dataset: "perov_5", "carbon_24" or "mp_20": CD-VAE's coverage thresholds.
        n_valid_sample: valid crystals drawn for the EMDs and diversity (CD-VAE: 1,000).
        seed: seed of that draw.
        property_fn: optional property predictor for ``emd_property``.
        cutoffs: explicit (structure, composition) coverage thresholds instead of ``dataset``'s.
        n_jobs: worker processes for CrystalNN.
        cache: fingerprint cache (default: the process-wide one).

    Returns:
        ``n``, ``n_valid``, ``struct_validity``, ``comp_validity``, ``validity`` (fractions of all
        ``n``), ``n_eval`` (crystals drawn), ``cov_recall``, ``cov_precision``, ``amsd_*``, ``amcd_*``,
        ``n_reference``, ``cov_recall_valid``, ``cov_precision_valid``, ``emd_density``,
        ``emd_n_elements``, ``emd_property``, ``struct_div``, ``comp_div``, ``dataset``,
        ``struct_cutoff``, ``comp_cutoff``.
    """
    struct_cutoff, comp_cutoff = cutoffs if cutoffs is not None else cutoffs_for(dataset)
    generated, reference = list(generated), list(reference)
    n = len(generated)
    struct_ok = np.array([structurally_valid(s) for s in generated], dtype=bool)
    comp_ok = np.array([compositionally_valid(s) for s in generated], dtype=bool)
    gen_fp = fingerprints(generated, n_jobs=n_jobs, cache=cache)
    valid = struct_ok & comp_ok & gen_fp.ok
    ref_fp = fingerprints(reference, n_jobs=n_jobs, cache=cache)

    valid_idx = np.flatnonzero(valid)
    if len(valid_idx) > n_valid_sample:
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        pick = np.sort(rng.choice(valid_idx, size=n_valid_sample, replace=False))
    else:
        pick = valid_idx
        if len(valid_idx) < n_valid_sample:
            log.warning("only %d of %d generated crystals are valid (CD-VAE draws %d and would stop); "
                        "EMDs and diversity use all valid ones", len(valid_idx), n, n_valid_sample)
    denom = max(n, 1)
    out: dict[str, float | int | str | None] = {
        "n": n, "n_valid": int(valid.sum()), "struct_validity": float(struct_ok.sum() / denom),
        "comp_validity": float(comp_ok.sum() / denom), "validity": float(valid.sum() / denom),
        "n_eval": int(len(pick)),
    }
    cov = coverage_from_fingerprints(gen_fp, ref_fp, struct_cutoff, comp_cutoff, n_generated=n)
    out.update({k: v for k, v in cov.items() if k not in ("n_generated", "n_fingerprinted")})
    cov_valid = coverage_from_fingerprints(gen_fp.select(valid), ref_fp, struct_cutoff, comp_cutoff, n_generated=n)
    out["cov_recall_valid"] = cov_valid["cov_recall"]
    out["cov_precision_valid"] = cov_valid["cov_precision"]
    out.update(property_emds([generated[i] for i in pick], reference, property_fn))
    sample = gen_fp.select(pick)
    out["struct_div"] = _mean_pdist(sample.struct)
    out["comp_div"] = _mean_pdist(sample.comp)
    out.update(dataset=dataset, struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff)
    return out


def best_of_runs(values: Sequence[float], valid: Sequence[bool], n_runs: int) -> np.ndarray:
    """Best (lowest) valid property per optimisation run, in CD-VAE's ``OptEval`` layout.

    CD-VAE stores ``n_steps`` decoded checkpoints of ``n_runs`` runs step-major: item
    ``step * n_runs + run``. A run without a valid crystal gets +inf (it fails every SR).

    Shapes: values, valid (n_steps * n_runs,) -> (n_runs,).
    """
    values = np.asarray(values, dtype=float).reshape(-1)
    valid = np.asarray(valid, dtype=bool).reshape(-1)
    if values.shape != valid.shape or len(values) % n_runs:
        raise ValueError(f"best_of_runs: {len(values)} values / {len(valid)} flags do not split into {n_runs} runs")
    props = np.where(valid & np.isfinite(values), values, np.inf).reshape(-1, n_runs)
    return props.min(axis=0)


def optimization_success_rates(best_values: Sequence[float | None], train_values: Sequence[float] | None = None,
                               percentiles: Sequence[float] = (5, 10, 15),
                               thresholds: Sequence[float] | None = None) -> dict[str, float]:
    """CD-VAE's SR5 / SR10 / SR15: share of runs whose best property is <= a training percentile.

    Args:
        best_values: the best (lowest) property of each optimisation run; None, NaN or +inf for a
            run without a valid crystal (a failure).
        train_values: training-set property values whose percentiles are the thresholds.
        percentiles: which percentiles (CD-VAE: 5, 10, 15); they name the keys.
        thresholds: the threshold values themselves instead of ``train_values`` (e.g.
            ``CDVAE_SR_THRESHOLDS["perov_5"]``), one per percentile.

    Returns:
        ``{"SR5": ..., "SR10": ..., "SR15": ...}``, fractions in [0, 1] (0 without runs).
    """
    if thresholds is None:
        if train_values is None:
            raise ValueError("optimization_success_rates needs train_values or thresholds")
        train = np.asarray(train_values, dtype=float)
        thresholds = np.percentile(train[np.isfinite(train)], list(percentiles))
    thresholds = np.asarray(thresholds, dtype=float).reshape(-1)
    if len(thresholds) != len(percentiles):
        raise ValueError(f"{len(thresholds)} thresholds for {len(percentiles)} percentiles")
    best = np.array([np.inf if v is None else float(v) for v in best_values], dtype=float)
    best = np.where(np.isnan(best), np.inf, best)
    return {f"SR{p:g}": float((best <= t).mean()) if best.size else 0.0
            for p, t in zip(percentiles, thresholds, strict=True)}
