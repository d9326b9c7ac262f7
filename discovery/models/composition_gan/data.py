"""The composition table: formulas with a formation energy per atom (MODELS.md 3.1).

`read_composition_table` reads a CSV with columns ``composition`` (a formula such as ``TlAgTe2``) and
``formation_energy_per_atom`` (eV/atom). Rows whose formula cannot be parsed or names an unknown
element, and rows whose energy is not a finite number, are counted and skipped (logged once with
their counts); so are repeated compositions (same atomic fractions; the first row is kept, as the
paper removed duplicate compositions). A file that is missing, unreadable, lacks a column, or has
no usable row is one `DataError` line naming the file.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from discovery.errors import DataError

logger = logging.getLogger(__name__)

COMPOSITION_COLUMN = "composition"
PROPERTY_COLUMN = "formation_energy_per_atom"


@dataclass
class CompositionTable:
    """Usable rows of a composition table.

    Attributes:
        path: the file.
        formulas: reduced formulas, one per row.
        compositions: element -> atomic fraction per row.
        y: Shapes: ``(n,)`` formation energy per atom (eV/atom).
        skipped: reason -> number of rows skipped.
    """

    path: Path
    formulas: list[str]
    compositions: list[dict[str, float]]
    y: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.formulas)

    def elements(self) -> list[str]:
        """Every element of the table, sorted by atomic number."""
        from pymatgen.core import Element

        found = {el for comp in self.compositions for el in comp}
        return sorted(found, key=lambda s: Element(s).Z)


def _parse(formula: str) -> tuple[dict[str, float] | None, str]:
    """Element -> atomic fraction of a formula and its reduced formula, or (None, reason)."""
    from pymatgen.core import Composition, Element

    text = (formula or "").strip()
    if not text:
        return None, "empty formula"
    try:
        comp = Composition(text)
    except Exception:  # pymatgen raises several types for bad formulas
        return None, "unparsable formula"
    if comp.num_atoms <= 0:
        return None, "empty formula"
    amounts = comp.get_el_amt_dict()
    if any(not Element.is_valid_symbol(el) for el in amounts) or any(a <= 0 for a in amounts.values()):
        return None, "unknown element"
    total = sum(amounts.values())
    return {el: amt / total for el, amt in amounts.items()}, comp.reduced_formula


def read_composition_table(path: str | Path, max_rows: int | None = None) -> CompositionTable:
    """Read and check a composition CSV (see the module docstring).

    Raises:
        DataError: one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: composition table not found (expected a CSV with columns "
                        f"{COMPOSITION_COLUMN}, {PROPERTY_COLUMN})")
    formulas, comps, ys = [], [], []
    skipped: dict[str, int] = {}
    seen: set[tuple] = set()
    try:
        with open(path, newline="") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns about noble gases' missing electronegativity
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in (COMPOSITION_COLUMN, PROPERTY_COLUMN) if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found "
                                f"{', '.join(header[:6]) or 'no header'}); expected {COMPOSITION_COLUMN}, "
                                f"{PROPERTY_COLUMN}")
            for n_rows, row in enumerate(reader):
                if max_rows is not None and n_rows >= max_rows:
                    break
                try:
                    y = float(row.get(PROPERTY_COLUMN) or "nan")
                except ValueError:
                    y = math.nan
                if not math.isfinite(y):
                    skipped["non-numeric energy"] = skipped.get("non-numeric energy", 0) + 1
                    continue
                comp, reason = _parse(row.get(COMPOSITION_COLUMN) or "")
                if comp is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                key = tuple(sorted((el, round(f, 8)) for el, f in comp.items()))
                if key in seen:
                    skipped["duplicate composition"] = skipped.get("duplicate composition", 0) + 1
                    continue
                seen.add(key)
                formulas.append(reason)
                comps.append(comp)
                ys.append(y)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") \
            from None
    if not formulas:
        detail = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())) or "no rows"
        raise DataError(f"{path}: no usable row ({detail}); expected formulas of known elements in "
                        f"{COMPOSITION_COLUMN} and numbers in {PROPERTY_COLUMN}")
    if skipped:
        logger.warning("%s: skipped %s", path, ", ".join(f"{n} rows ({k})" for k, n in sorted(skipped.items())))
    return CompositionTable(path, formulas, comps, np.asarray(ys, dtype=float), skipped)
