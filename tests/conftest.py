"""Shared fixtures. Tests that start Ray or MLflow rely on the README test command running them in a
loopback-only network namespace; these env vars keep both quiet even outside one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

BIN = Path(sys.executable).parent / "discovery"
sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (replay_tables) import by name


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark data (../shared/data or DISCOVERY_DATA_DIR); skips when absent."""
    from discovery.data.loaders import default_data_dir

    path = default_data_dir()
    if not (path / "perov_5" / "val.csv").is_file():
        pytest.skip(f"shared data folder not found at {path} (set DISCOVERY_DATA_DIR)")
    return path


def discovery_cli(*args, timeout=1200, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``discovery`` command and capture its output."""
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


@pytest.fixture(scope="session")
def cli():
    if shutil.which(str(BIN)) is None:
        pytest.skip("the discovery console script is not installed in this environment")
    return discovery_cli


@pytest.fixture(scope="session")
def icsg3d_memorized(tmp_path_factory) -> Path:
    """A small ICSG3D model that decodes its 8 training perovskites again (`icsg3d_helpers.MEMORIZE`),
    trained once per session; its folder."""
    import torch

    from icsg3d_helpers import MEMORIZE, MEMORIZE_N, train_tiny

    folder = tmp_path_factory.mktemp("icsg3d-memorized")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train_tiny(folder, n=MEMORIZE_N, overrides=MEMORIZE)
    finally:
        torch.set_num_threads(threads)
    return folder / "model"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, request):
    """``trained_model(name)``: the folder of a small trained model of the family ``name`` (trained
    on first use, once per session; `trained_models.TRAINERS`, ICSG3D: `icsg3d_memorized`)."""
    from trained_models import TRAINERS

    folders: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in folders:
            folders[name] = (request.getfixturevalue("icsg3d_memorized") if name == "icsg3d"
                             else TRAINERS[name](tmp_path_factory.mktemp(name)))
        return folders[name]

    return get


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module's tests: the machine's two cores are shared, and
    oversubscribed threads spin."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
