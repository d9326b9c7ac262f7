"""The interfaces every component implements (structural typing, no base classes needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from discovery.posterior import Posterior
from discovery.records import Candidate, Evaluation, FitReport, Prediction, Selection


@runtime_checkable
class Generator(Protocol):
    name: str
    version: str

    def propose(self, n: int, conditions: dict[str, Any], rng: np.random.Generator) -> list[Candidate]:
        """Return up to ``n`` new candidates for ``conditions``."""

    def update(self, feedback: dict[str, Any]) -> dict[str, Any] | None:
        """Take new labels, hits and known structures into account for later proposals.

        ``feedback``: ``known`` (Candidates), ``hits`` (candidate ids), ``labels`` ((Candidate,
        value) pairs), ``property`` (what the labels are), ``round``. Returns the generator's
        conditions after the update (JSON-able; recorded in the ledger every round), or None."""


@runtime_checkable
class Surrogate(Protocol):
    property: str

    def fit(self, candidates: Sequence[Candidate], targets: Sequence[float]) -> FitReport: ...

    def predict(self, candidates: Sequence[Candidate]) -> list[Prediction]: ...

    def predict_members(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Every ensemble member's prediction, spread by the calibrated variance scale.
        Shapes: (n_members, n)."""

    def embed(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Learned per-crystal embedding (used for batch diversity). Shapes: (n, d)."""


@runtime_checkable
class Oracle(Protocol):
    name: str
    fidelity: str

    @property
    def fingerprint(self) -> str:
        """Hash of every setting that changes the numbers it returns."""

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """Never raises for a scientific failure: returns ``status="failed"`` instead."""


@runtime_checkable
class Policy(Protocol):
    name: str
    needs_surrogate: bool

    def select(self, pool: Sequence[Candidate], posterior: Posterior, k: int,
               context: dict[str, Any]) -> Selection:
        """Pick ``k`` of ``pool`` from the surrogates' beliefs (see `discovery.posterior`)."""

    def observe(self, evaluations: Sequence[Evaluation]) -> None: ...


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """A `Tracker` for tracking switched off (and for model training outside a campaign)."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...
