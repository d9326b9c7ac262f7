"""Frozen, typed records that flow through a campaign and round-trip to JSON.

Structures travel as pymatgen ``Structure.as_dict()`` dictionaries so records stay plain data
(picklable for Ray, storable in SQLite) and never carry live calculator objects.
"""

from __future__ import annotations

import json
import socket
import time
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Fidelity(StrEnum):
    """Where a number comes from. Energies of different fidelities never share a hull."""

    SURROGATE = "surrogate"
    MLIP = "mlip"
    DFT = "dft"
    REPLAY = "replay"
    EMT = "emt"  # tests only


def _plain_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Normalise a structure dict to what JSON gives back (tuples become lists), so a record
    read from the ledger compares equal to the one that was written."""
    return None if value is None else json.loads(json.dumps(value))


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str):
        return cls.model_validate_json(text)


class Candidate(Record):
    """A proposed crystal with its lineage.

    Attributes:
        id: canonical content hash of the structure (see `structures.candidate_id`).
        structure: pymatgen ``Structure.as_dict()``.
        formula: reduced formula, for display and grouping.
        generator: name of the generator (or "seed"/"reference") that made it.
        generator_version: version string of that generator.
        parent_ids: ids of candidates it was derived from (substitution parents, ...).
        conditions: the condition vector the generator was asked for.
        round: campaign round in which it was proposed (-1 for seeds and references).
    """

    id: str
    structure: dict[str, Any]
    formula: str
    generator: str
    generator_version: str = "0"
    parent_ids: tuple[str, ...] = ()
    conditions: dict[str, Any] = Field(default_factory=dict)
    round: int = -1

    _structure = field_validator("structure")(_plain_json)

    @cached_property
    def pmg(self):
        """The pymatgen Structure (built once per record object)."""
        from pymatgen.core import Structure

        return Structure.from_dict(self.structure)

    @property
    def n_atoms(self) -> int:
        return len(self.structure["sites"])


class Prediction(Record):
    """Surrogate estimate of one property for one candidate.

    Units: eV/atom for energies.
    """

    candidate_id: str
    property: str
    mean: float
    std: float
    model: str
    round: int = -1


class Provenance(Record):
    """Where and how a record was produced."""

    code: str
    code_version: str
    settings_fingerprint: str
    host: str = Field(default_factory=socket.gethostname)
    started_at: float = Field(default_factory=time.time)
    wall_s: float = 0.0
    cpu_s: float = 0.0


class Failure(Record):
    """A failed calculation, kept as data."""

    error_class: str
    message: str
    traceback: str = ""
    retryable: bool = False


class Evaluation(Record):
    """An oracle's answer for one candidate at one fidelity.

    Units: energies in eV/atom; structures as pymatgen dicts.
    ``formation_energy_per_atom`` and ``e_above_hull`` are filled by the driver from the
    campaign's references of the same fidelity (`thermo`), not by the oracle. ``attempt`` is set
    by the driver: a retryable failure (a lost worker, a timeout on a preempted node) is submitted
    again, and each attempt is its own record.
    """

    candidate_id: str
    fidelity: Fidelity
    oracle: str
    oracle_fingerprint: str
    status: Literal["ok", "failed"]
    energy_per_atom: float | None = None
    relaxed_structure: dict[str, Any] | None = None
    properties: dict[str, float] = Field(default_factory=dict)
    failure: Failure | None = None
    provenance: Provenance
    extra: dict[str, Any] = Field(default_factory=dict)
    attempt: int = Field(1, ge=1, description="which submission of this candidate it answers (retries count up)")

    _relaxed = field_validator("relaxed_structure")(_plain_json)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def failed_evaluation(candidate_id: str, *, fidelity: str, oracle: str, fingerprint: str, error_class: str,
                      message: str, traceback: str = "", retryable: bool = False) -> Evaluation:
    """The record of a calculation that failed outside its oracle (a crashed worker, a lost node):
    failures are data, so the campaign records it like any other result."""
    return Evaluation(
        candidate_id=candidate_id, fidelity=fidelity, oracle=oracle, oracle_fingerprint=fingerprint, status="failed",
        failure=Failure(error_class=error_class, message=message[:500], traceback=traceback[-4000:],
                        retryable=retryable),
        provenance=Provenance(code=oracle, code_version="?", settings_fingerprint=fingerprint),
    )


class Selection(Record):
    """What a policy picked in one round, with the scores it used.

    Attributes:
        predictions: candidate id -> (mean, std) the surrogate predicted for the objective's first
            property, for the chosen candidates.
        cheap_evaluations: cheap-oracle calls the policy spent on this selection (multi-fidelity).
    """

    round: int
    policy: str
    candidate_ids: tuple[str, ...]
    scores: tuple[float, ...]
    predictions: dict[str, tuple[float, float]] = Field(default_factory=dict)
    cheap_evaluations: int = 0


class FitReport(Record):
    """What a surrogate fit did. Units: eV/atom for errors."""

    n_train: int
    n_val: int
    val_mae: float | None
    train_mae: float | None
    epochs: tuple[int, ...] = ()
    wall_s: float = 0.0
    checkpoint: str | None = None
    variance_scale: float = Field(1.0, description="factor on the predicted std, fitted on held-back labels")
