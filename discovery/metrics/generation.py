"""Generation metrics in the manner of CD-VAE (MODELS.md 4.5): validity, coverage and property EMDs.

What follows CD-VAE's ``scripts/compute_metrics.py`` exactly:

- **structural validity** (`structurally_valid`): at least one site, every pairwise distance of the
  pymatgen distance matrix (minimum image, a site's own images excluded) at least 0.5 A, and a
  volume of at least 0.1 A^3;
- **compositional validity** (`compositionally_valid`): SMACT charge neutrality plus the Pauling
  electronegativity test, elements and alloys valid (`discovery.structures.composition_problem`);
- **coverage** (`coverage`): COV-R is the fraction of reference crystals that have a valid
  generated crystal within ``struct_cutoff`` in structure-fingerprint distance *and* within
  ``comp_cutoff`` in composition-fingerprint distance (the two nearest neighbours are taken
  separately, as CD-VAE does); COV-P is the number of valid generated crystals within both cutoffs
  of some reference crystal divided by *all* generated crystals (invalid ones count);
- **EMDs** (`property_emds`): ``scipy.stats.wasserstein_distance`` of the density (g/cm^3) and of the
  number of distinct elements between the valid generated crystals and the reference set.

What differs, because ``matminer`` is not available here: the fingerprints are our own and simpler.

- Structure (`structure_fingerprint`, 16 numbers): for every site, the ratios distance / nearest
  distance of its neighbours within 8 A, smeared with Gaussians (width 0.05) centred at 1.0, 1.1,
  ..., 2.5 and divided by 12; averaged over sites. Like CrystalNN order parameters it is
  scale-free and describes local coordination, but it is a different vector. Between two halves
  of perov_5/val (200 crystals each) the median nearest-neighbour distance is 0.05 and 73 % of one
  half lie within 0.2 of the other; 87 % lie within 4 in composition distance.
- Composition (`composition_fingerprint`, 48 numbers): Magpie-style statistics (minimum, maximum,
  range, fraction-weighted mean, mean absolute deviation, property of the most abundant element) of
  eight pymatgen element properties (Z, row, group, Pauling electronegativity, atomic mass,
  atomic radius, Mendeleev number, molar volume), standardised with the reference set's mean and
  std (CD-VAE standardises its 132 Magpie features with fixed training-set constants); NaN -> 0.

CD-VAE's thresholds for Perov-5 (``struct_cutoff = 0.2``, ``comp_cutoff = 4``) are the defaults, but
with these fingerprints COV values are *not* comparable with the CD-VAE paper's numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

#: CD-VAE's Perov-5 coverage thresholds (structure, composition).
PEROV5_CUTOFFS: tuple[float, float] = (0.2, 4.0)
#: Neighbour search radius of the structure fingerprint (call it on valid crystals only). Units: A.
NEIGHBOUR_RADIUS_A = 8.0
_SHELL_CENTRES = np.linspace(1.0, 2.5, 16)
_SHELL_WIDTH = 0.05
_COMP_PROPERTIES = ("Z", "row", "group", "X", "atomic_mass", "atomic_radius", "mendeleev_no", "molar_volume")


def structurally_valid(structure, min_distance_a: float = 0.5, min_volume_a3: float = 0.1) -> bool:
    """CD-VAE's structural validity (see the module docstring). Units: A, A^3."""
    if structure is None or len(structure) == 0:
        return False
    try:
        volume = float(structure.volume)
        if not math.isfinite(volume) or volume < min_volume_a3:
            return False
        if len(structure) == 1:
            return True
        dist = np.array(structure.distance_matrix, dtype=np.float64)
    except Exception:  # degenerate lattices make pymatgen raise
        return False
    np.fill_diagonal(dist, np.inf)
    return bool(np.all(np.isfinite(dist.min(axis=1))) and dist.min() >= min_distance_a)


def compositionally_valid(structure) -> bool:
    """SMACT validity as in CD-VAE (`discovery.structures.composition_problem` is None)."""
    from discovery.structures import composition_problem

    return structure is not None and len(structure) > 0 and composition_problem(structure) is None


@lru_cache(maxsize=128)
def _element_properties(symbol: str) -> np.ndarray:
    from pymatgen.core.periodic_table import Element

    el = Element(symbol)
    values = []
    for name in _COMP_PROPERTIES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if name == "molar_volume":
                    v = el.data.get("Molar volume")
                    v = float(str(v).split()[0]) if v is not None else math.nan
                else:
                    v = float(getattr(el, name))
            except (TypeError, ValueError, AttributeError, KeyError):
                v = math.nan
        values.append(v)
    return np.asarray(values, dtype=np.float64)


def composition_fingerprint(structure) -> np.ndarray:
    """Magpie-style statistics of element properties (unstandardised). Shapes: (48,)."""
    comp = structure.composition.element_composition.fractional_composition
    symbols = [el.symbol for el in comp.elements]
    frac = np.array([comp[s] for s in symbols], dtype=np.float64)
    props = np.stack([_element_properties(s) for s in symbols])  # (n_el, 8)
    mean = frac @ props
    out = np.concatenate([props.min(axis=0), props.max(axis=0), props.max(axis=0) - props.min(axis=0), mean,
                          frac @ np.abs(props - mean), props[int(np.argmax(frac))]])
    return out


