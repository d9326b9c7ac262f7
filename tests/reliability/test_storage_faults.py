"""Storage faults: a full disk (a file-size limit, ``RLIMIT_FSIZE``) while a checkpoint or the
ledger is written, a read-only campaign folder, a checkpoint cut short. Each ends in one clear line
naming the file (never a traceback), nothing half-written is ever read as whole (every file is
written atomically), and the campaign resumes once the cause is gone, without repeating DFT.

Campaigns are tiny EMT ones run through the installed ``discovery`` command, in this process's
machine only (local executor, no tracking, no CHGNet): neither Ray nor MLflow starts."""

import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROUNDS, PER_ROUND, REFERENCES = 3, 3, 3  # references: the elements Cu, Ag, Au
CAMPAIGN = {
    "name": "storage", "seed": 1, "rounds": ROUNDS, "dft_per_round": PER_ROUND,
    "chemistry": {"elements": ["Cu", "Ag", "Au"], "max_atoms": 4, "reference_phases": []},
    "generators": [{"kind": "substitution", "n_per_round": 10}, {"kind": "random_symmetric", "n_per_round": 6}],
    "surrogate": {"ensemble_size": 2, "max_epochs": 5},
    "mlip": {"enabled": False},
    "dft": {"kind": "emt", "max_steps": 20},
    "execution": {"backend": "local", "dft_slots": 1},
    "tracking": {"enabled": False},
}
BIN = Path(sys.executable).parent / "discovery"
SURROGATE_CONFIG = {"preset": "cpu", "ensemble_size": 2, "max_epochs": 3, "batch_size": 4}


def write_campaign(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump({**CAMPAIGN, **changes}))
    return path


