"""The house's architecture is checked, not described: the import-linter contract (.importlinter:
layers, ray only in discovery.actors, no component module in the campaign schema, no cycles between
siblings) holds on the package as it installs, and no module of discovery/, actors/ or policies/
takes part in an import cycle (imports inside functions included)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


@pytest.fixture(scope="module")
def installed_tree(tmp_path_factory) -> Path:
    """discovery/ with actors/ and policies/ inside it, as the wheel lays them out."""
    root = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "discovery", root / "discovery", ignore=ignore)
    for folder in ("actors", "policies"):
        shutil.copytree(REPO / folder, root / "discovery" / folder, ignore=ignore)
    return root


def lint(tree: Path) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.skip("import-linter is not installed (pip install -e .[dev])")
    return subprocess.run([str(LINT), str(REPO / ".importlinter"), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=600, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_import_contract_holds(installed_tree):
    proc = lint(installed_tree)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Analyzed" in proc.stdout and "broken" not in proc.stdout.lower().replace("0 broken", "")


def test_import_contract_catches_a_layer_violation(installed_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(installed_tree, tree)
    with open(tree / "discovery" / "structures.py", "a") as fh:  # a low layer reaching up
        fh.write("\n\ndef _bad():\n    import discovery.campaign  # noqa\n")
    proc = lint(tree)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout


CYCLES = """
import json, grimp, networkx as nx
graph = grimp.build_graph("discovery", cache_dir=None, exclude_type_checking_imports=True)
modules = sorted(graph.modules)
digraph = nx.DiGraph((m, o) for m in modules for o in graph.find_modules_directly_imported_by(m))
cycles = [sorted(c) for c in nx.strongly_connected_components(digraph) if len(c) > 1]
print(json.dumps({"modules": modules, "cycles": cycles}))
"""


def test_no_module_is_part_of_an_import_cycle(installed_tree):
    # A separate interpreter: grimp must read the copied tree, and this process's discovery
    # modules (and their exception classes) must stay the ones the other tests imported.
    proc = subprocess.run([sys.executable, "-c", CYCLES], cwd=installed_tree, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(installed_tree), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "discovery.actors.executor" in found["modules"] and "discovery.policies.acquisition" in found["modules"]
    assert not found["cycles"], "import cycles: " + "; ".join(" -> ".join(c) for c in found["cycles"])