def structure_fingerprint(structure) -> np.ndarray:
    """Site-averaged, smeared histogram of neighbour distance / nearest distance (module docstring).

    Neighbours are searched within `NEIGHBOUR_RADIUS_A`; shells beyond it are empty.

    Shapes: (16,). A structure whose neighbour search fails gives NaNs.
    """
    n = len(structure)
    hist = np.zeros(len(_SHELL_CENTRES))
    try:
        centres, _, _, dists = structure.get_neighbor_list(NEIGHBOUR_RADIUS_A, exclude_self=True)
    except Exception:  # degenerate cells
        return np.full(len(hist), np.nan)
    for i in range(n):
        d = dists[centres == i]
        d = d[d > 1e-8]
        if d.size == 0:
            continue
        ratio = d / d.min()
        smeared = np.exp(-((ratio[:, None] - _SHELL_CENTRES[None, :]) ** 2) / (2 * _SHELL_WIDTH**2))
        hist += smeared.sum(axis=0) / 12.0
    return hist / max(n, 1)


def _standardise(fps: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = (fps - mean) / np.where(std > 1e-12, std, 1.0)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def coverage(generated: Sequence, valid: Sequence[bool], reference: Sequence,
             struct_cutoff: float = PEROV5_CUTOFFS[0], comp_cutoff: float = PEROV5_CUTOFFS[1]) -> dict[str, float]:
    """COV-R and COV-P (CD-VAE's definitions, our fingerprints; see the module docstring).

    Args:
        generated: generated structures (None allowed for failed decodes).
        valid: per generated structure, whether it is valid (structure and composition).
        reference: reference crystals (the held-out set).
        struct_cutoff, comp_cutoff: the distance thresholds.

    Returns:
        ``cov_recall`` and ``cov_precision`` in [0, 1].
    """
    from scipy.spatial.distance import cdist

    reference = list(reference)
    ref_comp = np.stack([composition_fingerprint(s) for s in reference])
    ref_struc = np.nan_to_num(np.stack([structure_fingerprint(s) for s in reference]))
    mean, std = np.nanmean(ref_comp, axis=0), np.nanstd(ref_comp, axis=0)
    ref_comp = _standardise(ref_comp, mean, std)
    gen = [s for s, ok in zip(generated, valid, strict=True) if ok]
    n_all = len(valid)
    if not gen or not reference:
        return {"cov_recall": 0.0, "cov_precision": 0.0}
    gen_comp = _standardise(np.stack([composition_fingerprint(s) for s in gen]), mean, std)
    gen_struc = np.nan_to_num(np.stack([structure_fingerprint(s) for s in gen]))
    struc = cdist(gen_struc, ref_struc)
    comp = cdist(gen_comp, ref_comp)
    recall = np.logical_and(struc.min(axis=0) <= struct_cutoff, comp.min(axis=0) <= comp_cutoff)
    precision = np.logical_and(struc.min(axis=1) <= struct_cutoff, comp.min(axis=1) <= comp_cutoff)
    return {"cov_recall": float(recall.mean()), "cov_precision": float(precision.sum() / max(n_all, 1))}


def property_emds(generated: Sequence, reference: Sequence) -> dict[str, float]:
    """Wasserstein-1 distance of density (g/cm^3) and of the number of elements, generated vs reference."""
    from scipy.stats import wasserstein_distance

    gen = [s for s in generated if s is not None]
    if not gen or not reference:
        return {"emd_density": math.nan, "emd_n_elements": math.nan}
    return {
        "emd_density": float(wasserstein_distance([float(s.density) for s in gen],
                                                  [float(s.density) for s in reference])),
        "emd_n_elements": float(wasserstein_distance([len(s.composition.elements) for s in gen],
                                                     [len(s.composition.elements) for s in reference])),
    }


def generation_metrics(generated: Sequence, reference: Sequence,
                       cutoffs: tuple[float, float] = PEROV5_CUTOFFS) -> dict[str, float]:
    """Validity rates over all samples, and coverage and EMDs of the valid ones (CD-VAE's protocol).

    Args:
        generated: generated structures, None where decoding failed (counted invalid).
        reference: the reference (held-out) crystals.
        cutoffs: (structure, composition) coverage thresholds.

    Returns:
        ``n``, ``struct_validity``, ``comp_validity``, ``validity`` (both), ``cov_recall``,
        ``cov_precision``, ``emd_density``, ``emd_n_elements``.
    """
    generated = list(generated)
    reference = list(reference)
    struct_ok = np.array([structurally_valid(s) for s in generated], dtype=bool)
    comp_ok = np.array([s is not None and compositionally_valid(s) for s in generated], dtype=bool)
    both = struct_ok & comp_ok
    n = max(len(generated), 1)
    out = {"n": len(generated), "struct_validity": float(struct_ok.sum() / n),
           "comp_validity": float(comp_ok.sum() / n), "validity": float(both.sum() / n)}
    out.update(coverage(generated, both, reference, *cutoffs))
    out.update(property_emds([s for s, ok in zip(generated, both, strict=True) if ok], reference))
    return out
