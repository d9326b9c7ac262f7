"""``discovery`` command line: run, validate and inspect campaigns.

Exit codes: 0 success, 2 bad input (config, data, folder state), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path

from discovery.errors import ConfigError, DataError, DiscoveryError, LedgerError, OracleSetupError

USER_ERRORS = (ConfigError, DataError, LedgerError, OracleSetupError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="discovery", description="Active-learning discovery of inorganic crystals.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a campaign")
    run.add_argument("campaign", type=Path, help="campaign YAML file")
    run.add_argument("--out", type=Path, default=None, help="campaign folder (default: runs/<name>)")
    run.add_argument("--resume", action="store_true", help="continue the campaign in --out")
    run.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config value (repeatable), applied before validation")

    val = sub.add_parser("validate", help="check a campaign file and its inputs without running")
    val.add_argument("campaign", type=Path)
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    st = sub.add_parser("status", help="show what a campaign has done so far (works while it runs)")
    st.add_argument("out", type=Path, help="campaign folder")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    return p


class HeldLogs(logging.handlers.MemoryHandler):
    """Holds log records while input is validated: on success they are shown, on a user error
    they are dropped so the error is the one line the user sees."""

    def __init__(self, target: logging.Handler):
        super().__init__(capacity=10_000, flushLevel=logging.CRITICAL + 1, target=target, flushOnClose=False)
        self.passthrough = False

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False

    def emit(self, record: logging.LogRecord) -> None:
        if self.passthrough:
            self.target.handle(record)
        else:
            super().emit(record)

    def show(self) -> None:
        super().flush()
        self.passthrough = True

    def discard(self) -> None:
        with self.lock:
            self.buffer.clear()


def _configure_logging(verbose: bool, console) -> HeldLogs:
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False,
                          omit_repeated_times=False, log_time_format="[%X]")
    held = HeldLogs(handler)
    logging.basicConfig(level=logging.WARNING, handlers=[held], format="%(message)s")
    logging.getLogger("discovery").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # per-calculation chatter; the campaign reports each result itself
        logging.getLogger("discovery.oracles").setLevel(logging.WARNING)
    for noisy in ("mlflow", "alembic", "ray", "urllib3", "matplotlib", "pymatgen", "pyxtal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    return held


class RichReporter:
    """Status lines plus a DFT progress bar on stderr."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("[bold]DFT"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.task = None

    def status(self, message: str) -> None:
        logging.getLogger("discovery.campaign").info(message)

    def dft_progress(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("dft", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def print_table(status: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"{status['name']}: DFT-validated candidates, ranked by energy above hull")
    for col in ("#", "formula", "E_f (eV/atom)", "E_hull (eV/atom)", "vs refs (eV/atom)", "novel",
                "generator", "round", "id"):
        table.add_column(col, justify="right" if col not in ("formula", "generator", "id") else "left")

    def fmt(x):
        return "n/a" if x is None else f"{x:+.3f}"

    for i, row in enumerate(status["best"], 1):
        table.add_row(str(i), row["formula"], fmt(row["formation_energy_per_atom"]), fmt(row["e_above_hull"]),
                      fmt(row["e_above_reference_hull"]), "yes" if row["novel"] else "no", row["generator"], str(row["round"]), row["id"])
    console.print(table)
    console.print(
        f"hits: novel structures (not a relaxed reference or an earlier result) within "
        f"{status['hit_e_above_hull_ev']} eV/atom of the campaign hull; 'vs refs' < 0 means below the "
        "hull of the reference phases alone")
    console.print(
        f"rounds {status['rounds']} | proposed {status['candidates_proposed']} | valid "
        f"{status['candidates_valid']} | novel {status['candidates_novel']} | CHGNet relaxed "
        f"{status['mlip_relaxed']} | DFT ok {status['dft_completed']} failed {status['dft_failed']} "
        f"(+{status['dft_references_completed']} references) | repeated {status['dft_repeated']} | hits "
        f"{status['hits']} (E_hull <= {status['hit_e_above_hull_ev']} eV/atom) | wall {status['wall_s']:.0f} s | "
        f"DFT busy {100 * status['dft_busy_fraction']:.0f} %")


def _stdout_console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def cmd_run(args, console) -> int:
    from discovery.config import load_config
    from discovery.launch import prepare
    from discovery.report import campaign_status, write_artifacts

    config = load_config(args.campaign, args.overrides)
    out = args.out or Path("runs") / config.name
    reporter = RichReporter(console)
    prepared = prepare(config, out, resume=args.resume, address=args.address, reporter=reporter)
    args.held_logs.show()
    status_word = "FAILED"
    try:
        prepared.campaign.run()
        status_word = "FINISHED"
    finally:
        prepared.ledger.close()
        status = campaign_status(prepared.out_dir)
        files = write_artifacts(prepared.out_dir, status)
        tracker = prepared.tracker
        for f in files:
            tracker.log_artifact(f, "cifs" if f.suffix == ".cif" else None)
        tracker.log_metrics({k: status[k] for k in ("dft_completed", "dft_failed", "hits", "wall_s",
                                                   "dft_busy_fraction", "dft_repeated")}, step=status["rounds"])
        tracker.close(status_word)
    print_table(status, _stdout_console())
    console.print(f"campaign folder: {prepared.out_dir}")
    return 0


def cmd_validate(args, console) -> int:
    from discovery.build import build_component, reference_candidates, seed_candidates
    from discovery.config import load_config
    from discovery.launch import build_specs

    config = load_config(args.campaign, args.overrides)
    seeds = seed_candidates(config)
    refs = reference_candidates(config)
    with tempfile.TemporaryDirectory() as scratch:  # validation writes nothing the user keeps
        _, dft = build_specs(config, Path(scratch))
        oracle = build_component(dft)
    precheck = getattr(oracle, "precheck", None)
    for ref in refs:
        problem = precheck(ref) if precheck else None
        if problem is not None:
            raise ConfigError(f"{args.campaign}: reference {ref.formula}: {problem.error_class}: {problem.message}")
    console.print(f"{args.campaign}: ok ({len(seeds)} seed structures, {len(refs)} references, "
                  f"{len(config.generators)} generators, DFT {dft.kind} settings {dft.extra['fingerprint']})")
    return 0


def cmd_status(args, console) -> int:
    from discovery.report import load_status_or_raise

    status = load_status_or_raise(args.out)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_table(status, _stdout_console())
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = _parser().parse_args(argv)
    console = Console(stderr=True, log_path=False)
    held = args.held_logs = _configure_logging(args.verbose, console)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # SIGTERM (batch schedulers, `kill`) stops as cleanly as Ctrl-C: actors and workers are shut down
    signal.signal(signal.SIGTERM, _interrupt)
    handlers = {"run": cmd_run, "validate": cmd_validate, "status": cmd_status}
    try:
        code = handlers[args.command](args, console)
        held.show()
        return code
    except USER_ERRORS as exc:
        held.discard()
        print(f"discovery: error: {exc}", file=sys.stderr)
        return 2
    except DiscoveryError as exc:
        held.show()
        print(f"discovery: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("discovery: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
