"""Ray actors that host campaign components. Each builds its component inside the actor."""

from __future__ import annotations

from typing import Any

import ray

from discovery.build import ComponentSpec, build_component
from discovery.executor import guarded_evaluate
from discovery.records import Candidate, Evaluation

# One BLAS/OpenMP/torch thread per worker: parallelism comes from running several workers.
SINGLE_THREAD_ENV = {"env_vars": {**{v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                         "OPENBLAS_NUM_THREADS")},
                                   "PYTHONWARNINGS": "ignore"}}  # library chatter, not errors


@ray.remote(max_restarts=1, max_task_retries=1)
class ComponentActor:
    """Hosts one generator, surrogate or MLIP and runs its methods on request."""

    def __init__(self, spec: ComponentSpec):
        self.component = build_component(spec)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.component, method)(*args)


@ray.remote(max_restarts=1, max_task_retries=-1)
class DFTActor:
    """Hosts one DFT oracle; one calculation at a time, one CPU reserved.

    Re-running a task after a restart is safe: the oracle's work folder returns a finished
    result instead of computing it again (idempotent by candidate and settings).
    """

    def __init__(self, spec: ComponentSpec):
        self.oracle = build_component(spec)

    def evaluate(self, candidate: Candidate) -> Evaluation:
        """The whole evaluation travels back as the task's result (energies, relaxed structure,
        failure), tagged with the Ray node that computed it; nothing is read from a shared disk."""
        ev = guarded_evaluate(self.oracle, candidate)
        return ev.model_copy(update={"extra": {**ev.extra, "ray_node": ray.get_runtime_context().get_node_id()}})
