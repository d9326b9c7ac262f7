"""Input of the composition models (MODELS.md 3.1): bag-of-atoms plus 58 element descriptors, min-max scaled.

- **Bag-of-atoms**: for each element of the training table, sorted by atomic number, its atomic
  fraction (89 elements for the Materials Project table).
- **Descriptors**: the composition-weighted average of 58 elemental properties. The paper used
  XenonPy's ``elements_completed`` table (58 features). ``pip install xenonpy`` (0.6.7) works, but
  its element table is downloaded on first use (``preset.sync``) and so cannot load offline; this
  module therefore uses the **Magpie element table shipped with matminer**
  (``matminer.utils.data.MagpieData``), which works offline. Magpie has 63 scalar elemental
  properties; the 58 used are all of them except HHIp and HHIr (economic indices), HeatFusion
  (the same quantity as FusionEnthalpy), ThermalConductivity (LogThermalConductivity is kept) and
  SpaceGroupNumber (a label, not a quantity). Missing values are filled with the property's mean
  over the table's elements (the role of XenonPy's "completed" table).
- **Scaling**: every column and the target are min-max scaled with the training table's min and
  max, ``(x - min) / (max - min + 1e-6)`` (the original's ``normalize_for_train``).

Shapes: features ``(n, n_elements + 58)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: The 58 Magpie properties (see the module docstring).
MAGPIE_PROPERTIES: tuple[str, ...] = (
    "AllenElectronegativity", "AtomicRadius", "AtomicVolume", "AtomicWeight", "BoilingT", "BulkModulus",
    "Column", "CovalentRadius", "Density", "DipolePolarizability", "ElectronAffinity", "Electronegativity",
    "FirstIonizationEnergy", "FusionEnthalpy", "GSbandgap", "GSenergy_pa", "GSestBCClatcnt", "GSestFCClatcnt",
    "GSmagmom", "GSvolume_pa", "HeatCapacityMass", "HeatCapacityMolar", "HeatVaporization", "ICSDVolume",
    "IsAlkali", "IsDBlock", "IsFBlock", "IsMetal", "IsMetalloid", "IsNonmetal", "LogThermalConductivity",
    "MeltingT", "MendeleevNumber", "MiracleRadius", "MolarVolume", "NUnfilled", "NValence", "NdUnfilled",
    "NdValence", "NfUnfilled", "NfValence", "NpUnfilled", "NpValence", "NsUnfilled", "NsValence", "Number",
    "Polarizability", "Row", "SecondIonizationEnergy", "ShearModulus", "VdWRadius", "ZungerPP-r_d",
    "ZungerPP-r_p", "ZungerPP-r_pi", "ZungerPP-r_s", "ZungerPP-r_sigma", "n_ws^third", "phi",
)
DESCRIPTOR_SOURCE = "matminer Magpie element table (58 scalar properties; XenonPy's table needs a download)"
EPS = 1e-6


def element_table(elements: Sequence[str]) -> np.ndarray:
    """The 58 Magpie properties of ``elements`` (missing values: the property's mean).

    Shapes: ``(len(elements), 58)``.
    """
    from matminer.utils.data import MagpieData

    data = MagpieData().all_elemental_props
    table = np.full((len(elements), len(MAGPIE_PROPERTIES)), np.nan)
    for j, prop in enumerate(MAGPIE_PROPERTIES):
        column = data[prop]
        for i, el in enumerate(elements):
            value = column.get(el)
            if isinstance(value, int | float | np.floating | np.integer) and np.isfinite(value):
                table[i, j] = float(value)
    means = np.nanmean(np.where(np.isfinite(table), table, np.nan), axis=0)
    means = np.where(np.isfinite(means), means, 0.0)
    return np.where(np.isfinite(table), table, means)


@dataclass
class Featurizer:
    """Bag-of-atoms + weighted descriptors, and the min-max scaling fitted on the training table.

    Attributes:
        elements: the bag-of-atoms elements, sorted by atomic number.
        table: Shapes: ``(n_elements, 58)`` element descriptors.
        x_min, x_max: column minima and maxima of the raw features (training table).
        y_min, y_max: range of the training property (eV/atom).
    """

    elements: tuple[str, ...]
    table: np.ndarray
    x_min: np.ndarray
    x_max: np.ndarray
    y_min: float
    y_max: float

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def dim(self) -> int:
        return self.n_elements + self.table.shape[1]

    @classmethod
    def fit(cls, fractions: np.ndarray, elements: Sequence[str], y: np.ndarray) -> Featurizer:
        """Fit the scaling on atomic-fraction rows ``(n, n_elements)`` and targets ``(n,)``."""
        table = element_table(elements)
        raw = np.hstack([fractions, fractions @ table])
        return cls(tuple(elements), table, raw.min(0), raw.max(0), float(np.min(y)), float(np.max(y)))

    def raw(self, fractions: np.ndarray) -> np.ndarray:
        """Unscaled features of atomic-fraction rows."""
        f = np.atleast_2d(np.asarray(fractions, dtype=float))
        return np.hstack([f, f @ self.table])

    def transform(self, fractions: np.ndarray) -> np.ndarray:
        """Scaled features in [0, 1] (training range)."""
        return (self.raw(fractions) - self.x_min) / (self.x_max - self.x_min + EPS)

    def inverse_fractions(self, scaled: np.ndarray) -> np.ndarray:
        """The bag-of-atoms part of scaled features, un-scaled (not yet thresholded or normalised)."""
        s = np.atleast_2d(np.asarray(scaled, dtype=float))[:, :self.n_elements]
        span = self.x_max[:self.n_elements] - self.x_min[:self.n_elements] + EPS
        return s * span + self.x_min[:self.n_elements]

    def scale_y(self, y: np.ndarray | float) -> np.ndarray:
        return (np.asarray(y, dtype=float) - self.y_min) / (self.y_max - self.y_min + EPS)

    def unscale_y(self, s: np.ndarray | float) -> np.ndarray:
        return np.asarray(s, dtype=float) * (self.y_max - self.y_min + EPS) + self.y_min

    def fractions_of(self, compositions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Atomic-fraction rows of element -> amount mappings (elements outside the table are an error).

        Raises:
            KeyError: an element the model does not know.
        """
        index = {el: i for i, el in enumerate(self.elements)}
        out = np.zeros((len(compositions), self.n_elements))
        for r, comp in enumerate(compositions):
            total = float(sum(comp.values()))
            for el, amt in comp.items():
                out[r, index[str(el)]] = amt / total
        return out

    def to_dict(self) -> dict:
        """JSON-safe form (stored in the manifest)."""
        return {"elements": list(self.elements), "x_min": self.x_min.tolist(), "x_max": self.x_max.tolist(),
                "y_min": self.y_min, "y_max": self.y_max, "descriptors": list(MAGPIE_PROPERTIES),
                "descriptor_source": DESCRIPTOR_SOURCE}

    @classmethod
    def from_dict(cls, d: Mapping) -> Featurizer:
        elements = tuple(d["elements"])
        return cls(elements, element_table(elements), np.asarray(d["x_min"], dtype=float),
                   np.asarray(d["x_max"], dtype=float), float(d["y_min"]), float(d["y_max"]))
