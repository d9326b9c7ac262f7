"""A team's MLflow server: campaigns log to a real `mlflow server` (SQLite backend, artifacts served
by the server) on loopback, artifacts included, and a resumed campaign continues its run there.
EMT stands in for DFT, as the name says."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_campaign_logs_to_a_server_and_resume_continues_its_run(cli, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({
        "name": "server-emt", "seed": 0, "rounds": 1, "dft_per_round": 2,
        "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 4},
        "generators": [{"kind": "random_symmetric", "n_per_round": 6}], "surrogate": {"kind": "forest"},
        "mlip": {"enabled": False}, "dft": {"kind": "emt", "max_steps": 10},
        "execution": {"backend": "local", "dft_slots": 2},
        "tracking": {"tracking_uri": mlflow_server, "experiment": "team-campaigns"}}))
    out = tmp_path / "out"
    proc = cli("run", path, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("team-campaigns")
    # MLflow 3's UI opens it as model training (runs and charts), not as a GenAI experiment
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["dft.kind"] == "emt"
    assert "dft_completed" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "campaign.yaml" in artifacts and "discovery_curve.png" in artifacts
    assert not (out / "mlflow.db").exists()  # everything went to the server

    again = cli("run", path, "--out", out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the same run, continued
