"""Small labelled tables for replay tests: cubic ABX3 perovskites with made-up but smooth labels.

The labels are functions of textbook quantities (Goldschmidt tolerance factor, electronegativity
differences), so a surrogate that sees the structure can learn them, and about 5 % of the rows are
hits of ``heat <= HIT_THRESHOLD``. Nothing here claims physical accuracy; it is test data.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np

A_SITE = ["Li", "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "La", "Y", "Ag", "Tl"]
B_SITE = ["Ti", "Zr", "Hf", "Nb", "Ta", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Al", "Ga", "In", "Sn", "Ge"]
X_SITE = ["O", "F", "Cl", "N", "S"]


def _radius(symbol: str) -> float:
    from pymatgen.core import Element

    r = Element(symbol).average_ionic_radius
    return float(r) if r and r > 0 else float(Element(symbol).atomic_radius)


def _chi(symbol: str) -> float:
    from pymatgen.core import Element

    return float(Element(symbol).X)


def perovskite_rows(n_max: int | None = None, seed: int = 0) -> list[dict]:
    """Rows with a CIF, ``heat`` (eV/atom) and ``gap`` (eV), deterministic for a seed."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    rng = np.random.default_rng(seed)
    rows = []
    combos = list(itertools.product(A_SITE, B_SITE, X_SITE))
    if n_max is not None:
        combos = [combos[i] for i in sorted(rng.choice(len(combos), size=min(n_max, len(combos)), replace=False))]
    for a, b, x in combos:
        ra, rb, rx = _radius(a), _radius(b), _radius(x)
        t = (ra + rx) / (np.sqrt(2) * (rb + rx))
        lattice = 2 * (rb + rx)
        d_chi = _chi(x) - 0.5 * (_chi(a) + _chi(b))
        heat = 4.0 * (t - 0.95) ** 2 + 0.8 * np.exp(-d_chi) + 0.3 * (rb - 0.7) ** 2 + 0.03 * rng.standard_normal()
        gap = max(0.0, 2.2 * d_chi - 0.6 * abs(t - 1.0) + 0.1 * rng.standard_normal())
        s = Structure(Lattice.cubic(lattice), [a, b, x, x, x],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        rows.append({"material_id": f"syn-{a}{b}{x}3", "cif": str(CifWriter(s)), "formula": s.composition.reduced_formula,
                     "heat": round(float(heat), 5), "gap": round(float(gap), 4)})
    return rows


def write_table(path: Path, n_max: int | None = None, seed: int = 0) -> tuple[Path, float]:
    """Write a CDVAE-format CSV; returns (path, heat threshold that makes ~5 % of rows hits)."""
    rows = perovskite_rows(n_max, seed)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["material_id", "cif", "formula", "heat", "gap"])
        writer.writeheader()
        writer.writerows(rows)
    threshold = float(np.quantile([r["heat"] for r in rows], 0.05))
    return path, threshold
