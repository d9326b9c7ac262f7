"""The project's own simple crystal fingerprints and coverage, kept for comparison with earlier numbers.

Before matminer could be installed, `discovery.metrics.generation` computed COV-R / COV-P with these
fingerprints; `benchmarks/icsg3d.py` still reports them next to the CD-VAE-comparable ones
(`discovery.metrics.coverage`). They are NOT comparable with the CD-VAE paper.

- Structure (`simple_structure_fingerprint`, 16 numbers): for every site, the ratios distance /
  nearest distance of its neighbours within 8 A, smeared with Gaussians (width 0.05) centred at 1.0,
  1.1, ..., 2.5 and divided by 12; averaged over sites. Like CrystalNN order parameters it is
  scale-free and describes local coordination, but it is a different vector. Between two halves
  of perov_5/val (200 crystals each) the median nearest-neighbour distance is 0.05 and 73 % of one
  half lie within 0.2 of the other; 87 % lie within 4 in composition distance.
- Composition (`simple_composition_fingerprint`, 48 numbers): Magpie-style statistics (minimum,
  maximum, range, fraction-weighted mean, mean absolute deviation, property of the most abundant
  element) of eight pymatgen element properties (Z, row, group, Pauling electronegativity, atomic
  mass, atomic radius, Mendeleev number, molar volume), standardised with the *reference set's*
  mean and std; NaN -> 0.
- `simple_coverage`: COV-R / COV-P over the *valid* generated crystals only (COV-P's denominator:
  all generated), nearest neighbours taken separately per fingerprint.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

#: CD-VAE's Perov-5 coverage thresholds (structure, composition), the defaults here.
PEROV5_CUTOFFS: tuple[float, float] = (0.2, 4.0)
#: Neighbour search radius of the structure fingerprint (call it on valid crystals only). Units: A.
NEIGHBOUR_RADIUS_A = 8.0
_SHELL_CENTRES = np.linspace(1.0, 2.5, 16)
_SHELL_WIDTH = 0.05
_COMP_PROPERTIES = ("Z", "row", "group", "X", "atomic_mass", "atomic_radius", "mendeleev_no", "molar_volume")


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


def simple_composition_fingerprint(structure) -> np.ndarray:
    """Magpie-style statistics of element properties (unstandardised). Shapes: (48,)."""
    comp = structure.composition.element_composition.fractional_composition
    symbols = [el.symbol for el in comp.elements]
    frac = np.array([comp[s] for s in symbols], dtype=np.float64)
    props = np.stack([_element_properties(s) for s in symbols])  # (n_el, 8)
    mean = frac @ props
    out = np.concatenate([props.min(axis=0), props.max(axis=0), props.max(axis=0) - props.min(axis=0), mean,
                          frac @ np.abs(props - mean), props[int(np.argmax(frac))]])
    return out


def simple_structure_fingerprint(structure) -> np.ndarray:
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


def simple_coverage(generated: Sequence, valid: Sequence[bool], reference: Sequence,
                    struct_cutoff: float = PEROV5_CUTOFFS[0],
                    comp_cutoff: float = PEROV5_CUTOFFS[1]) -> dict[str, float]:
    """COV-R and COV-P of the *valid* generated crystals with the simple fingerprints (module docstring).

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
    ref_comp = np.stack([simple_composition_fingerprint(s) for s in reference])
    ref_struc = np.nan_to_num(np.stack([simple_structure_fingerprint(s) for s in reference]))
    mean, std = np.nanmean(ref_comp, axis=0), np.nanstd(ref_comp, axis=0)
    ref_comp = _standardise(ref_comp, mean, std)
    gen = [s for s, ok in zip(generated, valid, strict=True) if ok]
    n_all = len(valid)
    if not gen or not reference:
        return {"cov_recall": 0.0, "cov_precision": 0.0}
    gen_comp = _standardise(np.stack([simple_composition_fingerprint(s) for s in gen]), mean, std)
    gen_struc = np.nan_to_num(np.stack([simple_structure_fingerprint(s) for s in gen]))
    struc = cdist(gen_struc, ref_struc)
    comp = cdist(gen_comp, ref_comp)
    recall = np.logical_and(struc.min(axis=0) <= struct_cutoff, comp.min(axis=0) <= comp_cutoff)
    precision = np.logical_and(struc.min(axis=1) <= struct_cutoff, comp.min(axis=1) <= comp_cutoff)
    return {"cov_recall": float(recall.mean()), "cov_precision": float(precision.sum() / max(n_all, 1))}
