"""Reading and writing our torch checkpoints safely: one format check, one error style.

Every checkpoint is a dict with ``format``, ``version`` and ``config`` written atomically, and read
back with ``torch.load(..., weights_only=True)`` (no pickled code runs). Anything wrong with the
file is one `DataError` line that names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from discovery.errors import DataError
from discovery.fileio import atomic_write

MISSING = "<missing>"


def first_line(exc: BaseException) -> str:
    """The exception as one short line (torch's state-dict errors span several lines)."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` next to ``path``, then moved into place (`discovery.fileio.atomic_write`): a
    crash or a full disk never leaves half a file under ``path``, and the previous one stays.

    Raises:
        OSError: the file could not be written (a full disk is ``ENOSPC``, not torch's RuntimeError).
    """
    import torch

    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(dict(payload), fh)
    return path


def read_checkpoint(path: str | Path, fmt: str, version: int, kind: str | None = None) -> dict[str, Any]:
    """The payload of a checkpoint of format ``fmt`` and ``version`` (and ``kind``, when given).

    Raises:
        DataError: missing, unreadable or damaged file, another format, kind or version, or no
            config mapping.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise DataError(f"{path}: not a readable torch checkpoint ({first_line(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(f"{path}: format {found!r} is not a {fmt!r} checkpoint")
    if kind is not None and payload.get("kind") != kind:
        raise DataError(f"{path}: checkpoint holds a {payload.get('kind')!r} model, expected {kind!r}")
    if payload.get("version") != version:
        raise DataError(f"{path}: checkpoint version {payload.get('version')!r}, expected {version}")
    if not isinstance(payload.get("config"), dict):
        raise DataError(f"{path}: checkpoint has no config mapping")
    return payload


def check_config(path: str | Path, stored: Mapping[str, Any], expected: Mapping[str, Any],
                 ignore: Iterable[str] = ()) -> None:
    """Raise `DataError` listing every key where the file's config differs from ``expected``."""
    skip = set(ignore)
    diff = sorted(k for k in set(stored) | set(expected)
                  if k not in skip and stored.get(k, MISSING) != expected.get(k, MISSING))
    if diff:
        detail = "; ".join(f"{k}: file has {stored.get(k, MISSING)!r}, expected {expected.get(k, MISSING)!r}"
                           for k in diff)
        raise DataError(f"{path}: checkpoint config does not match ({detail})")


# ----------------------------------------------------------------------------- whole modules


def _plain(value: Any, where: str) -> Any:
    """Check that ``value`` loads under ``weights_only=True``; tuples become lists."""
    import torch

    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is not a str or int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a weights-only checkpoint")


def normalise_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A constructor-argument mapping as a checkpoint stores it (plain JSON values)."""
    import json

    return json.loads(json.dumps(_plain(dict(config), "config")))


def save_module(path: str | Path, fmt: str, version: int, kind: str, config: Mapping[str, Any],
                state_dict: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Path:
    """Write one torch module as a checkpoint: its constructor arguments (``config``), its weights
    (copied to the CPU) and JSON-like ``extra`` (history, metrics), atomically.

    Raises:
        TypeError: ``config`` or ``extra`` holds a value a weights-only load would refuse.
    """
    payload = {
        "format": fmt,
        "kind": kind,
        "version": version,
        "config": normalise_config(config),
        "state": {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()},
        "extra": _plain(dict(extra or {}), "extra"),
    }
    return write_checkpoint(path, payload)


def load_module(path: str | Path, fmt: str, version: int, kind: str, module_cls: type,
                expected_config: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint written by `save_module` and rebuild its module.

    The stored constructor arguments must equal ``expected_config`` key by key (tuples and lists
    compare equal); the module is rebuilt as ``module_cls(**config)``, loaded strictly, on the CPU
    in eval mode.

    Returns:
        The payload (``format``, ``kind``, ``version``, ``config``, ``state``, ``extra``) plus
        ``model``, the rebuilt module.

    Raises:
        DataError: one line naming the file when it is missing, unreadable or damaged, of another
            format, kind or version, written for another configuration, or when its weights do not
            fit the module.
    """
    import torch

    payload = read_checkpoint(path, fmt, version, kind)
    mine = normalise_config(expected_config)
    check_config(path, payload["config"], mine)
    state = payload.get("state")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: checkpoint has no state dict of tensors")
    try:
        model = module_cls(**mine)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: weights do not fit a {kind} of this configuration ({first_line(exc)})"
                        ) from exc
    model.eval()
    payload["model"] = model
    return payload
