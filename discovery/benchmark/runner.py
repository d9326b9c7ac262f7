"""`discovery benchmark`: every policy x seed x objective on one table, then the figures.

Runs execute in this process (``execution.backend: local``, `run_local`) or as Ray tasks, one CPU
each (``ray``, the default; `discovery.actors.replay` does the fan-out). The summary per objective and
policy (means and sample std over seeds):

- ``curve``: hits found after each batch, on the common grid of oracle calls up to the budget;
- ``calls_to_50`` / ``calls_to_90``: oracle calls to reach 50 % / 90 % recall, with the fraction of
  seeds that reached it within the budget (random runs on until ``random_until_recall``);
- ``af50`` / ``af90``: mean calls random needed / this policy's calls, per seed (null unless every
  seed reached the level);
- ``ef``: hit rate of the budget's calls over the pool's hit rate;
- ``calibration``: fraction of the revealed labels inside +-1 and +-2 predicted std, per property.

See `discovery.metrics.discovery_metrics` for the conventions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from discovery.benchmark.config import BenchmarkConfig
from discovery.benchmark.replay import ReplayRun, run_replay
from discovery.fileio import atomic_write, write_text_atomic
from discovery.metrics.discovery_metrics import (
    calls_to_recall,
    enhancement_factor,
    expected_random_calls,
    hits_needed,
)
from discovery.oracles.replay_oracle import ReplayTable, load_replay_table

log = logging.getLogger(__name__)

#: (policy label, objective name, seed) of one run.
Job = tuple[str, str, int]


def load_table(config: BenchmarkConfig) -> ReplayTable:
    t = config.table
    table = load_replay_table(cdvae_csv=t.cdvae_csv, cif_dir=t.cif_dir, labels_csv=t.labels_csv,
                              max_rows=t.max_rows)
    table.require([p for o in config.objectives for p in o.properties])
    return table


def jobs_of(config: BenchmarkConfig) -> list[Job]:
    seeds = range(config.seed, config.seed + config.n_seeds)
    return [(p.label, o.name, s) for o in config.objectives for p in config.policies for s in seeds]


def run_job(table: ReplayTable, config: BenchmarkConfig, job: Job) -> ReplayRun:
    label, objective_name, seed = job
    entry = next(p for p in config.policies if p.label == label)
    objective = next(o for o in config.objectives if o.name == objective_name)
    return run_replay(table, config, entry, objective, seed)


def run_local(table: ReplayTable, config: BenchmarkConfig,
              on_done: Callable[[ReplayRun], None] | None = None) -> list[ReplayRun]:
    """Every job in this process, in job order; ``on_done`` is called as each run finishes (the Ray
    fan-out is `discovery.actors.replay.run_jobs_on_ray`; `discovery.launch.run_benchmark_jobs`
    picks one)."""
    runs = []
    for job in jobs_of(config):
        runs.append(run_job(table, config, job))
        if on_done is not None:
            on_done(runs[-1])
    return runs

def _stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {"mean": float(np.mean(got)) if got else None,
            "std": float(np.std(got, ddof=1)) if len(got) > 1 else (0.0 if got else None),
            "reached": len(got) / len(values) if values else 0.0}


def _hits_on_grid(run: ReplayRun, grid: np.ndarray) -> np.ndarray:
    """Hits after the last batch that ended at or before each grid point."""
    calls = np.asarray(run.calls)
    hits = np.asarray(run.hits)
    pos = np.searchsorted(calls, grid, side="right") - 1
    return hits[np.clip(pos, 0, len(hits) - 1)]


def summarise(config: BenchmarkConfig, runs: list[ReplayRun]) -> dict[str, Any]:
    """The figures of the benchmark as one JSON-able object."""
    grid = np.unique(np.r_[0, np.arange(config.batch_size, config.budget + 1, config.batch_size),
                           config.budget])
    out: dict[str, Any] = {"name": config.name, "budget": config.budget, "batch_size": config.batch_size,
                           "initial_fraction": config.initial_fraction, "n_seeds": config.n_seeds,
                           "surrogate": config.surrogate.kind, "objectives": {}}
    for objective in config.objectives:
        mine = [r for r in runs if r.objective == objective.name]
        if not mine:
            continue
        pool_hits, pool_size = mine[0].pool_hits, mine[0].pool_size
        random_runs = [r for r in mine if r.policy == config.random_label]
        random_calls = {f: _stats([calls_to_recall(r.calls, r.hits, pool_hits, f) for r in random_runs])
                        for f in (0.5, 0.9)}
        expected = {}
        for f in (0.5, 0.9):
            vals = [expected_random_calls(pool_size - r.initial_size, pool_hits - r.initial_hits,
                                          hits_needed(pool_hits, f) - r.initial_hits) for r in random_runs]
            got = [v for v in vals if v is not None]
            expected[f] = float(np.mean(got)) if got else None
        policies: dict[str, Any] = {}
        for entry in config.policies:
            pr = [r for r in mine if r.policy == entry.label]
            if not pr:
                continue
            curves = np.stack([_hits_on_grid(r, grid) for r in pr])
            summary: dict[str, Any] = {
                "curve": {"calls": grid.tolist(), "hits_mean": curves.mean(0).round(3).tolist(),
                          "hits_std": (curves.std(0, ddof=1) if len(pr) > 1 else 0 * curves[0]).round(3).tolist()},
                "hits_at_budget": _stats([float(c[-1]) for c in curves]),
            }
            for f, key in ((0.5, "50"), (0.9, "90")):
                calls = [calls_to_recall(r.calls, r.hits, pool_hits, f) for r in pr]
                calls = [c if c is None or c <= config.budget or entry.label == config.random_label else None
                         for c in calls]
                summary[f"calls_to_{key}"] = _stats(calls)
                base = random_calls[f]["mean"]
                af = [base / c if (base is not None and c) else None for c in calls]
                af_stats = _stats(af)
                if af_stats["reached"] < 1.0:  # a seed that never got there has no factor to average
                    af_stats["mean"] = af_stats["std"] = None
                summary[f"af{key}"] = af_stats
            # hit rate of the calls against what random draws from the same remaining pool
            summary["ef"] = _stats([enhancement_factor(
                int(_hits_on_grid(r, grid)[-1]) - r.initial_hits, min(r.calls[-1], config.budget),
                pool_hits - r.initial_hits, pool_size - r.initial_size) for r in pr])
            summary["calibration"] = {
                p: {k: _nanmean([r.calibration.get(p, {}).get(k) for r in pr])
                    for k in ("within_1sigma", "within_2sigma")}
                for p in objective.properties}
            summary["cheap_calls"] = float(np.mean([r.cheap_calls for r in pr]))
            summary["wall_s"] = float(np.mean([r.wall_s for r in pr]))
            policies[entry.label] = summary
        finite_af = {k: v["af50"]["mean"] for k, v in policies.items()
                     if k != config.random_label and v["af50"]["mean"] is not None}
        out["objectives"][objective.name] = {
            "definition": objective.describe(), "pool_size": pool_size, "pool_hits": pool_hits,
            "random_expected_calls_to_50": expected[0.5], "random_expected_calls_to_90": expected[0.9],
            "best_policy_af50": max(finite_af, key=finite_af.get) if finite_af else None,
            "policies": policies,
        }
    return out


def _nanmean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(got)) if got else None


# ----------------------------------------------------------------------------- outputs


def plot_curves(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per objective: mean hits vs oracle calls per policy, +-1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, obj in summary["objectives"].items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pol in obj["policies"].items():
            x = np.asarray(pol["curve"]["calls"])
            m = np.asarray(pol["curve"]["hits_mean"])
            s = np.asarray(pol["curve"]["hits_std"])
            af = pol["af50"]["mean"]
            line, = ax.plot(x, m, label=f"{label}" + (f" (AF50 {af:.1f})" if af else ""),
                            ls="--" if label.startswith("random") else "-")
            ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)
        ax.axhline(0.5 * obj["pool_hits"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("oracle calls (after the initial labelled set)")
        ax.set_ylabel(f"hits found (of {obj['pool_hits']})")
        ax.set_title(f"{summary['name']} / {name}: {obj['definition']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"discovery_curves_{name}.png"
        try:
            with atomic_write(path, "wb") as fh:
                fig.savefig(fh, format="png", dpi=120)
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(config: BenchmarkConfig, runs: list[ReplayRun], summary: dict[str, Any], out_dir: Path
                  ) -> list[Path]:
    """summary.json, runs.jsonl and the plots, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("summary.json", json.dumps(summary, indent=2)),
                       ("runs.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in runs)),
                       ("benchmark.yaml", _yaml(config))):
        paths.append(write_text_atomic(out_dir / name, text))
    return paths + plot_curves(summary, out_dir)