def file_size_limit(limit: int):
    """``preexec_fn`` of a child that may write no file beyond ``limit`` bytes: a write past it
    fails with EFBIG (SIGXFSZ ignored, so the write fails instead of killing the process), as on a
    full disk. Inherited by the child's own children (the DFT workers)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def the_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The one ``discovery: error:`` line of a failed command, which names each of ``names``."""
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("discovery: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of an atomic write left behind."""
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp"))


def evaluations(out: Path) -> int:
    with sqlite3.connect(f"file:{out / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("select count(*) from records where kind = 'evaluation'").fetchone()[0]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its mode, size, mtime and (files) content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


# ----------------------------------------------------------------------------- a checkpoint on a full disk

SAVE_UNDER_LIMIT = r"""
import json, resource, signal, sys
from pathlib import Path
from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
from discovery.surrogates.cgcnn_ensemble import CGCNNEnsembleSurrogate

old, new, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
surrogate = CGCNNEnsembleSurrogate(CGCNNEnsembleConfig(**json.loads(sys.argv[4])), seed=0)
surrogate.load(old)
surrogate._target_mean += 1.0  # another model than the one on disk
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
out = {}
for path in (new, old):  # a first checkpoint, then one replacing a whole one
    try:
        surrogate.save(path)
        out[path.name] = None
    except OSError as exc:
        out[path.name] = [exc.errno, exc.filename]
print(json.dumps(out))
"""


def alkali_halides(n: int) -> tuple[list, list[float]]:
    """Rocksalt cells with a smooth synthetic target (eV/atom): enough to fit a tiny ensemble."""
    from pymatgen.core import Lattice, Structure

    from discovery.records import Candidate

    cands, ys = [], []
    for i, (cat, an) in enumerate([(c, a) for c in ("Li", "Na", "K") for a in ("F", "Cl", "Br")][:n]):
        s = Structure(Lattice.cubic(4.0 + 0.3 * i), [cat, an], [[0, 0, 0], [0.5, 0.5, 0.5]])
        cands.append(Candidate(id=f"ah-{i}", structure=s.as_dict(), formula=s.composition.reduced_formula,
                               generator="test"))
        ys.append(-1.0 - 0.1 * i)
    return cands, ys


@pytest.fixture(scope="module")
def surrogate():
    import torch

    from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
    from discovery.surrogates.cgcnn_ensemble import CGCNNEnsembleSurrogate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = CGCNNEnsembleSurrogate(CGCNNEnsembleConfig(**SURROGATE_CONFIG), seed=0)
        model.fit(*alkali_halides(9))
    finally:
        torch.set_num_threads(threads)
    return model


def test_a_checkpoint_that_does_not_fit_on_the_disk_leaves_the_previous_one_whole(surrogate, tmp_path):
    import errno

    old = surrogate.save(tmp_path / "surrogate.pt")
    before = old.read_bytes()
    limit = len(before) // 2  # the new checkpoint is as large as the old one: it cannot fit
    proc = subprocess.run([sys.executable, "-c", SAVE_UNDER_LIMIT, str(old), str(tmp_path / "new.pt"), str(limit),
                           json.dumps(SURROGATE_CONFIG)], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # an OSError naming the checkpoint (the command line makes it one line), not torch's RuntimeError
    assert result == {"new.pt": [errno.EFBIG, str(tmp_path / "new.pt")], "surrogate.pt": [errno.EFBIG, str(old)]}
    assert not (tmp_path / "new.pt").exists(), "half a checkpoint was left under the final name"
    assert old.read_bytes() == before, "the previous checkpoint was damaged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["surrogate.pt"], "temporary files were left behind"

    from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
    from discovery.surrogates.cgcnn_ensemble import CGCNNEnsembleSurrogate

    reloaded = CGCNNEnsembleSurrogate(CGCNNEnsembleConfig(**SURROGATE_CONFIG), seed=0)
    reloaded.load(old)
    cands, _ = alkali_halides(3)
    np.testing.assert_allclose([p.mean for p in reloaded.predict(cands)], [p.mean for p in surrogate.predict(cands)])


# ----------------------------------------------------------------------------- a campaign on a full disk


def check_failed_run(proc: subprocess.CompletedProcess, out: Path, *names: str) -> int:
    """One clear line naming ``names``; no temporary file and no half checkpoint left; returns the
    DFT results the ledger holds."""
    import torch

    the_error(proc, *names)
    assert leftovers(out) == []
    for ckpt in (out / "checkpoints").glob("*.pt"):  # whatever is there is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
    return evaluations(out)


@pytest.mark.slow
def test_a_campaign_on_a_full_disk_stops_with_one_line_and_resumes(cli, tmp_path):
    # six members make a checkpoint of about 500 kB, larger than the second limit
    config = write_campaign(tmp_path, surrogate={"ensemble_size": 6, "max_epochs": 5})
    out = tmp_path / "out"
    total = REFERENCES + ROUNDS * PER_ROUND

    # the ledger's write-ahead log outgrows the limit after the first results are in
    proc = cli("run", config, "--out", out, preexec_fn=file_size_limit(262_144))
    first = check_failed_run(proc, out, str(out / "ledger.sqlite"))
    assert REFERENCES <= first < total, f"the ledger write should fail mid-campaign ({first} results)"

    # resumed on a disk that is still too small: the first surrogate checkpoint does not fit
    proc = cli("run", config, "--out", out, "--resume", preexec_fn=file_size_limit(400_000))
    ckpt = out / "checkpoints" / "cgcnn_ensemble_formation_energy_per_atom.pt"
    second = check_failed_run(proc, out, str(ckpt), "--resume")
    assert first < second < total, f"the checkpoint write should fail mid-campaign ({second} results)"
    assert not ckpt.exists()

    proc = cli("run", config, "--out", out, "--resume")  # space freed
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(cli("status", out, "--json").stdout)
    assert status["rounds"] == ROUNDS
    assert status["dft_references_completed"] == REFERENCES
    assert status["dft_completed"] + status["dft_failed"] == ROUNDS * PER_ROUND
    assert status["dft_repeated"] == 0 and status["dft_attempts"] == status["dft_submitted"]
    with sqlite3.connect(out / "ledger.sqlite") as db:
        planned = sorted(r for (r,) in db.execute("select round from records where kind = 'selection'"))
    assert planned == list(range(ROUNDS))
    # every calculation ran once: its work folder logged one completed run
    runs = [f.read_text().splitlines() for f in (out / "work" / "dft").glob("*/*/runs.jsonl")]
    assert len(runs) == total
    assert all(len(lines) == 1 and json.loads(lines[0])["event"] == "completed" for lines in runs), runs
    assert leftovers(out) == [] and ckpt.is_file()


# ----------------------------------------------------------------------------- a read-only campaign folder


def read_only(out: Path, args: list) -> list:
    """``args`` run with ``out`` read-only: ``chmod 0o555`` for a normal user; root ignores modes, so
    for root a read-only bind mount of ``out`` in a private mount namespace (``unshare``)."""
    if os.geteuid() != 0:
        return args
    unshare = shutil.which("unshare")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = None if unshare is None else subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", script, str(out), "sh", "-c", f"! touch {out}/probe"],
        check=False, capture_output=True, timeout=60)
    if probe is None or probe.returncode != 0 or (out / "probe").exists():
        (out / "probe").unlink(missing_ok=True)
        pytest.skip("running as root, which ignores folder modes, and no read-only bind mount is possible here "
                    "(unshare -m needs CAP_SYS_ADMIN)")
    return [unshare, "-m", "--propagation", "private", "sh", "-c", script, str(out), *args]


@pytest.mark.slow
def test_a_read_only_campaign_folder_is_one_line_and_changes_nothing(cli, tmp_path):
    config = write_campaign(tmp_path, rounds=1, dft_per_round=2)
    out = tmp_path / "out"
    assert cli("run", config, "--out", out).returncode == 0
    before = snapshot(out)
    args = [str(a) for a in (BIN, "run", config, "--out", out, "--resume", "--set", "rounds=2")]
    out.chmod(0o555)
    try:
        proc = subprocess.run(read_only(out, args), check=False, capture_output=True, text=True, timeout=600)
    finally:
        out.chmod(0o755)
    line = the_error(proc, f"{out}: campaign folder is not writable")
    assert proc.stderr.strip() == line, "a user error is the one line the user sees"
    assert proc.returncode == 2
    assert snapshot(out) == before

    proc = cli("run", config, "--out", out, "--resume", "--set", "rounds=2")  # writable again
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(out / "ledger.sqlite") as db:
        assert db.execute("select count(*) from records where kind = 'selection'").fetchone()[0] == 2


# ----------------------------------------------------------------------------- a checkpoint cut short


def test_a_surrogate_checkpoint_cut_short_is_refused_and_never_used(surrogate, tmp_path):
    from discovery.errors import DataError
    from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
    from discovery.surrogates.cgcnn_ensemble import CGCNNEnsembleSurrogate

    whole = surrogate.save(tmp_path / "whole.pt").read_bytes()
    cands, _ = alkali_halides(3)
    model = CGCNNEnsembleSurrogate(CGCNNEnsembleConfig(**SURROGATE_CONFIG), seed=0)
    model.load(tmp_path / "whole.pt")
    model._target_mean += 5.0  # so a silently loaded file would show
    means = [p.mean for p in model.predict(cands)]
    for cut in (len(whole) - 1, len(whole) // 2, 64):
        path = tmp_path / f"cut-{cut}.pt"
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError) as err:
            model.load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert [p.mean for p in model.predict(cands)] == means, "a failed load changed the model"


@pytest.mark.slow
def test_a_campaign_refuses_a_model_checkpoint_cut_short_on_resume(cli, tmp_path):
    from composition_gan_helpers import synthetic_table

    synthetic_table(tmp_path)
    generator = {"kind": "composition_vae", "checkpoint_dir": "model", "train_data": "table.csv",
                 "train": {"epochs": 2, "batch_size": 8}, "n_per_round": 2, "samples": 16, "mh_iterations": 100}
    config = write_campaign(tmp_path, rounds=1, dft_per_round=1,
                            generators=[{"kind": "random_symmetric", "n_per_round": 2}, generator])
    out = tmp_path / "out"
    proc = cli("run", config, "--out", out)  # trains the composition model first
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = tmp_path / "model" / "composition_vae.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    before = evaluations(out)

    proc = cli("run", config, "--out", out, "--resume", "--set", "rounds=2")
    line = the_error(proc, str(weights), "cut short")
    assert proc.returncode == 2, line
    assert evaluations(out) == before, "the campaign went on with a damaged model"
