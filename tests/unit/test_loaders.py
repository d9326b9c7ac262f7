"""CDVAE CSV and CIF-folder loaders on small files written in tmp_path."""

import csv
import logging
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

import discovery
from discovery.data.loaders import default_data_dir, load_cdvae_csv, load_cif_dir
from discovery.errors import DataError
from discovery.structures import candidate_id

CORRUPT_CIF = "data_broken\n_cell_length_a 5.0\nloop_\n_atom_site_label\n this is not a structure\n"


def structures() -> dict[str, Structure]:
    return {
        "NaCl": Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "KCl": Structure.from_spacegroup(225, Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "KMgCl3": Structure(Lattice.cubic(5.0), ["K", "Mg", "Cl", "Cl", "Cl"],
                            [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]),
    }


def write_csv(path, rows, fieldnames=("", "material_id", "cif", "formula", "heat_ref", "dir_gap")):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


@pytest.fixture
def cdvae_csv(tmp_path):
    s = structures()
    rows = [
        {"": 0, "material_id": "m-1", "cif": str(CifWriter(s["NaCl"])), "formula": "NaCl", "heat_ref": -1.5,
         "dir_gap": 5.0},
        {"": 1, "material_id": "m-2", "cif": str(CifWriter(s["KCl"])), "formula": "KCl", "heat_ref": -1.7,
         "dir_gap": 6.0},
        {"": 2, "material_id": "m-3", "cif": CORRUPT_CIF, "formula": "NaCl", "heat_ref": 0.1, "dir_gap": 1.0},
        {"": 3, "material_id": "m-4", "cif": str(CifWriter(s["KMgCl3"])), "formula": "KMgCl3", "heat_ref": -1.2,
         "dir_gap": ""},
    ]
    path = tmp_path / "mini.csv"
    write_csv(path, rows)
    return path


def test_load_cdvae_csv_counts_and_labels(cdvae_csv, caplog):
    with caplog.at_level(logging.WARNING, logger="discovery.data.loaders"):
        data = load_cdvae_csv(cdvae_csv)
    assert data.n_rows == 4
    assert len(data.candidates) == 3
    assert data.n_corrupt == 1 and data.n_filtered == 0
    assert len(data.errors) == 1 and data.errors[0].startswith("row 3:")
    assert "row 3" in caplog.text
    by_formula = {c.formula: c for c in data.candidates}
    assert set(by_formula) == {"NaCl", "KCl", "KMgCl3"}
    assert all(c.generator == "dataset:mini" for c in data.candidates)
    nacl = by_formula["NaCl"]
    assert nacl.id == candidate_id(structures()["NaCl"])
    assert data.labels[nacl.id] == {"heat_ref": -1.5, "dir_gap": 5.0}  # no index, id or text columns
    assert data.labels[by_formula["KMgCl3"].id] == {"heat_ref": -1.2}  # empty cells are not labels
    assert nacl.conditions["material_id"] == "m-1"


def test_load_cdvae_csv_element_filter_and_max_rows(cdvae_csv):
    data = load_cdvae_csv(cdvae_csv, elements={"Na", "Cl"})
    assert [c.formula for c in data.candidates] == ["NaCl"]
    assert data.n_filtered == 2 and data.n_corrupt == 1
    data = load_cdvae_csv(cdvae_csv, max_rows=2)
    assert data.n_rows == 2 and len(data.candidates) == 2 and data.n_corrupt == 0


def test_duplicate_rows_are_loaded_once(tmp_path):
    s = structures()["NaCl"]
    shifted = s.copy()
    shifted.translate_sites(range(len(shifted)), [0.25, 0.1, 0.0])
    rows = [{"cif": str(CifWriter(s)), "heat_ref": 1.0}, {"cif": str(CifWriter(shifted)), "heat_ref": 2.0}]
    path = tmp_path / "dup.csv"
    write_csv(path, rows, fieldnames=("cif", "heat_ref"))
    data = load_cdvae_csv(path)
    assert len(data.candidates) == 1 and data.n_duplicates == 1
    assert data.labels[data.candidates[0].id] == {"heat_ref": 1.0}


def test_missing_file_and_missing_column_raise_data_error(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv"):
        load_cdvae_csv(missing)
    no_cif = tmp_path / "nocif.csv"
    write_csv(no_cif, [{"structure": "x", "heat_ref": 1}], fieldnames=("structure", "heat_ref"))
    with pytest.raises(DataError, match=r"nocif\.csv.*'cif' column") as info:
        load_cdvae_csv(no_cif)
    assert "\n" not in str(info.value)


def test_load_cif_dir_skips_corrupt_files(tmp_path, caplog):
    folder = tmp_path / "cifs"
    folder.mkdir()
    s = structures()
    CifWriter(s["NaCl"]).write_file(folder / "a_nacl.cif")
    CifWriter(s["KMgCl3"]).write_file(folder / "b_kmgcl3.cif")
    (folder / "c_broken.cif").write_text(CORRUPT_CIF)
    (folder / "notes.txt").write_text("not a cif")
    with caplog.at_level(logging.WARNING, logger="discovery.data.loaders"):
        data = load_cif_dir(folder)
    assert data.n_rows == 3 and data.n_corrupt == 1
    assert sorted(c.formula for c in data.candidates) == ["KMgCl3", "NaCl"]
    assert data.errors[0].startswith("c_broken.cif:")
    assert "c_broken.cif" in caplog.text
    assert all(c.generator == "dataset:cifs" for c in data.candidates)
    filtered = load_cif_dir(folder, elements=["Na", "Cl"])
    assert [c.formula for c in filtered.candidates] == ["NaCl"] and filtered.n_filtered == 1
    with pytest.raises(DataError, match="missing_dir"):
        load_cif_dir(tmp_path / "missing_dir")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DISCOVERY_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("DISCOVERY_DATA_DIR")
    path = default_data_dir()
    assert path.parts[-2:] == ("shared", "data")
    assert path.parent.parent == Path(discovery.__file__).resolve().parents[1].parent
