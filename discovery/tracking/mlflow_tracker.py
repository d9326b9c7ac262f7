"""MLflow tracking through an explicit `MlflowClient` (no global run state).

One experiment per campaign; one run per campaign folder, re-opened on ``--resume`` so the
metrics of a resumed campaign continue the same curves.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
#: MLflow 3's UI shows an experiment as model training (runs, metrics, charts) rather than GenAI
#: traces when this tag says so; without it the UI guesses from what the experiment holds
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class MlflowTracker:
    """Log params, per-round metrics and artifacts of a campaign to MLflow.

    Args:
        tracking_uri: any MLflow URI; ``sqlite:///...`` keeps everything in the campaign folder.
        experiment: experiment name (created when missing).
        run_name: display name of the run.
        run_id: continue this run (resume) instead of creating one.
        artifact_location: where a new experiment keeps artifacts (local stores only).
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_id: str | None = None,
                 artifact_location: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            exp_id = exp.experiment_id
        if exp is None or EXPERIMENT_KIND[0] not in exp.tags:
            self.client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.experiment_id = exp_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        logged = {p for p in self.client.get_run(self.run_id).data.params}
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if k not in logged]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
