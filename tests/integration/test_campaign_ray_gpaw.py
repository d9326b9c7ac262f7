"""The whole loop: `discovery run` with RayExecutor on a local Ray instance, real GPAW, real CHGNet,
the CGCNN ensemble, the SQLite ledger and a real MLflow store read back with MlflowClient."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_campaign import write_tiny  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.dft, pytest.mark.mlflow]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cli):
    root = tmp_path_factory.mktemp("loop")
    cfg = write_tiny(root / "campaign.yaml")
    out = root / "out"
    proc = cli("run", cfg, "--out", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cfg, out, proc


def status(cli, out):
    proc = cli("status", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_run_ends_with_ranked_table_and_complete_status(finished, cli):
    _, out, proc = finished
    assert "DFT-validated candidates, ranked by energy above hull" in proc.stdout
    st = status(cli, out)
    for key in ("rounds", "candidates_proposed", "candidates_valid", "candidates_novel", "mlip_relaxed",
                "dft_completed", "dft_failed", "dft_unique_structures", "dft_repeated", "hits", "best",
                "wall_s", "dft_busy_fraction"):
        assert key in st
    assert st["rounds"] == 3
    assert st["candidates_proposed"] >= st["candidates_valid"] >= st["candidates_novel"] > 0
    assert st["mlip_relaxed"] > 0
    assert st["dft_references_completed"] == 5  # Na, K, Cl2, NaCl, KCl
    assert st["dft_completed"] + st["dft_failed"] == st["dft_submitted"] - 5
    assert st["dft_completed"] >= 1
    assert st["dft_repeated"] == 0
    assert 0 < st["dft_busy_fraction"] <= 1
    best = st["best"][0]
    assert best["formation_energy_per_atom"] < 0 and best["e_above_hull"] >= 0
    assert (out / "discovery_curve.png").stat().st_size > 1000
    assert list((out / "cifs").glob("*.cif"))


def test_mlflow_run_read_back(finished):
    from mlflow.tracking import MlflowClient

    _, out, _ = finished
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["dft.cutoff_ev"] == "400.0"
    assert run.data.params["chemistry.elements"] == "['Na', 'K', 'Cl']"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "proposed")] == [0, 1, 2]
    # the CGCNN ensemble trained on DFT labels and its checkpoint was logged
    assert client.get_metric_history(run.info.run_id, "surrogate_n_train")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert client.get_metric_history(run.info.run_id, "dft_completed")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"campaign.yaml", "discovery_curve.png", "cifs"} <= artifacts


def test_rerun_refuses_and_resume_of_finished_campaign_repeats_nothing(finished, cli):
    cfg, out, _ = finished
    before = status(cli, out)
    proc = cli("run", cfg, "--out", out)
    assert proc.returncode == 2 and "pass --resume" in proc.stderr
    proc = cli("run", cfg, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = status(cli, out)
    assert after["dft_submitted"] == before["dft_submitted"]
    assert after["dft_repeated"] == 0
