"""Connecting to Ray: a cluster at an address, or a local instance started here."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

# Ray's C++ failure handler would print stack dumps ("*** SIGTERM received ***") for an ordinary
# `kill`; the CLI's own handler says it in one line. Read when ray is first imported.
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

import ray  # noqa: E402

from discovery.errors import InfrastructureError


def connect(address: str | None = None, num_cpus: int | None = None, **local: Any) -> bool:
    """Make sure this process is connected to Ray.

    Args:
        address: a running cluster (``ray://`` or ``host:port``); ``"local"`` starts a fresh local
            instance whatever ``RAY_ADDRESS`` says; None falls back to ``RAY_ADDRESS`` and then to a
            local instance.
        num_cpus: CPUs of a local instance (default: all of this machine).
        local: more ``ray.init`` arguments for a local instance (``resources``, ``runtime_env``).

    Returns:
        True when this call started or connected (the caller shuts Ray down again), False when
        Ray was already initialised.

    Raises:
        InfrastructureError: no cluster answers at ``address``.
    """
    if ray.is_initialized():
        return False
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # "local": never attach to a cluster some other process left in /tmp/ray.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     logging_level=logging.WARNING, **local)
    except ConnectionError as exc:
        raise InfrastructureError(f"cannot connect to Ray at {address}: {exc}") from None
    finally:
        if callable(sigterm):  # ray.init swaps in sys.exit(15): keep the caller's clean shutdown
            signal.signal(signal.SIGTERM, sigterm)
    return True
