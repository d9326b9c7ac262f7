"""Bad input: one clear line on stderr, exit code 2, and nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "discovery"

GOOD_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def run(*args, cwd=None):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def csv_with(tmp_path, cifs):
    import csv

    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "cif", "heat_ref"])
        for i, cif in enumerate(cifs):
            w.writerow([f"m{i}", cif, -1.0])
    return path


CASES = {
    "malformed_yaml": ("rounds: [1, 2\n", "malformed YAML at line"),
    "unknown_key": ("rounds: 2\npolicy: {kind: ucb, kapa: 1.0}\n", "policy.kapa: unknown key"),
    "wrong_type": ("dft_per_round: many\n", "dft_per_round: Input should be a valid integer"),
    "unknown_element": ("chemistry: {elements: [Na, Qq, Cl]}\n", "unknown element 'Qq'"),
    "missing_data_path": ("data: {cdvae_csv: [{path: nowhere/val.csv}]}\n", "data.cdvae_csv.0.path: file not found"),
    "corrupt_cif_rows": ("name: t\ndata: {cdvae_csv: [{path: data.csv}]}\nchemistry: {elements: [Na, Cl]}\n",
                         "all 2 rows are unreadable"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case, command):
    text, expected = CASES[case]
    csv_with(tmp_path, ["data_broken\n_cell_length_a 5\n", "not a cif at all"])
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    args = [command, cfg] + (["--out", out] if command == "run" else [])
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("discovery: error: ") and expected in lines[0]
    assert not out.exists()


def test_partly_corrupt_dataset_is_counted_and_skipped(tmp_path):
    csv_with(tmp_path, [GOOD_CIF, "garbage"])
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text("name: t\ndata: {prototypes: false, cdvae_csv: [{path: data.csv}]}\n"
                   "chemistry: {elements: [Na, Cl]}\n")
    proc = run("validate", cfg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 corrupt rows skipped" in proc.stderr
    assert "1 seed structures" in proc.stderr


def test_existing_campaign_folder_needs_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.sqlite").write_bytes(b"")
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text("name: t\nchemistry: {elements: [Na, Cl]}\nrounds: 1\n")
    proc = run("run", cfg, "--out", out)
    assert proc.returncode == 2 and "pass --resume" in proc.stderr
    proc = run("run", cfg, "--out", tmp_path / "empty", "--resume")
    assert proc.returncode == 2 and "no campaign here" in proc.stderr


def test_status_of_a_folder_without_campaign(tmp_path):
    proc = run("status", tmp_path, "--json")
    assert proc.returncode == 2 and "no campaign here" in proc.stderr
