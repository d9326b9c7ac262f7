"""Shared helpers of the composition model tests: a small synthetic composition table."""

from __future__ import annotations

import numpy as np

FORMULAS = ["NaCl", "KCl", "MgO", "CaO", "Al2O3", "Fe2O3", "LiF", "NaF", "CaF2", "SrTiO3", "BaTiO3", "ZnS",
            "GaN", "AlN", "TiO2", "SiO2", "MgF2", "Li2O", "K2O", "Y2O3", "LaF3", "CsI", "RbBr", "CuO"]


def write_table(path, rows):
    path.write_text("composition,formation_energy_per_atom\n" + "".join(f"{c},{e}\n" for c, e in rows))
    return path


def synthetic_table(tmp_path, n_copies=1):
    rng = np.random.default_rng(0)
    rows = [(f, -1.0 - 2.5 * rng.random()) for f in FORMULAS]
    return write_table(tmp_path / "table.csv", rows * n_copies)
