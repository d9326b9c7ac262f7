"""Bad cells in a data set are counted and reported, never dropped in silence."""

import csv
import logging

import pytest
from replay_tables import perovskite_rows

from discovery.data.loaders import load_cdvae_csv
from discovery.errors import DataError
from discovery.oracles.replay_oracle import load_replay_table


def write(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_non_numeric_property_cells_are_counted_and_named(tmp_path, caplog):
    rows = perovskite_rows(n_max=6)
    rows[1]["heat"] = "high"
    rows[4]["heat"] = "1.2 eV"
    rows[2]["heat"] = ""  # an empty cell is a missing value, not a bad one
    rows[3]["heat"] = "NaN"  # so is NaN (how pandas and others write one)
    for row in rows:
        row["note"] = "from a paper"  # a text column: no cell is a number, nothing is reported
    path = write(tmp_path / "t.csv", rows)
    with caplog.at_level(logging.WARNING, logger="discovery.data.loaders"):
        data = load_cdvae_csv(path)
    assert len(data.candidates) == 6 and data.n_corrupt == 0
    assert data.n_bad_values == 2
    assert data.bad_values["heat"] == "2 of 6 cells of 'heat' are not numbers (first: row 2: 'high')"
    assert "2 of 6 cells of 'heat' are not numbers" in caplog.text
    assert "note" not in caplog.text
    labelled = [c for c in data.candidates if "heat" in data.labels[c.id]]
    assert len(labelled) == 2


def test_a_property_column_without_numbers_is_named_as_such(tmp_path):
    rows = perovskite_rows(n_max=4)
    for row in rows:
        row["heat"] = "n.a."
    path = write(tmp_path / "t.csv", rows)
    table = load_replay_table(cdvae_csv=path)
    with pytest.raises(DataError) as err:
        table.require(["heat"])
    assert "'heat'" in str(err.value) and "4 of 4 cells of 'heat' are not numbers" in str(err.value)
