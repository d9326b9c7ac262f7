"""Atomic file writes: whoever reads a file later (a user, ``--resume``, a worker) finds the old
file or the whole new one, never half of one.

`atomic_write` writes into a temporary file in the target's folder (same file system, so the
final ``os.replace`` is atomic), flushes and fsyncs it, moves it onto the target and fsyncs the
folder. On any error (a full disk, a file-size limit, a read-only folder, Ctrl-C) the temporary file
is removed, the target is left as it was and the error propagates unchanged (an `OSError` with
its ``errno`` for storage faults; the command line turns those into one line).

Every file the package writes for later reading goes through here; appends to ``*.jsonl`` logs are
the exception (each line is written with one ``write`` and readers skip a torn last line).
Standard library only: worker subprocesses use it before any heavy import.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["STORAGE_ERRNOS", "atomic_write", "storage_error", "write_bytes_atomic", "write_text_atomic"]

#: ``errno`` values of a storage fault: no space (or quota), a file-size limit, a read-only or
#: non-writable folder, a failing device.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                            errno.EIO})


def _temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file next to ``path`` (usual permissions, unique per writer).

    Raises:
        OSError: it cannot be created (a read-only folder, a full disk), naming ``path``.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse a folder fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the block ends without error.

    Args:
        path: the final file; its folder is created when missing.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: text encoding (ignored for bytes).
        newline: as for `open` (``""`` for the csv module).

    Raises:
        OSError: the file could not be written (``ENOSPC``, ``EFBIG``, ``EROFS``, ``EACCES``, ...);
            ``path`` is unchanged and no temporary file is left behind.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode {mode!r}, expected 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        fault = storage_error(exc)
        if fault is not None and not fault.filename:  # a write on an open file names none
            raise OSError(fault.errno, fault.strerror, str(path)) from None
        if fault is not None and fault is not exc:  # torch wraps the OSError in a RuntimeError
            raise fault from None
        raise
    _fsync_folder(path.parent)


def storage_error(exc: BaseException) -> OSError | None:
    """The storage fault (an `OSError` whose errno is in `STORAGE_ERRNOS`) that ``exc`` is or was
    raised while handling, else None. Writers such as ``torch.save`` report a full disk as a
    ``RuntimeError`` whose context is the file's `OSError`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        if not isinstance(current, Exception):  # Ctrl-C is never a storage fault
            return None
        current = current.__cause__ or current.__context__
    return None


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (`atomic_write`); returns ``path``."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (`atomic_write`); returns ``path``."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)
