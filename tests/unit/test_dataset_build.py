"""``discovery dataset build`` with CHGNet on five compositions: a build killed half way resumes without
repeating a finished relaxation, the CSV never holds an excluded formula, and bad input is one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from discovery.datasets.config import CHENG26, DatasetConfig, load_dataset_config

pytestmark = pytest.mark.slow

#: LiBr, NaBr, KBr, MgBr2, MgCl2 (LiCl, NaCl and KCl are among the excluded CSP test formulas).
CONFIG = {"name": "five", "seed": 3, "cations": ["Li", "Na", "K", "Mg"], "anions": ["Br", "Cl"],
          "ternaries": False, "max_atoms": 3, "prototype_names": ["rocksalt", "fluorite"],
          "random_per_composition": 1, "relax": {"fmax_ev_per_a": 0.2, "max_steps": 40},
          "workers": 1}


def write_config(folder: Path, **changes) -> Path:
    path = folder / "five.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


def lines(path: Path) -> list[dict]:
    """Complete lines only: the build may be appending one while we read."""
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines() if x.strip()]


def test_plan_covers_five_compositions_and_excludes_the_test_formulas(tmp_path):
    from discovery.datasets.plan import compositions

    config = load_dataset_config(write_config(tmp_path))
    assert compositions(config) == ["KBr", "LiBr", "MgBr2", "MgCl2", "NaBr"]
    assert not set(compositions(config)) & set(CHENG26)
    # overridable: with no exclusions, the chlorides come back
    assert "NaCl" in compositions(DatasetConfig(**{**CONFIG, "exclude_formulas": []}))


def test_killed_build_resumes_without_repeating_a_relaxation(tmp_path):
    from discovery.datasets.builder import build_dataset

    config_path = write_config(tmp_path)
    out = tmp_path / "build"
    work = out / "relaxations.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "discovery.cli", "dataset", "build", str(config_path),
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not work.is_file() or len(lines(work)) < 3):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = lines(work)
    assert 3 <= len(before), "the build did not get going"
    plan = json.loads((out / "plan.json").read_text())
    assert len(before) < len(plan["jobs"]), "the build finished before it could be killed"
    assert not (out / "five.csv").exists()

    stages = []  # resumed with other run settings (workers): the same build
    manifest = build_dataset(load_dataset_config(config_path, ["workers=3"]), out,
                             progress=lambda s, d, t, i: stages.append((s, d)))
    after = lines(work)
    ids = [r["job"] for r in after]
    assert len(ids) == len(set(ids)) == len(plan["jobs"])  # every job once: none repeated
    assert after[:len(before)] == before  # what was done before the kill is untouched
    c = manifest["counts"]
    assert c["resumed"] == len(before) and c["relaxed_now"] == len(plan["jobs"]) - len(before)
    assert stages[0] == ("relax", len(before))  # the plan was read back, not made again

    with (out / "five.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) >= {"material_id", "cif", "formula", "energy_per_atom", "formation_energy_per_atom",
                                     "source"}
    formulas = {r["formula"] for r in rows}
    assert formulas <= {"KBr", "LiBr", "MgBr2", "NaBr", "MgCl2"} and not formulas & set(CHENG26)
    assert c["compositions"] == len(formulas) >= 4
    rocksalt = [float(r["formation_energy_per_atom"]) for r in rows if r["material_id"] == "NaBr/rocksalt"]
    assert rocksalt and -2.5 < rocksalt[0] < -1.0  # CHGNet: NaBr is strongly bound against Na metal and Br2
    assert manifest["csv"]["sha256"] and (out / "dataset.json").is_file()

    # a finished build run again relaxes nothing and writes the same CSV
    again = build_dataset(load_dataset_config(config_path), out)
    assert again["counts"]["relaxed_now"] == 0 and again["csv"]["sha256"] == manifest["csv"]["sha256"]


def test_another_config_in_the_same_folder_is_refused(tmp_path):
    from discovery.datasets.builder import load_or_plan
    from discovery.errors import ConfigError

    load_or_plan(load_dataset_config(write_config(tmp_path)), tmp_path)
    with pytest.raises(ConfigError, match="another dataset config"):
        load_or_plan(load_dataset_config(write_config(tmp_path, seed=4)), tmp_path)


@pytest.mark.parametrize("problem, expected", [
    ("missing", "dataset config file not found"),
    ("element", "cations: Value error, unknown element 'Xx'"),
    ("key", "unknown key"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, problem, expected):
    path = tmp_path / "bad.yaml"
    if problem == "element":
        path.write_text(yaml.safe_dump({**CONFIG, "cations": ["Xx"]}))
    elif problem == "key":
        path.write_text(yaml.safe_dump({**CONFIG, "colour": "red"}))
    proc = subprocess.run([sys.executable, "-m", "discovery.cli", "dataset", "build", str(path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("discovery: error:")
    assert expected.split(": Value error, ")[-1] in err[0]
    assert not (tmp_path / "o").exists()


def test_work_file_ignores_results_of_another_config(tmp_path):
    from discovery.datasets.worklog import WorkLog

    WorkLog(tmp_path / "w.jsonl", "config-a").append({"job": "NaBr/random-0", "status": "ok"})
    assert "NaBr/random-0" in WorkLog(tmp_path / "w.jsonl", "config-a")
    assert "NaBr/random-0" not in WorkLog(tmp_path / "w.jsonl", "config-b")  # a plan lost, the config changed


def test_work_file_drops_a_line_cut_short_by_a_kill(tmp_path):
    from discovery.datasets.worklog import WorkLog

    log = WorkLog(tmp_path / "w.jsonl")
    log.append({"job": "a", "status": "ok"})
    log.append({"job": "b", "status": "ok"})
    with open(tmp_path / "w.jsonl", "ab") as fh:  # a kill in the middle of a write
        fh.write(b'{"job": "c", "stat')
    again = WorkLog(tmp_path / "w.jsonl")
    assert set(again.results) == {"a", "b"} and "c" not in again
    again.append({"job": "c", "status": "ok"})
    assert [r["job"] for r in lines(tmp_path / "w.jsonl")] == ["a", "b", "c"]
