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
import time
from collections.abc import Sequence
from typing import Any

import ray

from discovery.actors.cluster import connect
from discovery.actors.workers import SINGLE_THREAD_ENV, ComponentActor, DFTActor
from discovery.build import ComponentSpec
from discovery.errors import InfrastructureError
from discovery.executor import DFTResultQueue
from discovery.records import Candidate, Evaluation, failed_evaluation

log = logging.getLogger(__name__)

#: Attempts of a component call whose actor is unreachable (restarting after a lost node).
CALL_ATTEMPTS = 4


class RayExecutor(DFTResultQueue):
    """Run the campaign's work on Ray.

    Args:
        address: a running cluster (``ray://`` or ``host:port``); None starts a local instance
            (unless RAY_ADDRESS is set, which Ray honours).
        num_cpus: CPUs of a local instance (default: all of this machine).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, execution: Any = None):
        super().__init__()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.execution = execution
        self._crash: BaseException | None = None
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
        wanted = getattr(self.execution, "dft_resource", "auto")
        local = {"resources": {wanted if wanted not in (None, "auto") else "dft": dft_slots}}
        self._started_ray = connect(self.address, self.num_cpus or max(dft_slots, os.cpu_count() or 1),
                                    **local) or self._started_ray
        if wanted == "auto":
            wanted = "dft" if ray.cluster_resources().get("dft", 0) >= 1 else None
        self._actors = {name: ComponentActor.options(**self._placement(name, spec)).remote(spec)
                        for name, spec in components.items()}
        self._dft_options = self._placement("dft", dft)
        if wanted:
            self._dft_options["resources"] = {**self._dft_options.get("resources", {}), wanted: 1}
        self._dft_actors = [DFTActor.options(**self._dft_options).remote(dft) for _ in range(dft_slots)]
        self._dft_spec = dft
        self.dft_slots = dft_slots
        self._thread = threading.Thread(target=self._dispatch, name="dft-dispatcher", daemon=True)
        self._thread.start()

    def _placement(self, name: str, spec: ComponentSpec) -> dict[str, Any]:
        """Ray actor options of one component from ``execution.resources`` (see
        `discovery.config.ExecutionConfig`): its own entry, else ``generators`` for a generator,
        else CPU-light defaults; ``device: cuda`` asks for a GPU."""
        table = getattr(self.execution, "resources", None) or {}
        label = name.split(":", 1)[-1]
        res = table.get(label) or table.get(name) or (table.get("generators") if name.startswith("generator:") else None)
        options: dict[str, Any] = {"num_cpus": 1 if name == "dft" else 0, "runtime_env": SINGLE_THREAD_ENV}
        if getattr(spec.config, "device", "cpu") == "cuda" or getattr(spec.registered, "needs_gpu", False):
            options["num_gpus"] = 1
        elif name != "dft":
            # CPU components stay on the driver's node (soft): losing a DFT node never takes a
            # generator or the surrogate with it, and the files they read and write (model
            # folders, surrogate checkpoints under the campaign folder) are the driver's
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=True)
        if res is not None:
            options.update({key: value for key, value in (("num_cpus", res.num_cpus), ("num_gpus", res.num_gpus))
                            if value is not None})
            if res.memory_gb:
                options["memory"] = int(res.memory_gb * 1024**3)
            if res.custom:
                options["resources"] = dict(res.custom)
        return options

    def completed(self, timeout_s: float) -> list[Evaluation]:
        """Finished evaluations (see `DFTResultQueue`).

        Raises:
            InfrastructureError: the dispatcher thread died; the campaign stops with its cause
                instead of waiting for results that will never come.
        """
        if self._crash is not None:
            raise InfrastructureError(f"the DFT dispatcher stopped: {type(self._crash).__name__}: {self._crash}")
        return super().completed(timeout_s)

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
        return self.call_many([(name, method, args)])[0]

    def call_many(self, calls: Sequence[tuple[str, str, tuple]]) -> list[Any]:
        """Run component methods in parallel. A call whose actor is briefly unreachable (its node
        went away and Ray is restarting it) is sent again, up to `CALL_ATTEMPTS` times.

        Raises:
            InfrastructureError: an actor stayed unreachable or died for good (one line).
        """
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(1, CALL_ATTEMPTS + 1):
            refs = {i: self._actors[calls[i][0]].call.remote(calls[i][1], *calls[i][2]) for i in todo}
            failed = []
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError) as exc:
                    if attempt == CALL_ATTEMPTS:
                        raise InfrastructureError(f"component {calls[i][0]} is unreachable after {attempt} attempts "
                                                  f"({type(exc).__name__})") from None
                    log.warning("component %s unreachable (%s); calling again", calls[i][0], type(exc).__name__)
                    failed.append(i)
            if not failed:
                break
            todo = failed
            time.sleep(min(2.0 * attempt, 10.0))
        return results

    # ---------------------------------------------------------------- DFT pool

    def submit_dft(self, candidate: Candidate) -> None:
        self._queued()
        with self._lock:
            self._pending.append(candidate)
        self._wake.set()

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as exc:  # noqa: BLE001 - surfaced by `completed`, never swallowed
            log.error("DFT dispatcher crashed: %s: %s", type(exc).__name__, exc)
            self._crash = exc

    def _dispatch_loop(self) -> None:
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
                    try:  # an actor that is still alive would hold its CPU and dft unit for good
                        ray.kill(actor, no_restart=True)
                    except Exception:  # noqa: BLE001 - already gone
                        pass
                    if actor in self._dft_actors:
                        self._dft_actors.remove(actor)
                    # the same placement as the actor it replaces: the dft resource, memory, CPUs
                    replacement = DFTActor.options(**self._dft_options).remote(self._dft_spec)
                    self._dft_actors.append(replacement)
                    idle.append(replacement)

    def _lost(self, cand: Candidate, exc: Exception) -> Evaluation:
        return failed_evaluation(cand.id, fidelity=str(self._dft_spec.extra.get("fidelity", "dft")),
                                 oracle=self._dft_spec.kind,
                                 fingerprint=str(self._dft_spec.extra.get("fingerprint", "unknown")),
                                 error_class="WorkerLost", message=str(exc), retryable=True)
