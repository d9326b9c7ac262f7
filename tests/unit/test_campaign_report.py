"""The campaign report (``discovery report DIR``, also written at the end of every run), built from a
short EMT campaign (EMT stands in for DFT; local executor, no Ray, no MLflow): every section is
there, every figure is embedded as a data URI, nothing points to the network, the hits are in the
structures table, it renders while a driver holds the ledger, and it opens in headless Chromium."""

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from discovery.campaign_report.html import SECTIONS

# Cu-Au under EMT: random symmetric cells relax onto (or near) the elements' hull, so a few rounds
# give hits at this bound; from the third round on the forest surrogate ranks the pool.
CAMPAIGN = {
    "name": "report-emt", "seed": 0, "rounds": 4, "dft_per_round": 3,
    "chemistry": {"elements": ["Cu", "Au"], "max_atoms": 4},
    "generators": [{"kind": "substitution", "n_per_round": 8}, {"kind": "random_symmetric", "n_per_round": 8}],
    "filters": {"charge_neutral": False}, "objective": {"hit_e_above_hull_ev": 0.1},
    "surrogate": {"kind": "forest", "n_estimators": 20}, "mlip": {"enabled": False},
    "dft": {"kind": "emt", "max_steps": 200}, "execution": {"backend": "local", "dft_slots": 2},
    "tracking": {"enabled": False},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of a page the tests look at: element ids, img sources, links, tags, and which
    table row (its class) mentions which text."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.imgs, self.hrefs, self.tags, self.rows = set(), [], [], set(), []
        self._row: list | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs)
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "tr":
            self._row = [attrs.get("class") or "", ""]
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._row is not None:
            self._row[1] += data


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, cli) -> Path:
    """The folder of a finished EMT campaign, run with the ``discovery run`` command."""
    root = tmp_path_factory.mktemp("report-emt")
    (root / "campaign.yaml").write_text(yaml.safe_dump(CAMPAIGN))
    proc = cli("run", root / "campaign.yaml", "--out", root / "out", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "out"


@pytest.mark.slow
def test_a_run_writes_its_report(campaign):
    page = Page((campaign / "report.html").read_text())
    assert {anchor for anchor, _ in SECTIONS} <= page.ids


@pytest.mark.slow
def test_report_is_self_contained_and_lists_the_hits(campaign, tmp_path):
    from discovery.campaign_state import CampaignState
    from discovery.cli import main
    from discovery.ledger.sqlite import SqliteLedger

    out = tmp_path / "elsewhere" / "report.html"
    assert main(["report", str(campaign), "--out", str(out)]) == 0
    text = out.read_text()
    page = Page(text)
    assert {anchor for anchor, _ in SECTIONS} <= page.ids
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    # every figure is an embedded PNG: hull, discovery curves, surrogate parity, calibration, cells
    assert len(page.imgs) >= 5
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:60]
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "http" not in " ".join([*page.hrefs, *(i["src"][:30] for i in page.imgs)])
    assert "url(" not in text  # no CSS fetch either
    # the CIF links are relative to the report and lead to the campaign's CIFs
    cifs = [h for h in page.hrefs if h.endswith(".cif")]
    assert cifs and all((out.parent / unquote(h)).resolve().is_file() for h in cifs)

    with SqliteLedger(campaign / "ledger.sqlite", writer=False) as ledger:
        state = CampaignState.from_ledger(ledger)
        rounds = [p for _, _, p, _ in ledger.rows("round")]
    # each round records its funnel per generator, and the generators table shows it
    generators = text[text.index('<section id="generators">'):text.index('<section id="structures">')]
    for rnd in rounds:
        funnel = rnd["by_generator"]
        assert sum(g["proposed"] for g in funnel.values()) == rnd["proposed"]
        assert sum(g["novel"] for g in funnel.values()) == rnd["novel"]
        for gen, g in funnel.items():
            assert (f"<td>{rnd['round']}</td><td class=l>{gen}</td><td>{g['proposed']}</td><td>{g['valid']}</td>"
                    f"<td>{g['novel']}</td>") in generators, (rnd["round"], gen)
    # every hit the ledger holds is a highlighted row (how many there are depends on the run's
    # timing until campaigns are reproducible, issue 17)
    hit_rows = [row for cls, row in page.rows if cls == "hit"]
    for cid in state.hits():
        assert any(cid in row and state.candidates[cid].formula in row for row in hit_rows), cid
    assert len(hit_rows) >= len(state.hits())
    if "surrogate" in state.scored_by.values():  # the surrogate ranked a round: parity and calibration drawn
        assert {"surrogate parity", "calibration"} <= {img["alt"] for img in page.imgs}


