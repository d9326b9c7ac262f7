"""A labelled table as the oracle: retrospective campaigns that cost no DFT.

`ReplayTable` holds the pool (the table's structures) and its property columns; `ReplayOracle`
answers `evaluate` from it with fidelity ``replay``, so replayed numbers can never be mistaken for,
or mixed with, DFT results. `SimulatedCheapOracle` is a stand-in for a cheap fidelity (an MLIP):
the table's value plus a fixed per-candidate Gaussian error of a stated size, for the cost-aware
multi-fidelity policy in replay benchmarks. It is a simulation and is named as one.

Tables come from a CDVAE CSV (CIF strings plus numeric columns) or from a folder of CIF files plus
a CSV of labels whose ``file`` column names the CIF (the file name, with or without ``.cif``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from discovery.errors import DataError
from discovery.records import Candidate, Evaluation, Failure, Fidelity, Provenance

CODE_VERSION = "1"


@dataclass
class ReplayTable:
    """A pool of candidates with their labels.

    Attributes:
        candidates: the pool, one candidate per distinct structure, in table order.
        values: property -> (n,) array aligned with ``candidates``; NaN where a row has no value.
        source: where it was read from.
        n_corrupt: rows or files skipped because their structure could not be read.
        bad_values: property -> why some of its cells gave no value (the loader's
            ``LoadedData.bad_values``), so an error about too few labels can name the cause.
    """

    candidates: list[Candidate]
    values: dict[str, np.ndarray]
    source: str = ""
    n_corrupt: int = 0
    bad_values: dict[str, str] = field(default_factory=dict)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {c.id: i for i, c in enumerate(self.candidates)}
        for prop, arr in self.values.items():
            if len(arr) != len(self.candidates):
                raise ValueError(f"column {prop!r} has {len(arr)} values for {len(self.candidates)} rows")

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def properties(self) -> list[str]:
        return sorted(self.values)

    def require(self, properties: Sequence[str]) -> None:
        """Raise `DataError` naming the table if a needed column is missing or empty."""
        for prop in properties:
            if prop in self.bad_values and (prop not in self.values or not np.isfinite(self.values[prop]).any()):
                raise DataError(f"{self.source}: column {prop!r} has no numeric values: {self.bad_values[prop]}")
            if prop not in self.values:
                raise DataError(f"{self.source}: no column {prop!r} (columns: {', '.join(self.properties)})")
            if not np.isfinite(self.values[prop]).any():
                raise DataError(f"{self.source}: column {prop!r} has no numeric values")

    @cached_property
    def content_hash(self) -> str:
        """sha256 over candidate ids and values: identifies the table in fingerprints and caches."""
        h = hashlib.sha256()
        for c in self.candidates:
            h.update(c.id.encode())
        for prop in self.properties:
            h.update(prop.encode())
            h.update(np.ascontiguousarray(self.values[prop], dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_labels(cls, candidates: Sequence[Candidate], labels: dict[str, dict[str, float]],
                    source: str = "", n_corrupt: int = 0, bad_values: dict[str, str] | None = None) -> ReplayTable:
        cands = [c for c in candidates if c.id in labels]
        props = sorted({p for c in cands for p in labels[c.id]})
        values = {p: np.array([labels[c.id].get(p, math.nan) for c in cands], dtype=float) for p in props}
        return cls(cands, values, source=source, n_corrupt=n_corrupt, bad_values=dict(bad_values or {}))


def load_replay_table(cdvae_csv: Path | None = None, cif_dir: Path | None = None,
                      labels_csv: Path | None = None, max_rows: int | None = None) -> ReplayTable:
    """Read a table from a CDVAE CSV, or from a CIF folder plus a labels CSV.

    Raises:
        DataError: missing files, no structures, or a labels CSV without a ``file`` column.
    """
    from discovery.data.loaders import load_cdvae_csv, load_cif_dir

    if cdvae_csv is not None:
        data = load_cdvae_csv(cdvae_csv, max_rows=max_rows)
        table = ReplayTable.from_labels(data.candidates, data.labels, str(cdvae_csv), data.n_corrupt,
                                        data.bad_values)
    elif cif_dir is not None and labels_csv is not None:
        data = load_cif_dir(cif_dir)
        labels = _read_labels_csv(Path(labels_csv))
        by_file = {}
        for cand in data.candidates:
            name = str(cand.conditions.get("source", ""))
            row = labels.get(name) or labels.get(Path(name).stem)
            if row is not None:
                by_file[cand.id] = row
        table = ReplayTable.from_labels(data.candidates[:max_rows], by_file, f"{cif_dir} + {labels_csv}",
                                        data.n_corrupt)
    else:
        raise DataError("replay table: give a CDVAE CSV, or a CIF folder together with a labels CSV")
    if not len(table):
        raise DataError(f"{table.source}: no labelled structures could be read")
    return table


def _read_labels_csv(path: Path) -> dict[str, dict[str, float]]:
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found")
    out: dict[str, dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "file" not in reader.fieldnames:
            raise DataError(f"{path}: labels CSV needs a 'file' column naming each CIF")
        for row in reader:
            values = {}
            for key, raw in row.items():
                if key == "file" or raw in (None, ""):
                    continue
                try:
                    v = float(raw)
                except ValueError:
                    continue
                if math.isfinite(v):
                    values[key] = v
            name = row["file"].strip()
            out[name] = values
            out.setdefault(Path(name).stem, values)
    return out


class ReplayOracle:
    """Answers from a `ReplayTable`; fidelity ``replay``.

    Args:
        table: the labelled pool.
        properties: the columns it reveals (all columns by default).
    """

    name = "replay"
    fidelity = Fidelity.REPLAY

    def __init__(self, table: ReplayTable, properties: Sequence[str] | None = None):
        self.table = table
        self.properties = list(properties) if properties is not None else table.properties
        table.require(self.properties)

    @cached_property
    def fingerprint(self) -> str:
        blob = json.dumps({"table": self.table.content_hash, "properties": self.properties}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def values(self, idx: int) -> dict[str, float]:
        """The revealed properties of pool row ``idx`` (NaN-valued columns left out)."""
        out = {}
        for p in self.properties:
            v = float(self.table.values[p][idx])
            if math.isfinite(v):
                out[p] = v
        return out

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """The table's row for ``candidate``; a candidate not in the table is a failed evaluation."""
        t0 = time.perf_counter()
        idx = self.table.index.get(candidate.id)
        common = dict(candidate_id=candidate.id, fidelity=self.fidelity, oracle=self.name,
                      oracle_fingerprint=self.fingerprint)
        if idx is None:
            return Evaluation(status="failed", **common,
                              failure=Failure(error_class="NotInTable",
                                              message=f"{candidate.formula} is not in {self.table.source}"),
                              provenance=self._provenance(t0))
        values = self.values(idx)
        energy = values.get("energy_per_atom")
        return Evaluation(status="ok", **common, energy_per_atom=energy, properties=values,
                          relaxed_structure=candidate.structure, provenance=self._provenance(t0))

    def _provenance(self, t0: float) -> Provenance:
        return Provenance(code="replay-table", code_version=CODE_VERSION,
                          settings_fingerprint=self.fingerprint, wall_s=time.perf_counter() - t0)


class SimulatedCheapOracle:
    """A simulated cheap fidelity: the table's value plus ``bias`` and a Gaussian error of
    ``noise_std`` that is fixed per candidate (asking twice gives the same number, as a
    deterministic MLIP would).

    Units: those of each property.
    """

    name = "replay-cheap"

    def __init__(self, table: ReplayTable, properties: Sequence[str], noise_std: float, bias: float = 0.0,
                 seed: int = 0):
        self.table = table
        self.properties = list(properties)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC4EA,)))
        self._noise = {p: bias + noise_std * rng.standard_normal(len(table)) for p in self.properties}

    def __call__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=int)
        return {p: self.table.values[p][idx] + self._noise[p][idx] for p in self.properties}
