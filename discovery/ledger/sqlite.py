"""Append-only SQLite ledger: the single source of truth of a campaign.

The driver is the only writer (enforced with an exclusive lock file); readers such as
``discovery status`` open the database read-only while a campaign runs (WAL mode).
Records are never updated or deleted. ``candidate`` and ``evaluation`` rows are unique by key,
so writing the same result twice is a no-op (idempotent by ``(candidate_id, oracle_fingerprint,
attempt)``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from discovery.errors import LedgerError
from discovery.records import Candidate, Evaluation, Record, Selection

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    round INTEGER NOT NULL DEFAULT -1,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS unique_results ON records(kind, key)
    WHERE kind IN ('candidate', 'evaluation');
CREATE INDEX IF NOT EXISTS by_kind ON records(kind, seq);
"""

# Kinds of rows. Anything else is refused so typos cannot silently create new streams.
KINDS = {"meta", "session", "candidate", "round", "selection", "submission", "evaluation", "fit", "bandit",
         "conditions"}


def evaluation_key(candidate_id: str, fingerprint: str, attempt: int = 1) -> str:
    """The key of a submission and of its result: ``candidate|settings`` for the first attempt,
    ``candidate|settings|attempt`` for retries."""
    return f"{candidate_id}|{fingerprint}" if attempt == 1 else f"{candidate_id}|{fingerprint}|{attempt}"


class SqliteLedger:
    """Campaign ledger in ``<campaign>/ledger.sqlite``.

    Args:
        path: database file.
        writer: take the single-writer lock (the driver); readers pass False.
    """

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock = None
        if writer:
            from filelock import FileLock, Timeout

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(self.path.with_suffix(".lock"), timeout=0)
            try:
                self._lock.acquire()
            except Timeout:
                self._lock = None
                raise LedgerError(f"{self.path}: another discovery driver is writing this campaign") from None
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a recorded DFT result survives a power cut
            self.db.executescript(SCHEMA)
        else:
            if not self.path.is_file():
                raise LedgerError(f"{self.path}: no campaign ledger here")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)

    # ------------------------------------------------------------------ writing

    def append(self, kind: str, key: str, payload: Record | dict[str, Any], round: int = -1) -> bool:
        """Append one record; returns False when a unique record with this key already exists."""
        if not self.writer:
            raise LedgerError(f"{self.path}: opened read-only")
        if kind not in KINDS:
            raise LedgerError(f"unknown record kind {kind!r}")
        text = payload.model_dump_json() if isinstance(payload, Record) else json.dumps(payload)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO records(kind, key, round, payload, created) VALUES (?, ?, ?, ?, ?)",
            (kind, key, round, text, time.time()),
        )
        return cur.rowcount == 1

    def add_candidate(self, candidate: Candidate) -> bool:
        return self.append("candidate", candidate.id, candidate, candidate.round)

    def add_evaluation(self, evaluation: Evaluation, round: int = -1) -> bool:
        key = evaluation_key(evaluation.candidate_id, evaluation.oracle_fingerprint, evaluation.attempt)
        return self.append("evaluation", key, evaluation, round)

    def add_selection(self, selection: Selection) -> None:
        self.append("selection", str(selection.round), selection, selection.round)

    # ------------------------------------------------------------------ reading

    def rows(self, kind: str) -> Iterator[tuple[str, int, dict[str, Any], float]]:
        """Yield ``(key, round, payload, created)`` of one kind in append order."""
        for key, rnd, payload, created in self.db.execute(
            "SELECT key, round, payload, created FROM records WHERE kind = ? ORDER BY seq", (kind,)
        ):
            yield key, rnd, json.loads(payload), created

    def candidates(self) -> dict[str, Candidate]:
        return {key: Candidate.model_validate(p) for key, _, p, _ in self.rows("candidate")}

    def evaluations(self, fidelity: str | None = None) -> list[Evaluation]:
        out = [Evaluation.model_validate(p) for _, _, p, _ in self.rows("evaluation")]
        return [e for e in out if fidelity is None or e.fidelity == fidelity]

    def evaluation_keys(self) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM records WHERE kind = 'evaluation'")}

    def selections(self) -> list[Selection]:
        return [Selection.model_validate(p) for _, _, p, _ in self.rows("selection")]

    def meta(self) -> dict[str, Any]:
        """All ``meta`` rows merged, later rows winning."""
        merged: dict[str, Any] = {}
        for _, _, p, _ in self.rows("meta"):
            merged.update(p)
        return merged

    def count(self, kind: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> SqliteLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
