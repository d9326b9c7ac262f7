"""Dataset loaders: CDVAE-format CSVs and folders of CIF files.

A CDVAE CSV has one crystal per row, the structure as a CIF string in column ``cif`` and numeric
property columns (``heat_ref``, ``dir_gap``, ``energy_per_atom``, ...). Rows whose CIF cannot be
parsed are counted, the first few reported, and skipped; a loader never crashes on bad data. So are
property cells that are not numbers (the row keeps its structure, that cell gives no label): a
column with some numbers is a property column and its other cells are reported; a column without
any number (``elements``, a note) is text and is not. A missing file, or a file that is not a
CDVAE CSV, is a user error: `DataError` with one line naming the file.

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
# Cells that say "no value" (pandas writes NaN as an empty cell; other tools write these): missing
# labels, not bad ones.
_MISSING = {"", "nan", "na", "n/a", "none", "null"}


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
        n_bad_values: cells of property columns (columns with at least one number) that are not
            numbers, in loaded rows; those cells give no label.
        bad_values: column -> ``"N of M cells of 'col' are not numbers (first: row R: 'text')"``,
            for every column with such cells, text columns included (for errors about a column
            that was asked for as a property).
        source: the file or folder read.
    """

    candidates: list[Candidate] = field(default_factory=list)
    labels: dict[str, dict[str, float]] = field(default_factory=dict)
    n_rows: int = 0
    n_corrupt: int = 0
    errors: list[str] = field(default_factory=list)
    n_filtered: int = 0
    n_duplicates: int = 0
    n_bad_values: int = 0
    bad_values: dict[str, str] = field(default_factory=dict)
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


class _ValueTally:
    """Per column: cells read, cells that are numbers, and the non-numbers (count, first one)."""

    def __init__(self) -> None:
        self.cells: dict[str, int] = {}
        self.numbers: dict[str, int] = {}
        self.bad: dict[str, tuple[int, int, str]] = {}  # column -> (count, first row, first text)

    def labels(self, row: dict[str, str], row_number: int) -> dict[str, float]:
        """The row's numeric cells as labels; every other non-empty cell is tallied."""
        out = {}
        for key, raw in row.items():
            if key is None or key.strip().lower() in _NON_LABEL_COLUMNS or raw is None:
                continue
            col, text = key.strip(), raw.strip()
            self.cells[col] = self.cells.get(col, 0) + 1
            if text.lower() in _MISSING:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                out[col] = value
                self.numbers[col] = self.numbers.get(col, 0) + 1
            else:  # text, or inf: no label, and worth saying so
                count, first_row, first = self.bad.get(col, (0, row_number, text))
                self.bad[col] = (count + 1, first_row, first)
        return out

    def report(self, data: LoadedData) -> None:
        """Fill ``data.bad_values``/``n_bad_values`` and warn about property columns."""
        for col, (count, first_row, first) in self.bad.items():
            shown = first if len(first) <= 40 else first[:37] + "..."
            data.bad_values[col] = (f"{count} of {self.cells[col]} cells of {col!r} are not numbers "
                                    f"(first: row {first_row}: {shown!r})")
            if self.numbers.get(col):  # a property column, not a text one
                data.n_bad_values += count
                logger.warning("%s: %s; those rows have no %s label", data.source, data.bad_values[col], col)


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
    tally = _ValueTally()
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
                data.labels[cand.id] = tally.labels(row, row_number)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from None
    tally.report(data)
    logger.info(
        "%s: %d rows, %d loaded, %d corrupt, %d filtered, %d duplicates, %d non-numeric property cells",
        path, data.n_rows, len(data.candidates), data.n_corrupt, data.n_filtered, data.n_duplicates,
        data.n_bad_values,
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
