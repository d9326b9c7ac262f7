"""CAMD-style validation: phases withheld from a campaign leave its seeds, and the status names
the ones a campaign finds again (`discovery.report._milestones`)."""

import shutil

import pytest
from pydantic import ValidationError

from discovery.config import CampaignConfig
from discovery.seeds import seed_candidates, withheld_candidates

CHLORIDES = {"elements": ["K", "Rb", "Mg", "Ca", "Cl"], "max_atoms": 5,
             "reference_phases": [{"formula": "KCl", "prototype": "rocksalt"}]}


def test_withheld_phases_leave_the_seeds_and_nothing_else_does():
    config = CampaignConfig(name="t", chemistry=CHLORIDES,
                            validation={"withhold": [{"formula": "KCaCl3", "prototype": "perovskite"}]})
    withheld = withheld_candidates(config)
    everything = seed_candidates(config)
    kept = seed_candidates(config, withheld)
    removed = [s for s in everything if s.id not in {k.id for k in kept}]
    assert [w.formula for w in withheld] == ["KCaCl3"]
    # only the perovskite with K on the A site goes; the other perovskites stay, so substitution can
    # still reach KCaCl3 from them
    assert [s.formula for s in removed] == ["KCaCl3"]
    assert {"KMgCl3", "RbCaCl3", "RbMgCl3"} <= {s.formula for s in kept}


@pytest.mark.parametrize(("phase", "message"), [
    ({"formula": "NaCl", "prototype": "rocksalt"}, "validation.withhold.0: NaCl has elements ['Na'] outside"),
    ({"formula": "KCl", "prototype": "rocksalt"}, "is also a reference phase, so it cannot be withheld"),
])
def test_a_withheld_phase_outside_the_chemistry_or_among_the_references_is_refused(phase, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CampaignConfig(name="t", chemistry=CHLORIDES, validation={"withhold": [phase]})


@pytest.mark.slow
def test_status_names_the_first_hit_and_the_rediscovered_phases(tmp_path, cli):
    """A finished EMT campaign, told afterwards that its first hit and a result far above the hull
    had been withheld: it rediscovered the first (at that hit's DFT call) and not the second."""
    import yaml

    from discovery.campaign_state import CampaignState
    from discovery.ledger.sqlite import SqliteLedger
    from discovery.report import campaign_status

    campaign = {"name": "withhold-emt", "seed": 0, "rounds": 3, "dft_per_round": 3,
                "chemistry": {"elements": ["Cu", "Au"], "max_atoms": 4},
                "generators": [{"kind": "random_symmetric", "n_per_round": 8}],
                "filters": {"charge_neutral": False}, "objective": {"hit_e_above_hull_ev": 0.1},
                "surrogate": {"kind": "forest", "n_estimators": 20}, "mlip": {"enabled": False},
                "dft": {"kind": "emt", "max_steps": 200}, "execution": {"backend": "local", "dft_slots": 2},
                "tracking": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(campaign))
    out = tmp_path / "out"
    proc = cli("run", tmp_path / "c.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = campaign_status(out)
    first = status["first_hit"]
    assert first is not None, "the EMT campaign should find a hit"
    assert status["withheld"] == 0 and status["rediscovered"] == []
    assert f"first hit: {first['formula']} at DFT call {first['dft_call']}" in proc.stdout

    folder = tmp_path / "copy"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("ledger.lock"))
    with SqliteLedger(folder / "ledger.sqlite") as ledger:
        state = CampaignState.from_ledger(ledger)
        hull = state.dft_hull()
        far = next(cid for cid, ev in state.candidate_dft().items() if ev.ok
                   and hull.evaluate(CampaignState.relaxed_copy(state.candidates[cid], ev).pmg.composition,
                                     ev.energy_per_atom).e_above_hull > 0.3)
        phases = [{"formula": state.candidates[c].formula, "prototype": name,
                   "structure": state.dft[c].relaxed_structure} for c, name in ((first["id"], "found"), (far, "far"))]
        ledger.append("meta", "withheld", {"withheld": phases})
    status = campaign_status(folder)
    assert status["withheld"] == 2
    assert [(r["id"], r["prototype"], r["dft_call"]) for r in status["rediscovered"]] == [
        (first["id"], "found", first["dft_call"])]
    shown = cli("status", folder)
    assert f"rediscovered 1 of 2 withheld known phases; {first['formula']} (found) at DFT call" in shown.stdout
    from discovery.campaign_report import write_report

    page = write_report(folder).read_text()
    assert "rediscovered 1 of 2 withheld known phases" in page


def test_a_campaign_from_before_validation_existed_still_resumes(tmp_path):
    """Stored campaign files written before ``validation`` existed lack the section: it stands at
    its default (nothing withheld), so the resume goes on; withholding something now is refused."""
    import yaml

    from discovery.errors import ConfigError
    from discovery.launch import check_resume_compatible

    config = CampaignConfig(name="t", chemistry=CHLORIDES)
    stored = config.model_dump(mode="json")
    del stored["validation"]
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(stored))
    check_resume_compatible(config, tmp_path)
    withholding = CampaignConfig(name="t", chemistry=CHLORIDES,
                                 validation={"withhold": [{"formula": "KCaCl3", "prototype": "perovskite"}]})
    with pytest.raises(ConfigError, match="validation: differs"):
        check_resume_compatible(withholding, tmp_path)
