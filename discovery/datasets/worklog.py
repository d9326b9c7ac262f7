"""The work file of a data set build: one JSON line per finished relaxation, appended atomically.

Each result is written with a single ``os.write`` on a file opened with ``O_APPEND`` and then
``fsync``-ed, so a line is either wholly in the file or not at all as far as a later reader is
concerned; a line cut short by a kill (no final newline, or not JSON) is dropped when the file is
opened again (the file is truncated back to its last complete line before anything is appended).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class WorkLog:
    """Append-only record of finished jobs, keyed by job id.

    Args:
        path: the ``.jsonl`` file (created when missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, dict[str, Any]] = {}
        self._repair_and_read()

    def _repair_and_read(self) -> None:
        if not self.path.is_file():
            self.path.touch()
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning("%s: dropping %d bytes of a line cut short", self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.results[str(record["job"])] = record
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: line %d unreadable; the job will run again", self.path, number)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.results

    def __len__(self) -> int:
        return len(self.results)

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished job (``record["job"]`` is its id) as one line, durably."""
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write on a full disk: never leave a partial line behind
                raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.results[str(record["job"])] = record
