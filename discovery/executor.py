"""Executors do the work the campaign decides on. `LocalExecutor` runs everything in one process.

The campaign talks to components only through an executor:

- ``call(name, method, *args)`` runs a method of a named component (generator, surrogate, MLIP)
  and returns its result; ``call_many`` runs several calls concurrently where the backend can.
- ``submit_dft(candidate)`` queues a DFT evaluation; queued work starts the moment a DFT slot
  frees, without waiting for the rest of a batch. ``completed(timeout_s)`` returns finished
  evaluations; ``outstanding`` counts queued plus running ones.

DFT itself always runs in subprocesses (see `oracles.subprocess_runner`), so a thread per slot is
enough here; the Ray backend (`discovery.actors.executor.RayExecutor`) keeps the same contract.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from discovery.build import ComponentSpec, build_component
from discovery.records import Candidate, Evaluation, failed_evaluation


def guarded_evaluate(oracle: Any, candidate: Candidate) -> Evaluation:
    """``oracle.evaluate`` that turns an unexpected exception into a failed record.

    Oracles return scientific failures as records themselves; this catches bugs and
    infrastructure trouble so one broken calculation can never stall or crash a campaign.
    """
    try:
        return oracle.evaluate(candidate)
    except Exception as exc:  # noqa: BLE001 - failures are data
        import traceback

        return failed_evaluation(candidate.id, fidelity=oracle.fidelity, oracle=oracle.name,
                                 fingerprint=oracle.fingerprint, error_class="WorkerCrashed",
                                 message=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                                 retryable=True)


class Executor(Protocol):
    dft_slots: int

    def start(self, components: dict[str, ComponentSpec], dft: ComponentSpec, dft_slots: int) -> None: ...

    def call(self, name: str, method: str, *args: Any) -> Any: ...

    def call_many(self, calls: Sequence[tuple[str, str, tuple]]) -> list[Any]: ...

    def submit_dft(self, candidate: Candidate) -> None: ...

    def completed(self, timeout_s: float) -> list[Evaluation]: ...

    @property
    def outstanding(self) -> int: ...

    def shutdown(self) -> None: ...


class DFTResultQueue:
    """Book-keeping shared by executors: finished evaluations wait in a queue for the driver."""

    def __init__(self) -> None:
        self._done: queue.Queue[Evaluation] = queue.Queue()
        self._outstanding = 0
        self._lock = threading.Lock()

    def _queued(self) -> None:
        with self._lock:
            self._outstanding += 1

    def completed(self, timeout_s: float) -> list[Evaluation]:
        """Finished evaluations; waits up to ``timeout_s`` for the first one."""
        out: list[Evaluation] = []
        try:
            out.append(self._done.get(timeout=timeout_s) if timeout_s > 0 else self._done.get_nowait())
            while True:
                out.append(self._done.get_nowait())
        except queue.Empty:
            pass
        with self._lock:
            self._outstanding -= len(out)
        return out

    @property
    def outstanding(self) -> int:
        """Evaluations queued or running whose results the driver has not taken yet."""
        return self._outstanding


class LocalExecutor(DFTResultQueue):
    """All components in this process; DFT slots are threads that each wait on a subprocess."""

    def __init__(self) -> None:
        super().__init__()
        self.components: dict[str, Any] = {}
        self.dft_slots = 0
        self._oracle = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self, components: dict[str, ComponentSpec], dft: ComponentSpec, dft_slots: int) -> None:
        self.components = {name: build_component(spec) for name, spec in components.items()}
        self._oracle = build_component(dft)
        self.dft_slots = dft_slots
        self._pool = ThreadPoolExecutor(max_workers=dft_slots, thread_name_prefix="dft-slot")

    def call(self, name: str, method: str, *args: Any) -> Any:
        return getattr(self.components[name], method)(*args)

    def call_many(self, calls: Sequence[tuple[str, str, tuple]]) -> list[Any]:
        return [self.call(name, method, *args) for name, method, args in calls]

    def submit_dft(self, candidate: Candidate) -> None:
        self._queued()
        future = self._pool.submit(guarded_evaluate, self._oracle, candidate)
        future.add_done_callback(self._finished)

    def _finished(self, future) -> None:
        # a calculation cancelled by `shutdown` (the driver stopped: Ctrl-C, a full disk) has no
        # result; the next start submits it again
        if not future.cancelled():
            self._done.put(future.result())

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
