"""ReplayOracle and its tables (replay stands in for DFT here, as the test names say)."""

import csv

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from discovery.errors import DataError
from discovery.oracles.replay_oracle import ReplayOracle, SimulatedCheapOracle, load_replay_table
from discovery.records import Fidelity
from discovery.structures import make_candidate
from replay_tables import write_table


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path, _ = write_table(tmp_path_factory.mktemp("replay") / "t.csv", n_max=40)
    return load_replay_table(cdvae_csv=path)


def test_replay_oracle_answers_from_the_table_with_fidelity_replay(table):
    oracle = ReplayOracle(table, ["heat", "gap"])
    cand = table.candidates[3]
    ev = oracle.evaluate(cand)
    assert ev.ok and ev.fidelity == Fidelity.REPLAY and ev.oracle == "replay"
    assert ev.properties["heat"] == pytest.approx(table.values["heat"][3])
    assert ev.properties["gap"] == pytest.approx(table.values["gap"][3])
    assert ev.energy_per_atom is None  # no DFT energy is made up
    assert ev.oracle_fingerprint == ReplayOracle(table, ["heat", "gap"]).fingerprint
    assert ev.oracle_fingerprint != ReplayOracle(table, ["heat"]).fingerprint


def test_candidate_outside_the_table_is_a_failed_evaluation(table):
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ev = ReplayOracle(table).evaluate(make_candidate(s, generator="test"))
    assert not ev.ok and ev.failure.error_class == "NotInTable"


def test_missing_column_is_one_clear_error(table):
    with pytest.raises(DataError, match="no column 'heat_ref'"):
        ReplayOracle(table, ["heat_ref"])


def test_cif_folder_plus_labels_csv(tmp_path, table):
    from pymatgen.io.cif import CifWriter

    folder = tmp_path / "cifs"
    folder.mkdir()
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "heat"])
        for i, cand in enumerate(table.candidates[:5]):
            CifWriter(cand.pmg).write_file(folder / f"s{i}.cif")
            w.writerow([f"s{i}.cif" if i % 2 else f"s{i}", table.values["heat"][i]])
    loaded = load_replay_table(cif_dir=folder, labels_csv=tmp_path / "labels.csv")
    assert len(loaded) == 5
    assert sorted(loaded.values["heat"]) == pytest.approx(sorted(table.values["heat"][:5]))
    with pytest.raises(DataError, match="'file' column"):
        (tmp_path / "bad.csv").write_text("name,heat\ns0,1.0\n")
        load_replay_table(cif_dir=folder, labels_csv=tmp_path / "bad.csv")


def test_simulated_cheap_fidelity_is_fixed_per_candidate_and_has_the_stated_error(table):
    cheap = SimulatedCheapOracle(table, ["heat"], noise_std=0.1, bias=0.05, seed=1)
    idx = np.arange(len(table))
    first, again = cheap(idx)["heat"], cheap(idx[::-1])["heat"][::-1]
    assert np.array_equal(first, again)
    err = first - table.values["heat"]
    assert abs(err.mean() - 0.05) < 0.06 and 0.05 < err.std() < 0.15
