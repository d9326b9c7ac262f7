"""SQLite ledger: append-only, idempotent results, single writer, readable while written."""

import pytest
from pymatgen.core import Lattice, Structure

from discovery.errors import LedgerError
from discovery.ledger.sqlite import SqliteLedger
from discovery.records import Candidate, Evaluation, Failure, Provenance, Selection


def cand(cid="c1"):
    s = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Candidate(id=cid, structure=s.as_dict(), formula="NaCl", generator="test", round=0)


def evaluation(cid="c1", status="ok"):
    prov = Provenance(code="gpaw", code_version="26.7", settings_fingerprint="fp1", wall_s=3.0)
    fail = Failure(error_class="SCFNotConverged", message="x") if status == "failed" else None
    return Evaluation(candidate_id=cid, fidelity="dft", oracle="gpaw", oracle_fingerprint="fp1", status=status,
                      energy_per_atom=-3.4 if status == "ok" else None, failure=fail, provenance=prov)


def test_records_round_trip_and_results_are_idempotent(tmp_path):
    with SqliteLedger(tmp_path / "ledger.sqlite") as led:
        assert led.add_candidate(cand())
        assert not led.add_candidate(cand()), "same candidate id is stored once"
        result = evaluation()
        assert led.add_evaluation(result)
        assert not led.add_evaluation(evaluation()), "same (candidate, settings) result is stored once"
        led.add_selection(Selection(round=0, policy="ucb", candidate_ids=("c1",), scores=(1.0,)))
        assert led.candidates()["c1"] == cand()
        assert led.evaluations("dft") == [result]
        assert led.selections()[0].candidate_ids == ("c1",)
        with pytest.raises(LedgerError, match="unknown record kind"):
            led.append("evaluashun", "x", {})


def test_failures_are_records(tmp_path):
    with SqliteLedger(tmp_path / "ledger.sqlite") as led:
        led.add_evaluation(evaluation("c2", "failed"))
        (ev,) = led.evaluations()
        assert ev.failure.error_class == "SCFNotConverged" and not ev.ok


def test_single_writer_and_concurrent_reader(tmp_path):
    path = tmp_path / "ledger.sqlite"
    writer = SqliteLedger(path)
    writer.add_candidate(cand())
    with pytest.raises(LedgerError, match="another discovery driver"):
        SqliteLedger(path)
    reader = SqliteLedger(path, writer=False)
    assert list(reader.candidates()) == ["c1"]
    with pytest.raises(LedgerError, match="read-only"):
        reader.add_candidate(cand("c9"))
    reader.close()
    writer.close()
    SqliteLedger(path).close()  # the lock is released with the writer


def test_reader_on_missing_ledger(tmp_path):
    with pytest.raises(LedgerError, match="no campaign ledger"):
        SqliteLedger(tmp_path / "none.sqlite", writer=False)
