"""Dataset loaders: CDVAE-format CSVs and folders of CIF files.

A CDVAE CSV has one crystal per row, the structure as a CIF string in column ``cif`` and numeric
property columns (``heat_ref``, ``dir_gap``, ``energy_per_atom``, ...). Rows whose CIF cannot be
parsed are counted, the first few reported, and skipped; a loader never crashes on bad data. A
missing file, or a file that is not a CDVAE CSV, is a user error: `DataError` with one line naming
the file.

The shared benchmark folder is found by `default_data_dir`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from discovery.errors import DataError
from discovery.records import Candidate

logger = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 5
ENV_DATA_DIR = "DISCOVERY_DATA_DIR"
# Columns that are identifiers or text, never labels.
_NON_LABEL_COLUMNS = {"", "cif", "formula", "material_id", "id", "index", "unnamed: 0", "pretty_formula"}


@dataclass
class LoadedData:
    """What a loader read.

    Attributes:
        candidates: one `Candidate` per distinct structure (generator ``dataset:<name>``).
        labels: candidate id -> numeric property columns of its row (first row for duplicates).
        n_rows: data rows (or CIF files) read.
        n_corrupt: rows or files whose CIF could not be parsed into an ordered structure.
        errors: the first few ``"row N: reason"`` (N counts data rows from 1) or
            ``"FILE: reason"`` messages.
        n_filtered: rows dropped by the ``elements`` filter.
        n_duplicates: rows whose structure has the id of an earlier row (not loaded twice).
        source: the file or folder read.
    """

    candidates: list[Candidate] = field(default_factory=list)
    labels: dict[str, dict[str, float]] = field(default_factory=dict)
    n_rows: int = 0
    n_corrupt: int = 0
    errors: list[str] = field(default_factory=list)
    n_filtered: int = 0
    n_duplicates: int = 0
    source: str = ""

    def _error(self, message: str) -> None:
        self.n_corrupt += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)
            logger.warning("%s: %s", self.source, message)


def default_data_dir() -> Path:
    """The shared data folder: ``$DISCOVERY_DATA_DIR``, else ``<repo root>/../shared/data``.

    The repo root is the parent of the ``discovery`` package folder.
    """
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data"


def parse_cif(text: str):
    """Parse one CIF string into an ordered pymatgen Structure (pymatgen warnings silenced).

    Raises:
        ValueError: unparsable, empty or disordered structure.
    """
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = Structure.from_str(text, fmt="cif")
        except Exception as exc:  # pymatgen raises many types on malformed CIFs
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"unparsable CIF ({msg[:120]})") from None
    if len(structure) == 0:
        raise ValueError("CIF has no sites")
    if not structure.is_ordered:
        raise ValueError("disordered structure (partial occupancies) is not supported")
    return structure


def _elements_ok(structure, elements: Collection[str] | None) -> bool:
    if elements is None:
        return True
    return {el.symbol for el in structure.composition.elements} <= set(elements)


def _formula_elements_ok(formula: str | None, elements: Collection[str] | None) -> bool | None:
    """Cheap pre-filter on a row's formula column; None when it cannot decide."""
    if elements is None or not formula:
        return None
    from pymatgen.core import Composition

    try:
        comp = Composition(formula)
    except Exception:
        return None
    return {str(getattr(el, "symbol", el)) for el in comp.elements} <= set(elements)


def _labels(row: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, raw in row.items():
        if key is None or key.strip().lower() in _NON_LABEL_COLUMNS or raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            out[key.strip()] = value
    return out


def load_cdvae_csv(
    path: str | Path, max_rows: int | None = None, elements: Collection[str] | None = None
) -> LoadedData:
    """Read a CDVAE-format CSV into candidates and labels.

    Args:
        path: the CSV file.
        max_rows: read at most this many data rows (before the element filter).
        elements: keep only rows whose elements are all in this set.

    Returns:
        `LoadedData`; corrupt rows are counted in ``n_corrupt`` and skipped.

    Raises:
        DataError: the file is missing, unreadable, or has no ``cif`` column.
    """
    from discovery.structures import make_candidate

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CDVAE CSV not found")
    data = LoadedData(source=str(path))
    generator = f"dataset:{path.stem}"
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "cif" not in [f.strip() for f in reader.fieldnames]:
                raise DataError(f"{path}: no 'cif' column (got {reader.fieldnames}); expected a CDVAE-format CSV")
            cif_key = next(f for f in reader.fieldnames if f.strip() == "cif")
            for row_number, row in enumerate(reader, start=1):
                if max_rows is not None and data.n_rows >= max_rows:
                    break
                data.n_rows += 1
                if _formula_elements_ok(row.get("formula"), elements) is False:
                    data.n_filtered += 1
                    continue
                try:
                    structure = parse_cif(row.get(cif_key) or "")
                except ValueError as exc:
                    data._error(f"row {row_number}: {exc}")
                    continue
                if not _elements_ok(structure, elements):
                    data.n_filtered += 1
                    continue
                conditions = {"source": path.name, "row": row_number}
                if row.get("material_id"):
                    conditions["material_id"] = row["material_id"]
                cand = make_candidate(structure, generator=generator, conditions=conditions)
                if cand.id in data.labels:
                    data.n_duplicates += 1
                    continue
                data.candidates.append(cand)
                data.labels[cand.id] = _labels(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from None
    logger.info(
        "%s: %d rows, %d loaded, %d corrupt, %d filtered, %d duplicates",
        path, data.n_rows, len(data.candidates), data.n_corrupt, data.n_filtered, data.n_duplicates,
    )
    return data


def load_cif_dir(path: str | Path, elements: Collection[str] | None = None) -> LoadedData:
    """Read every ``*.cif`` file of a folder (not recursive), in name order.

    Args:
        path: the folder.
        elements: keep only structures whose elements are all in this set.

    Returns:
        `LoadedData` with ``n_rows`` = files read, no labels (CIFs carry no property columns);
        corrupt files are counted and skipped; only the first structure of a multi-block CIF
        is read.

    Raises:
        DataError: the folder is missing.
    """
    from discovery.structures import make_candidate

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: CIF folder not found")
    data = LoadedData(source=str(path))
    generator = f"dataset:{path.name}"
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".cif")
    seen: set[str] = set()
    for file in files:
        data.n_rows += 1
        try:
            structure = parse_cif(file.read_text(errors="replace"))
        except (ValueError, OSError) as exc:
            data._error(f"{file.name}: {exc}")
            continue
        if not _elements_ok(structure, elements):
            data.n_filtered += 1
            continue
        cand = make_candidate(structure, generator=generator, conditions={"source": file.name})
        if cand.id in seen:
            data.n_duplicates += 1
            continue
        seen.add(cand.id)
        data.candidates.append(cand)
    logger.info("%s: %d CIF files, %d loaded, %d corrupt, %d filtered",
                path, data.n_rows, len(data.candidates), data.n_corrupt, data.n_filtered)
    return data
