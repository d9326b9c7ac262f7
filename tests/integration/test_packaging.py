"""The wheel ships actors/ and policies/ as discovery.actors and discovery.policies, nothing else
at the top level, and the console script resolves them from outside the repository."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_layout(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("crystal_discovery-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"discovery"}
    for module in ("discovery/actors/executor.py", "discovery/policies/acquisition.py", "discovery/cli.py",
                   "discovery/oracles/gpaw_worker.py", "discovery/py.typed", "discovery/actors/tune.py",
                   "discovery/benchmark/runner.py"):
        assert module in names
    # every package of the source tree ships (a package missing from pyproject's list would not)
    for init in [*REPO.glob("discovery/**/__init__.py")]:
        assert str(init.relative_to(REPO)) in names, f"{init.parent.name} is missing from the wheel"
    for folder in ("actors", "policies"):
        for module in (REPO / folder).glob("*.py"):
            assert f"discovery/{folder}/{module.name}" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)


def test_console_script_imports_remapped_packages_outside_the_repo(tmp_path):
    code = "import discovery.actors.executor, discovery.policies.acquisition; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", "import actors"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
