"""The work file of a data set build: one JSON line per finished relaxation, appended atomically.

Each result is written with a single ``os.write`` on a file opened with ``O_APPEND`` and then
``fsync``-ed, so a line is either wholly in the file or not at all as far as a later reader is
concerned; a line cut short by a kill (no final newline, or not JSON) is dropped when the file is
opened again (the file is truncated back to its last complete line before anything is appended).
Every line carries the hash of the config it was made for; lines of another config (a plan file
lost and a config changed since) are ignored, so a result is never reused for another structure.
"""

from __future__ import annotations

import errno
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
        tag: the config hash stamped on every line; lines with another are ignored.
    """

    def __init__(self, path: str | Path, tag: str = ""):
        self.path = Path(path)
        self.tag = tag
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
        foreign = 0
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("config_hash", "") != self.tag:
                    foreign += 1
                    continue
                self.results[str(record["job"])] = record
            except (ValueError, KeyError, TypeError, AttributeError):
                logger.warning("%s: line %d unreadable; the job will run again", self.path, number)
        if foreign:
            logger.warning("%s: %d results of another dataset config ignored", self.path, foreign)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.results

    def __len__(self) -> int:
        return len(self.results)

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished job (``record["job"]`` is its id) as one line, durably."""
        record = {**record, "config_hash": self.tag}
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a full disk; the torn line is dropped when the file is next opened
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)", str(self.path))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.results[str(record["job"])] = record