@pytest.mark.slow
def test_report_of_a_running_campaign_shows_its_failures(campaign, tmp_path):
    """A copy of the campaign with a driver holding its ledger, which records a lost worker as the
    campaign does (`failed_evaluation`): the report reads it read-only and lists the failure."""
    from discovery.campaign_report import write_report
    from discovery.ledger.sqlite import SqliteLedger
    from discovery.records import failed_evaluation

    folder = tmp_path / "running"
    shutil.copytree(campaign, folder)
    ledger = SqliteLedger(folder / "ledger.sqlite", writer=True)
    try:
        meta = ledger.meta()
        computed = {e.candidate_id for e in ledger.evaluations()}
        idle = next(c for cid, c in ledger.candidates().items() if cid not in computed)
        ledger.add_evaluation(failed_evaluation(
            idle.id, fidelity=meta["dft_fidelity"], oracle="emt", fingerprint=meta["dft_fingerprint"],
            error_class="WorkerLost", message="the worker's node <went> away", retryable=True), idle.round)
        path = write_report(folder)
    finally:
        ledger.close()
    text = path.read_text()
    assert "not running" not in text and "running" in text
    failures = text[text.index('<section id="failures">'):text.index('<section id="settings">')]
    assert "WorkerLost" in failures and "the worker&#x27;s node &lt;went&gt; away" in failures
    assert idle.formula in failures


@pytest.mark.slow
def test_end_of_run_report_goes_to_the_tracker_and_a_failure_is_only_a_warning(campaign, tmp_path, caplog):
    from discovery.campaign_report import try_write_report

    class Tracker:  # what a run hands over: MLflow's log_artifact, recorded
        logged: list = []

        def log_artifact(self, path, artifact_path=None):
            self.logged.append(Path(path))

    folder = tmp_path / "copy"
    shutil.copytree(campaign, folder)
    tracker = Tracker()
    path = try_write_report(folder, tracker)
    assert path == folder / "report.html" and tracker.logged == [path]
    (folder / "ledger.sqlite").write_bytes(b"not a database")
    with caplog.at_level("WARNING", logger="discovery.campaign_report"):
        assert try_write_report(folder, tracker) is None
    assert tracker.logged == [path]
    assert any(r.levelname == "WARNING" and "campaign report not written" in r.getMessage() for r in caplog.records)


def test_wall_time_leaves_out_the_pause_between_a_kill_and_a_resume():
    from discovery.report import campaign_clock

    # session 1 starts at 0 and is killed after its last record, at 40; session 2 runs 1000..1060
    clock = campaign_clock([("start", 0.0), ("start", 1000.0), ("end", 1060.0)], [10.0, 40.0, 1030.0])
    assert [clock(t) for t in (10.0, 40.0, 1000.0, 1030.0, 1060.0)] == [10.0, 40.0, 40.0, 70.0, 100.0]


def test_random_order_expectation_is_exact():
    from discovery.campaign_report.data import random_order_expectation

    hits, best = random_order_expectation([0.1, None, 0.3], [True, False, False])
    assert hits == pytest.approx([1 / 3, 2 / 3, 1.0])
    # one call: a third fails; otherwise 0.1 or 0.3 alike. Two calls: the pair {0.3, failed} has best 0.3
    assert best == pytest.approx([0.2, (0.1 + 0.1 + 0.3) / 3, 0.1])


def test_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    from discovery.cli import main

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "nothing", tmp_path / "empty"):
        assert main(["report", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(folder) in err[0] and "no campaign here" in err[0], err
    assert not (tmp_path / "empty" / "report.html").exists()


CHROMIUM_FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
# appended to a copy of the report (the report itself has no script): after the load event, every
# image records its decoded width, so the dumped DOM says whether the browser could draw it
PROBE = ("<script>window.addEventListener('load', () => { for (const img of document.images) "
         "img.setAttribute('data-width', img.naturalWidth); document.body.setAttribute('data-images', "
         "document.images.length); });</script>")


@pytest.mark.slow
def _chromium_runs() -> bool:
    """A chromium that starts (Ubuntu's snap wrapper is on PATH but exits non-zero)."""
    path = shutil.which("chromium")
    if path is None:
        return False
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _chromium_runs(),
                    reason="no working `chromium` on PATH (Debian package chromium; `make install` tries to bring it)")
def test_report_opens_in_headless_chromium(campaign, tmp_path):
    chromium = shutil.which("chromium")
    report = tmp_path / "report.html"
    shutil.copy(campaign / "report.html", report)
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], check=False, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert ":CONSOLE" not in dom.stderr, [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    page = Page(dom.stdout)
    assert {anchor for anchor, _ in SECTIONS} <= page.ids
    expected = report.read_text().count("<img ")
    assert expected >= 5 and len(page.imgs) == expected
    assert all(int(img.get("data-width", 0)) > 0 for img in page.imgs), [img.get("alt") for img in page.imgs
                                                                        if int(img.get("data-width", 0)) == 0]

    shot = tmp_path / "report.png"
    proc = subprocess.run([chromium, *flags, "--window-size=1280,4000", f"--screenshot={shot}", report.as_uri()],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC), proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
    print(f"screenshot of the report: {shot}")