def _yaml(config: BenchmarkConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def track(config: BenchmarkConfig, summary: dict[str, Any], files: list[Path], out_dir: Path) -> str | None:
    """One MLflow run per benchmark: params, every figure as a metric, curves as stepped metrics,
    plots and summary as artifacts. Returns the run id."""
    if not config.tracking.enabled:
        return None
    from discovery.tracking.mlflow_tracker import MlflowTracker

    uri = config.tracking.tracking_uri or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    artifacts = (out_dir / "mlartifacts").resolve().as_uri() if not config.tracking.tracking_uri else None
    tracker = MlflowTracker(uri, config.tracking.experiment or f"benchmark-{config.name}",
                            run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                            artifact_location=artifacts)
    status = "FAILED"
    try:
        _log_summary(tracker, config, summary, files)
        status = "FINISHED"
    finally:
        tracker.close(status)
    return tracker.run_id


def _log_summary(tracker, config: BenchmarkConfig, summary: dict[str, Any], files: list[Path]) -> None:
    from discovery.configbase import flatten

    tracker.log_params(flatten(config.model_dump(mode="json")))
    for oname, obj in summary["objectives"].items():
        for label, pol in obj["policies"].items():
            prefix = f"{oname}.{label}".replace("+", "_")  # MLflow names allow no '+'
            scalars = {f"{prefix}.{k}": pol[k]["mean"] for k in
                       ("hits_at_budget", "calls_to_50", "calls_to_90", "af50", "af90", "ef")}
            for prop, cal in pol["calibration"].items():
                scalars.update({f"{prefix}.{prop}.{k}": v for k, v in cal.items()})
            tracker.log_metrics(scalars, step=0)
            for calls, hits in zip(pol["curve"]["calls"], pol["curve"]["hits_mean"], strict=True):
                tracker.log_metrics({f"{prefix}.hits": hits}, step=int(calls))
    for f in files:
        tracker.log_artifact(f)
