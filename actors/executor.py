"""`RayExecutor`: the campaign's components as Ray actors, on a laptop or a cluster.

- Generators, the surrogate and the MLIP each live in a `ComponentActor`.
- DFT runs in a pool of `DFTActor`s, each reserving one CPU (and one unit of the custom ``dft``
  resource when the cluster defines it, so DFT lands only on nodes meant for it).
- A dispatcher thread hands queued candidates to actors the moment one is free and collects
  results, so DFT slots are refilled without waiting for the slowest calculation of a batch.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import ray

from discovery.actors.cluster import connect
from discovery.actors.workers import SINGLE_THREAD_ENV, ComponentActor, DFTActor
from discovery.build import ComponentSpec
from discovery.executor import DFTResultQueue
from discovery.records import Candidate, Evaluation, failed_evaluation

log = logging.getLogger(__name__)


class RayExecutor(DFTResultQueue):
    """Run the campaign's work on Ray.

    Args:
        address: a running cluster (``ray://`` or ``host:port``); None starts a local instance
            (unless RAY_ADDRESS is set, which Ray honours).
        num_cpus: CPUs of a local instance (default: all of this machine).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        super().__init__()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.dft_slots = 0
        self._actors: dict[str, Any] = {}
        self._dft_actors: list[Any] = []
        self._pending: collections.deque[Candidate] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_ray = False
        self._dft_spec: ComponentSpec | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self, components: dict[str, ComponentSpec], dft: ComponentSpec, dft_slots: int) -> None:
        self._started_ray = connect(self.address, self.num_cpus or max(dft_slots, os.cpu_count() or 1),
                                    resources={"dft": dft_slots}) or self._started_ray
        dft_resources = {"dft": 1} if ray.cluster_resources().get("dft", 0) >= 1 else {}
        # a component configured for CUDA (``device: cuda``) gets a GPU; the rest share the CPUs
        self._actors = {
            name: ComponentActor.options(num_cpus=0, num_gpus=1 if getattr(spec.config, "device", "cpu") == "cuda"
                                         else 0, runtime_env=SINGLE_THREAD_ENV).remote(spec)
            for name, spec in components.items()
        }
        self._dft_actors = [
            DFTActor.options(num_cpus=1, resources=dft_resources, runtime_env=SINGLE_THREAD_ENV).remote(dft)
            for _ in range(dft_slots)
        ]
        self._dft_spec = dft
        self.dft_slots = dft_slots
        self._thread = threading.Thread(target=self._dispatch, name="dft-dispatcher", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for actor in [*self._actors.values(), *self._dft_actors]:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._started_ray:
            ray.shutdown()

    # ---------------------------------------------------------------- components

    def call(self, name: str, method: str, *args: Any) -> Any:
        return ray.get(self._actors[name].call.remote(method, *args))

    def call_many(self, calls: Sequence[tuple[str, str, tuple]]) -> list[Any]:
        refs = [self._actors[name].call.remote(method, *args) for name, method, args in calls]
        return ray.get(refs)

    # ---------------------------------------------------------------- DFT pool

    def submit_dft(self, candidate: Candidate) -> None:
        self._queued()
        with self._lock:
            self._pending.append(candidate)
        self._wake.set()

    def _dispatch(self) -> None:
        idle = list(self._dft_actors)
        running: dict[Any, tuple[Any, Candidate]] = {}
        while not self._stop.is_set():
            with self._lock:
                while idle and self._pending:
                    actor, cand = idle.pop(), self._pending.popleft()
                    running[actor.evaluate.remote(cand)] = (actor, cand)
            if not running:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            for ref in ready:
                actor, cand = running.pop(ref)
                try:
                    self._done.put(ray.get(ref))
                    idle.append(actor)
                except Exception as exc:  # noqa: BLE001 - actor lost beyond its restarts
                    log.warning("DFT actor lost while evaluating %s: %s", cand.id, exc)
                    self._done.put(self._lost(cand, exc))
                    replacement = DFTActor.options(num_cpus=1, runtime_env=SINGLE_THREAD_ENV).remote(
                        self._dft_spec)
                    self._dft_actors.append(replacement)
                    idle.append(replacement)

    def _lost(self, cand: Candidate, exc: Exception) -> Evaluation:
        return failed_evaluation(cand.id, fidelity=str(self._dft_spec.extra.get("fidelity", "dft")),
                                 oracle=self._dft_spec.kind,
                                 fingerprint=str(self._dft_spec.extra.get("fingerprint", "unknown")),
                                 error_class="WorkerLost", message=str(exc), retryable=True)
