"""Benchmark runs as Ray tasks: one CPU and one BLAS/torch thread each, results as they finish."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import ray

from discovery.actors.cluster import connect
from discovery.actors.workers import SINGLE_THREAD_ENV
from discovery.benchmark.config import BenchmarkConfig
from discovery.benchmark.replay import ReplayRun
from discovery.benchmark.runner import Job, run_job
from discovery.oracles.replay_oracle import ReplayTable


@ray.remote(num_cpus=1, max_retries=1)
def _run(table: ReplayTable, config: BenchmarkConfig, job: Job) -> ReplayRun:
    logging.getLogger("discovery").setLevel(logging.WARNING)
    return run_job(table, config, job)


def run_jobs_on_ray(table: ReplayTable, config: BenchmarkConfig, jobs: Sequence[Job], address: str | None,
                    on_done: Callable[[ReplayRun], None] | None = None) -> list[ReplayRun]:
    """Run ``jobs`` on a local Ray instance (or the cluster at ``address``); results in job order."""
    started = connect(address, config.execution.num_cpus)
    try:
        table_ref = ray.put(table)
        config_ref = ray.put(config)
        # the slowest runs (surrogate policies) first, so the cheap random runs fill the gaps
        order = sorted(range(len(jobs)), key=lambda i: jobs[i][0] == config.random_label)
        refs = {_run.options(runtime_env=SINGLE_THREAD_ENV).remote(table_ref, config_ref, jobs[i]): i
                for i in order}
        results: list[ReplayRun | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                run = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # the worker's own error, not Ray's traceback
                raise exc.cause from None
            results[refs[done[0]]] = run
            if on_done is not None:
                on_done(run)
        return [r for r in results if r is not None]
    finally:
        if started:
            ray.shutdown()
