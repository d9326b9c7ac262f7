"""Bad input catalogue: every case exits 2 with one line on stderr (``discovery: error: ...``, under
300 characters, no traceback) and writes nothing. Nothing here starts Ray or MLflow: each command
fails before the campaign starts (the campaign files also ask for the local executor, no tracking
and EMT, so a case that wrongly passed would still stay small)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

#: A campaign that validates: small, local, untracked, EMT.
GOOD = {"name": "t", "chemistry": {"elements": ["Cu", "Ag", "O"], "max_atoms": 4}, "dft": {"kind": "emt"}, "mlip": {"enabled": False},
        "execution": {"backend": "local"}, "tracking": {"enabled": False}}
BASE = yaml.safe_dump(GOOD)


def discovery(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "discovery.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("discovery: error: ") and len(lines[0]) < 300, lines[0]
    assert expected in lines[0], lines[0]
    return lines[0]


def alias_bomb(levels: int = 6) -> str:
    """One flow collection whose anchors expand to 9**levels values (a 'billion laughs')."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


# ------------------------------------------------------------------ campaign files

CONFIG_CASES = {
    "empty_file": ("", [], "name: required key is missing"),
    "only_rounds": ("rounds: 2\n", [], "name: required key is missing"),
    "no_chemistry": ("name: t\n", [], "chemistry.elements: required key is missing"),
    "chemistry_without_elements": ("name: t\nchemistry: {max_atoms: 4}\n", [],
                                   "chemistry.elements: required key is missing"),
    "name_dotdot": (BASE, ["name=.."], "name: String should match pattern"),
    "name_slash": (BASE, ["name=a/b"], "name: String should match pattern"),
    "name_hidden": (BASE, ["name=.hidden"], "name: String should match pattern"),
    "name_empty": (BASE, ["name="], "name: String should match pattern"),
    "rounds_huge": (BASE, ["rounds=1000000000"], "rounds: Input should be less than or equal to 10000 (got"),
    "dft_per_round_huge": (BASE, ["dft_per_round=1000000"], "dft_per_round: Input should be less than or equal to"),
    "dft_slots_huge": (BASE, ["execution.dft_slots=1000000"], "execution.dft_slots: Input should be less than"),
    "n_per_round_huge": (BASE + "generators: [{kind: substitution, n_per_round: 100000000}]\n", [],
                         "generators.0.n_per_round: Input should be less than or equal to 100000 (got"),
    "top_k_huge": (BASE, ["mlip.top_k=100000000"], "mlip.top_k: Input should be less than or equal to 100000 (got"),
    "duplicate_key": (BASE + "rounds: 2\nrounds: 3\n", [], "duplicate key 'rounds'"),
    "alias_bomb_in_file": (BASE + f"rounds: {alias_bomb()}\n", [], "more than 200,000 values"),
    "alias_bomb_in_set": (BASE, [f"rounds={alias_bomb()}"], "more than 200,000 values"),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_campaign_file(tmp_path, case, command):
    text, overrides, expected = CONFIG_CASES[case]
    (tmp_path / "c.yaml").write_text(text)
    before = snapshot(tmp_path)
    extra = ["--out", tmp_path / "out"] if command == "run" else []
    proc = discovery(command, "c.yaml", *extra, *[a for o in overrides for a in ("--set", o)], cwd=tmp_path)
    line = assert_one_line(proc, expected)
    assert "c.yaml" in line
    assert snapshot(tmp_path) == before


def test_run_checks_exactly_what_validate_checks(tmp_path):
    """An impossible DFT setting is refused by `run` before anything is written, with `validate`'s line."""
    (tmp_path / "c.yaml").write_text(BASE)
    overrides = ["--set", "dft={kind: gpaw, cutoff_ev: 1000000000}"]
    before = snapshot(tmp_path)
    validate = assert_one_line(discovery("validate", "c.yaml", *overrides, cwd=tmp_path), "TooManyPlaneWaves")
    run = assert_one_line(discovery("run", "c.yaml", "--out", "out", *overrides, cwd=tmp_path), "TooManyPlaneWaves")
    assert run == validate
    assert snapshot(tmp_path) == before


def test_a_good_campaign_file_validates(tmp_path):
    (tmp_path / "c.yaml").write_text(BASE)
    proc = discovery("validate", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------ damaged campaign folders


def healthy_ledger(path: Path, n: int = 60) -> None:
    """A real ledger with enough records to span many pages, closed cleanly."""
    from discovery.ledger.sqlite import SqliteLedger

    with SqliteLedger(path) as ledger:
        ledger.append("meta", "campaign", {"name": "t"})
        for i in range(n):
            ledger.append("conditions", str(i), {"padding": "x" * 3000}, i)
    path.with_suffix(".lock").unlink(missing_ok=True)


def random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 20)


def truncated(path: Path) -> None:
    healthy_ledger(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def foreign(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()


def foreign_records(path: Path) -> None:
    """Another program's SQLite database that happens to have a ``records`` table."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE records (title TEXT)")
    db.commit()
    db.close()


DAMAGE = {"random_bytes": (random_bytes, "not an SQLite database"),
          "truncated": (truncated, "damaged"),
          "empty": (empty, "empty file"),
          "foreign": (foreign, "not a campaign ledger"),
          "foreign_records": (foreign_records, "not a campaign ledger")}


@pytest.mark.parametrize("command", ["status", "resume"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_ledger(tmp_path, damage, command):
    make, expected = DAMAGE[damage]
    (tmp_path / "c.yaml").write_text(BASE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "campaign.yaml").write_text(BASE)
    make(out / "ledger.sqlite")
    (out / "ledger.lock").write_bytes(b"")  # left by the driver that wrote the ledger
    before = snapshot(tmp_path)
    args = ["status", out, "--json"] if command == "status" else ["run", "c.yaml", "--out", out, "--resume"]
    line = assert_one_line(discovery(*args, cwd=tmp_path), expected)
    assert "ledger.sqlite" in line
    assert snapshot(tmp_path) == before, "nothing may be written into a damaged campaign folder"


STORED = {"missing": (None, "stored campaign file not found"),
          "malformed": ("rounds: [1, 2\n", "malformed YAML"),
          "not_a_mapping": ("- a\n- b\n", "expected a mapping"),
          "binary": (b"\xff\xfe\x00garbage", "not a text file")}


@pytest.mark.parametrize("case", sorted(STORED))
def test_resume_with_a_bad_stored_campaign_file(tmp_path, case):
    content, expected = STORED[case]
    (tmp_path / "c.yaml").write_text(BASE)
    out = tmp_path / "out"
    out.mkdir()
    healthy_ledger(out / "ledger.sqlite")
    if isinstance(content, str):
        (out / "campaign.yaml").write_text(content)
    elif content is not None:
        (out / "campaign.yaml").write_bytes(content)
    before = snapshot(tmp_path)
    line = assert_one_line(discovery("run", "c.yaml", "--out", out, "--resume", cwd=tmp_path), expected)
    assert "campaign.yaml" in line
    assert snapshot(tmp_path) == before


def test_status_of_a_healthy_ledger_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    healthy_ledger(out / "ledger.sqlite", n=3)
    before = snapshot(tmp_path)
    proc = discovery("status", out, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ data sets


def test_benchmark_names_non_numeric_property_cells(tmp_path):
    """A table whose property cells are mostly not numbers: the error says so (not only 'raise
    initial_fraction')."""
    import csv

    from replay_tables import perovskite_rows

    rows = perovskite_rows(n_max=40)
    for i, row in enumerate(rows):
        if i % 10:
            row["heat"] = "high"
    with open(tmp_path / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bench = {"name": "b", "n_seeds": 1, "table": {"cdvae_csv": "table.csv"},
             "objectives": [{"name": "low", "bounds": [{"property": "heat", "max": 0.5}]}],
             "initial_fraction": 0.05, "batch_size": 5, "budget": 10, "surrogate": {"kind": "forest", "n_estimators": 10},
             "policies": [{"kind": "random"}, {"kind": "greedy"}], "execution": {"backend": "local"},
             "tracking": {"enabled": False}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bench))
    before = snapshot(tmp_path)
    proc = discovery("benchmark", "b.yaml", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # the run has started (its log is shown), so the error is the last line and the only error line
    errors = [line for line in proc.stderr.splitlines() if line.startswith("discovery: error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert "36 of 40 cells of 'heat' are not numbers (first: row 2: 'high')" in errors[0]
    assert snapshot(tmp_path) == before
