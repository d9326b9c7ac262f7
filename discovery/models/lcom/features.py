"""LCOM's composition conditioning vector (no torch): the atomic fraction of each element
Z = 1..`N_ELEMENTS`, so NaCl and Na2Cl2 share a vector and the vector sums to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from discovery.errors import ConfigError

#: Elements of the vector (Z = 1..100, as CD-VAE's type logits).
N_ELEMENTS = 100


def composition_vector(composition: Any) -> np.ndarray:
    """Atomic fractions of a formula, pymatgen Composition or Structure. Shapes: (N_ELEMENTS,).

    Raises:
        ConfigError: not a formula, or an element beyond Z = 100.
    """
    from pymatgen.core import Composition

    comp = getattr(composition, "composition", composition)
    try:
        comp = comp if isinstance(comp, Composition) else Composition(comp)
    except Exception as exc:  # pymatgen raises several types for a bad formula
        raise ConfigError(f"composition {composition!r}: not a formula ({exc})") from None
    out = np.zeros(N_ELEMENTS, dtype=np.float32)
    total = float(comp.num_atoms)
    for el, amount in comp.element_composition.items():
        if not 1 <= el.Z <= N_ELEMENTS:
            raise ConfigError(f"composition {composition!r}: element {el} beyond Z = {N_ELEMENTS}")
        out[el.Z - 1] += float(amount) / total
    return out


def composition_matrix(items: Sequence[Any], mode: str = "fractions") -> np.ndarray:
    """`composition_vector` of each item, stacked (``mode == "none"``: no columns). Shapes: (n, k)."""
    if mode == "none":
        return np.zeros((len(items), 0), dtype=np.float32)
    if not items:
        return np.zeros((0, N_ELEMENTS), dtype=np.float32)
    return np.stack([composition_vector(x) for x in items])
