"""Ray Tune sweeps of the replayed loop: ASHA on hits found, one MLflow run per trial.

MLflow (RAY_MLFLOW.md section 4): each trial logs from its own process with `setup_mlflow`; the
SQLite store is created by the driver before the first trial starts, because trials racing to
create its schema fail.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from discovery.actors.cluster import connect
from discovery.actors.workers import SINGLE_THREAD_ENV
from discovery.benchmark.config import BenchmarkConfig
from discovery.benchmark.replay import iter_replay
from discovery.benchmark.tune import SearchDimension, TuneConfig, trial_config
from discovery.oracles.replay_oracle import ReplayTable


def _space(space: dict[str, SearchDimension]) -> dict[str, Any]:
    out = {}
    for key, dim in space.items():
        if dim.loguniform is not None:
            out[key] = tune.loguniform(*dim.loguniform)
        elif dim.uniform is not None:
            out[key] = tune.uniform(*dim.uniform)
        elif dim.randint is not None:
            out[key] = tune.randint(dim.randint[0], dim.randint[1] + 1)  # inclusive upper end
        else:
            out[key] = tune.choice(dim.choice)
    return out


def _trial(params: dict[str, Any], table: ReplayTable, base: BenchmarkConfig, tune_config: TuneConfig,
           tracking_uri: str | None, experiment: str) -> None:
    logging.getLogger("discovery").setLevel(logging.WARNING)
    config = trial_config(base, tune_config, params, "trial")
    entry = next(p for p in config.policies if p.label == tune_config.policy)
    objective = next(o for o in config.objectives if o.name == tune_config.objective)
    mlflow = None
    if tracking_uri is not None:
        from ray.air.integrations.mlflow import setup_mlflow

        mlflow = setup_mlflow(params, tracking_uri=tracking_uri, experiment_name=experiment)
    last_calls = -1
    runs = [iter_replay(table, config, entry, objective, seed) for seed in tune_config.seeds]
    for step in zip(*runs, strict=False):  # seeds in lockstep: the mean over seeds at equal calls
        calls = step[0].calls[-1]
        if calls == last_calls:  # the closing yield repeats the last batch
            continue
        last_calls = calls
        hits = float(np.mean([r.hits[-1] for r in step]))
        recall = hits / step[0].pool_hits if step[0].pool_hits else 0.0
        if mlflow is not None:
            mlflow.log_metrics({"hits": hits, "recall": recall}, step=calls)
        tune.report({"hits": hits, "recall": recall, "calls": calls})


def run_tune(table: ReplayTable, base: BenchmarkConfig, tune_config: TuneConfig, out_dir: Path,
             tracking_uri: str | None, address: str | None = None):
    """Run the sweep; returns Ray Tune's `ResultGrid`."""
    started = connect(address, tune_config.execution.num_cpus, runtime_env=SINGLE_THREAD_ENV)
    experiment = tune_config.tracking.experiment or f"tune-{tune_config.name}"
    try:
        scheduler = ASHAScheduler(time_attr="calls", max_t=base.budget,
                                  grace_period=min(tune_config.scheduler.grace_period_calls, base.budget),
                                  reduction_factor=tune_config.scheduler.reduction_factor)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, table=table, base=base, tune_config=tune_config,
                                 tracking_uri=tracking_uri, experiment=experiment),
            {"cpu": 1})
        tuner = tune.Tuner(
            trainable, param_space=_space(tune_config.space),
            tune_config=tune.TuneConfig(metric="hits", mode="max", num_samples=tune_config.num_samples,
                                        scheduler=scheduler,
                                        search_alg=tune.search.BasicVariantGenerator(
                                            random_state=tune_config.seed)),
            run_config=tune.RunConfig(name=tune_config.name, storage_path=str((out_dir / "ray_results").resolve()),
                                      verbose=0))
        return tuner.fit()
    finally:
        if started:
            ray.shutdown()
