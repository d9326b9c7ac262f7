"""What counts as a hit, as data: bounds on properties, all of which must hold.

A campaign's objective is one bound (``e_above_hull <= 0.05`` eV/atom); a retrospective benchmark can
ask for a window on several properties at once ("stable AND 1.5 <= gap <= 3.0 eV"). Policies never
look at properties directly: they score the *utility* of a candidate,

    u(y) = min over bounds of the signed margin to that bound, divided by the property's scale,

which is >= 0 exactly for hits, so "maximise u" and "make u >= 0" are the same goal for any
number of properties. Scales (typical spread of each property, from the labels) make margins of
different properties comparable.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import Field, model_validator
from scipy.stats import norm

from discovery.configbase import Strict


class Bound(Strict):
    """``min <= property <= max``; either side may be open. Units: those of the property."""

    property: str = Field(..., min_length=1)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_side(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a bound needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Objective(Strict):
    """A named set of bounds; a candidate is a hit when every bound holds."""

    name: str = Field("objective", pattern=r"^[A-Za-z0-9_.-]+$")
    bounds: list[Bound] = Field(..., min_length=1)

    @property
    def properties(self) -> list[str]:
        """The properties the bounds mention, in order, without repeats."""
        return list(dict.fromkeys(b.property for b in self.bounds))

    def is_hit(self, values: Mapping[str, float]) -> bool:
        """Whether every bound holds for one candidate's ``values`` (a missing value is not a hit)."""
        for b in self.bounds:
            v = values.get(b.property)
            if v is None or not np.isfinite(v):
                return False
            if (b.min is not None and v < b.min) or (b.max is not None and v > b.max):
                return False
        return True

    def utility(self, values: Mapping[str, np.ndarray], scales: Mapping[str, float] | None = None
                ) -> np.ndarray:
        """Scaled signed margin to the nearest bound: >= 0 for hits, larger is better.

        Args:
            values: property -> array of any shape (all the same shape), e.g. (n,) means or
                (members, n) samples.
            scales: property -> positive typical spread; 1.0 where missing.

        Shapes: output has the shape of the inputs.
        """
        scales = scales or {}
        margins = []
        for b in self.bounds:
            v = np.asarray(values[b.property], dtype=float)
            s = float(scales.get(b.property, 1.0)) or 1.0
            if b.min is not None:
                margins.append((v - b.min) / s)
            if b.max is not None:
                margins.append((b.max - v) / s)
        return np.minimum.reduce(margins)

    def probability(self, mean: Mapping[str, np.ndarray], std: Mapping[str, np.ndarray]) -> np.ndarray:
        """Probability that every bound holds under independent Gaussians per property.

        Shapes: (n,) in, (n,) out.
        """
        p = None
        for prop in self.properties:
            mu = np.asarray(mean[prop], dtype=float)
            sd = np.maximum(np.asarray(std[prop], dtype=float), 1e-9)
            lo = max((b.min for b in self.bounds if b.property == prop and b.min is not None),
                     default=-np.inf)
            hi = min((b.max for b in self.bounds if b.property == prop and b.max is not None),
                     default=np.inf)
            q = np.clip(norm.cdf((hi - mu) / sd) - norm.cdf((lo - mu) / sd), 0.0, 1.0)
            p = q if p is None else p * q
        return p

    def describe(self) -> str:
        """Human-readable form, e.g. ``heat_ref <= 0.2 AND 1.5 <= ind_gap <= 3``."""
        parts = []
        for b in self.bounds:
            if b.min is not None and b.max is not None:
                parts.append(f"{b.min:g} <= {b.property} <= {b.max:g}")
            elif b.max is not None:
                parts.append(f"{b.property} <= {b.max:g}")
            else:
                parts.append(f"{b.property} >= {b.min:g}")
        return " AND ".join(parts)
