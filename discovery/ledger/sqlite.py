"""Append-only SQLite ledger: the single source of truth of a campaign.

The driver is the only writer (enforced with an exclusive lock file); readers such as
``discovery status`` open the database read-only while a campaign runs (WAL mode).
Records are never updated or deleted. ``candidate`` and ``evaluation`` rows are unique by key,
so writing the same result twice is a no-op (idempotent by ``(candidate_id, oracle_fingerprint,
attempt)``).

A file that is not a whole campaign ledger (random bytes, a truncated copy, an empty file, another
program's database) is refused with one `LedgerError` line, and every `sqlite3` error becomes one;
readers and `check_ledger` write nothing beside such a file (no -wal/-shm files).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
COLUMNS = "seq, kind, key, round, payload, created"  # what a campaign's records table holds
_REMEDY = "restore it from a backup or start a new --out"


def _ledger_error(path: Path, exc: sqlite3.Error) -> LedgerError:
    """One line for an `sqlite3` error, naming the file and, where it is, the damage."""
    text = str(exc)
    if "no such table" in text or "no such column" in text:
        return LedgerError(f"{path}: not a campaign ledger ({text}); {_REMEDY}")
    if "malformed" in text or "not a database" in text:
        return LedgerError(f"{path}: damaged ({text}); {_REMEDY}")
    if any(m in text for m in ("disk I/O error", "database or disk is full", "readonly database")):
        return LedgerError(f"{path}: cannot write ({text}: a full disk, a file-size limit or a read-only "
                           "folder?); free space or fix the folder, then continue with --resume")
    return LedgerError(f"{path}: {text}")


def _open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the ledger at ``path`` that writes nothing beside it.

    While a driver writes (or after one was killed) the newest records sit in the -wal file, which
    only a shared-memory connection reads; otherwise the file is whole and ``immutable`` reads it
    without creating -wal/-shm files.

    Raises:
        LedgerError: the file is missing, empty, not SQLite, or has no campaign ``records`` table.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise LedgerError(f"{path}: no campaign ledger here") from None
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read the ledger ({exc.strerror or exc})") from None
    if not head:
        raise LedgerError(f"{path}: empty file, not a campaign ledger; {_REMEDY}")
    if head != SQLITE_MAGIC:
        raise LedgerError(f"{path}: not an SQLite database; {_REMEDY}")
    live = path.with_name(path.name + "-wal").exists()
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("" if live else "&immutable=1")
    db = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        db.execute(f"SELECT {COLUMNS} FROM records LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        db.close()
        raise _ledger_error(path, exc) from None
    return db


def check_ledger(path: str | Path) -> None:
    """Check, before a driver writes into it, that ``path`` is a whole campaign ledger: every page
    is read (``PRAGMA quick_check``); nothing is written.

    Raises:
        LedgerError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    db = _open_reader(path)
    try:
        problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as exc:
        raise _ledger_error(path, exc) from None
    finally:
        db.close()
    if problem != "ok":
        raise LedgerError(f"{path}: damaged ({str(problem)[:120]}); {_REMEDY}")


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
            try:
                self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")  # a recorded DFT result survives a power cut
                self.db.executescript(SCHEMA)
            except sqlite3.Error as exc:
                self._lock.release()
                self._lock = None
                raise _ledger_error(self.path, exc) from None
        else:
            self.db = _open_reader(self.path)

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """Turn any `sqlite3` error (damage found while reading, a full disk) into one `LedgerError`."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _ledger_error(self.path, exc) from None

    # ------------------------------------------------------------------ writing

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every `append` inside one all-or-nothing write: a driver killed half-way leaves none
        of them behind (a round's decisions are recorded whole or not at all). Not re-entrant."""
        if not self.writer:
            raise LedgerError(f"{self.path}: opened read-only")
        with self._sqlite_errors():
            self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            with self._sqlite_errors():
                self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # sqlite may have rolled back already (a full disk)
                with contextlib.suppress(sqlite3.Error):  # the error in flight is the one to report
                    self.db.execute("ROLLBACK")
            raise

    def append(self, kind: str, key: str, payload: Record | dict[str, Any], round: int = -1) -> bool:
        """Append one record; returns False when a unique record with this key already exists."""
        if not self.writer:
            raise LedgerError(f"{self.path}: opened read-only")
        if kind not in KINDS:
            raise LedgerError(f"unknown record kind {kind!r}")
        text = payload.model_dump_json() if isinstance(payload, Record) else json.dumps(payload)
        with self._sqlite_errors():
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
        with self._sqlite_errors():
            for key, rnd, payload, created in self.db.execute(
                "SELECT key, round, payload, created FROM records WHERE kind = ? ORDER BY seq", (kind,)
            ):
                yield key, rnd, json.loads(payload), created

    def times(self) -> list[float]:
        """When each record was appended, in append order (Units: s since the epoch)."""
        with self._sqlite_errors():
            return [created for (created,) in self.db.execute("SELECT created FROM records ORDER BY seq")]

    def candidates(self) -> dict[str, Candidate]:
        return {key: Candidate.model_validate(p) for key, _, p, _ in self.rows("candidate")}

    def evaluations(self, fidelity: str | None = None) -> list[Evaluation]:
        out = [Evaluation.model_validate(p) for _, _, p, _ in self.rows("evaluation")]
        return [e for e in out if fidelity is None or e.fidelity == fidelity]

    def evaluation_keys(self) -> set[str]:
        with self._sqlite_errors():
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
        with self._sqlite_errors():
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
