"""``discovery`` command line: run, validate and inspect campaigns.

Exit codes: 0 success, 2 bad input (config, data, folder state), 1 anything else. A storage
fault (full disk, file-size limit, read-only or non-writable folder) is one line naming the file,
exit code 1; every file is written atomically, so ``--resume`` continues once the cause is gone.
"""

from __future__ import annotations

import argparse
import errno
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
from discovery.fileio import storage_error, write_text_atomic
from discovery.csp import add_csp_parser, cmd_csp
from discovery.datasets.cli import add_dataset_parser
from discovery.datasets.cli import cmd_dataset as run_dataset_build
from discovery.train_cli import add_train_parser, cmd_train

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
    st.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                    help="redraw every SECONDS (default 5) until the campaign stops or Ctrl-C")

    rep = sub.add_parser("report", help="write a campaign's self-contained report.html (works while it runs)")
    rep.add_argument("out", type=Path, help="campaign folder")
    rep.add_argument("--out", dest="report", type=Path, default=None, metavar="FILE",
                     help="where to write it (default: DIR/report.html)")

    _replay_parser(sub, "benchmark", "retrospective campaigns on a labelled table: policies x seeds",
                   "benchmark YAML file (see configs/benchmarks/)", "runs/benchmarks/<name>",
                   "the summary as one JSON object")
    _replay_parser(sub, "tune", "sweep policy and model hyper-parameters on a replay benchmark (Ray Tune, ASHA)",
                   "tune YAML file (see configs/tune/)", "runs/tune/<name>",
                   "the trials and the best one as one JSON object")

    add_train_parser(sub)
    add_dataset_parser(sub)
    add_csp_parser(sub)

    kinds = sub.add_parser("kinds", help="list the registered component kinds (built-in and plugins)")
    kinds.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _replay_parser(sub, name: str, help_: str, config_help: str, default_out: str, json_help: str) -> None:
    """`benchmark` and `tune` take the same arguments: a YAML file, --out, --json, --address, --set."""
    p = sub.add_parser(name, help=help_)
    p.add_argument("config", type=Path, help=config_help)
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default_out})")
    p.add_argument("--json", action="store_true", help=f"print {json_help}")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


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
    console.print(status_view(status))


def status_view(status: dict):
    """The status table, its legend and the totals line, as one rich renderable."""
    from rich.console import Group
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
    legend = (f"hits: novel structures (not a relaxed reference or an earlier result) within "
              f"{status['hit_e_above_hull_ev']} eV/atom of the campaign hull; 'vs refs' < 0 means below the "
              "hull of the reference phases alone")
    totals = (f"rounds {status['rounds']} | proposed {status['candidates_proposed']} | valid "
              f"{status['candidates_valid']} | novel {status['candidates_novel']} | CHGNet relaxed "
              f"{status['mlip_relaxed']} | DFT ok {status['dft_completed']} failed {status['dft_failed']} "
              f"(+{status['dft_references_completed']} references) | repeated {status['dft_repeated']} | hits "
              f"{status['hits']} (E_hull <= {status['hit_e_above_hull_ev']} eV/atom) | wall {status['wall_s']:.0f} s | "
              f"DFT busy {100 * status['dft_busy_fraction']:.0f} %")
    from discovery.report import milestone_lines

    return Group(table, legend, totals, *milestone_lines(status))


def watch_status(out: Path, every_s: float, console) -> int:
    """Redraw the status and a DFT progress bar every ``every_s`` seconds until the campaign's driver
    has stopped (or Ctrl-C); the ledger is only read."""
    import time

    from rich.console import Group
    from rich.live import Live
    from rich.progress_bar import ProgressBar

    from discovery.report import load_status_or_raise

    def view(status: dict):
        done = (status["dft_completed"] + status["dft_failed"] + status["dft_references_completed"]
                + status["dft_references_failed"])
        in_flight = max(0, status["dft_submitted"] - status["dft_attempts"])  # a submission has <= 1 result
        total = max(done + in_flight, 1)
        state = "running" if status["running"] else "stopped"
        bar = ProgressBar(total=total, completed=done, width=40)
        return Group(status_view(status), f"DFT {done}/{total} ({state}; refreshed every {every_s:g} s, Ctrl-C leaves)",
                     bar)

    status = load_status_or_raise(out)
    try:
        if console.is_terminal:
            with Live(view(status), console=console, refresh_per_second=4, transient=False) as live:
                while status["running"]:
                    time.sleep(every_s)
                    status = load_status_or_raise(out)
                    live.update(view(status))
        else:  # a pipe or a log file: one progress line per refresh, the whole view at the end
            while status["running"]:
                console.print(view(status).renderables[1])
                time.sleep(every_s)
                status = load_status_or_raise(out)
            console.print(view(status))
    except KeyboardInterrupt:
        pass  # leaving the watch is no error
    return 0


def _stdout_console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def cmd_run(args, console) -> int:
    from discovery.campaign_report import try_write_report
    from discovery.config import load_config
    from discovery.launch import prepare
    from discovery.report import campaign_status, write_artifacts

    config = load_config(args.campaign, args.overrides)
    out = args.out or Path("runs") / config.name
    reporter = RichReporter(console)
    prepared = prepare(config, out, resume=args.resume, address=args.address, reporter=reporter,
                       source=str(args.campaign))
    args.held_logs.show()
    status_word = "FAILED"
    tracker = prepared.tracker
    try:
        prepared.campaign.run()
        status_word = "FINISHED"
    finally:
        prepared.ledger.close()
        try:
            status = campaign_status(prepared.out_dir)
            files = write_artifacts(prepared.out_dir, status)
            for f in files:
                tracker.log_artifact(f, "cifs" if f.suffix == ".cif" else None)
            tracker.log_metrics({k: status[k] for k in ("dft_completed", "dft_failed", "hits", "wall_s",
                                                       "dft_busy_fraction", "dft_repeated")}, step=status["rounds"])
        except (OSError, DiscoveryError) as exc:
            if status_word == "FINISHED":
                tracker.close("FAILED")
                raise
            # the campaign already failed (a full disk, Ctrl-C): that error is the one to report
            logging.getLogger("discovery.campaign").warning("campaign outputs not updated: %s", exc)
        # a finished run only: after Ctrl-C or SIGTERM the driver exits at once (`discovery report` draws it later)
        report = try_write_report(prepared.out_dir, tracker) if status_word == "FINISHED" else None
        tracker.close(status_word)
    print_table(status, _stdout_console())
    console.print(f"campaign folder: {prepared.out_dir}" + (f"; report: {report}" if report else ""))
    return 0


def cmd_validate(args, console) -> int:
    from discovery.config import load_config
    from discovery.launch import check_inputs

    config = load_config(args.campaign, args.overrides)
    with tempfile.TemporaryDirectory() as scratch:  # validation writes nothing the user keeps
        inputs = check_inputs(config, Path(scratch), source=str(args.campaign))
    console.print(f"{args.campaign}: ok ({len(inputs.seeds)} seed structures, {len(inputs.references)} references, "
                  f"{len(config.generators)} generators, DFT {inputs.dft.kind} settings "
                  f"{inputs.dft.extra['fingerprint']})")
    return 0


def cmd_status(args, console) -> int:
    from discovery.report import load_status_or_raise

    if args.watch is not None:
        if args.json or not 0 < args.watch <= 3600:
            raise ConfigError("status: --watch takes seconds between 0 and 3600 and no --json")
        return watch_status(args.out, args.watch, _stdout_console())
    status = load_status_or_raise(args.out)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_table(status, _stdout_console())
    return 0


def cmd_report(args, console) -> int:
    import time

    from discovery.campaign_report import write_report

    started = time.perf_counter()
    path = write_report(args.out, args.report)
    console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0


def cmd_benchmark(args, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from discovery.benchmark.config import load_benchmark_config
    from discovery.benchmark.runner import jobs_of, load_table, summarise, track, write_outputs
    from discovery.launch import run_benchmark_jobs

    config = load_benchmark_config(args.config, args.overrides)
    out = (args.out or Path("runs") / "benchmarks" / config.name).resolve()
    table = load_table(config)
    args.held_logs.show()
    logging.getLogger("discovery.benchmark").setLevel(logging.WARNING)  # the bar says it all
    logging.getLogger("discovery").info(
        "%s: %d structures; %s", table.source, len(table),
        "; ".join(f"{o.name} ({o.describe()}): {int(_hits(table, o))} hits" for o in config.objectives))
    jobs = jobs_of(config)
    with Progress(TextColumn("[bold]replay runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("", total=len(jobs))

        def done(run):
            progress.update(task, advance=1, description=f"{run.policy}/{run.objective} seed {run.seed}: "
                                                         f"{run.hits[-1]}/{run.pool_hits} hits")

        runs = run_benchmark_jobs(table, config, args.address, on_done=done)
    summary = summarise(config, runs)
    files = write_outputs(config, runs, summary, out)
    run_id = track(config, summary, files, out)
    summary["out"] = str(out)
    summary["mlflow_run_id"] = run_id
    if args.json:
        print(json.dumps(summary))
    else:
        print_benchmark(summary, _stdout_console())
    return 0


def cmd_tune(args, console) -> int:
    import yaml

    from discovery.benchmark.runner import load_table
    from discovery.benchmark.tune import best_campaign, load_tune_config, trial_config

    tune_config, base = load_tune_config(args.config, args.overrides)
    out = (args.out or Path("runs") / "tune" / tune_config.name).resolve()
    table = load_table(base)
    args.held_logs.show()
    out.mkdir(parents=True, exist_ok=True)
    uri = None
    if tune_config.tracking.enabled:
        from mlflow.tracking import MlflowClient

        uri = tune_config.tracking.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)  # creates the store before trials race to do it
        experiment = tune_config.tracking.experiment or f"tune-{tune_config.name}"
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=(out / "mlartifacts").as_uri()
                                     if not tune_config.tracking.tracking_uri else None)
    from discovery.actors.tune import run_tune

    import contextlib

    with console.status(f"tuning {tune_config.policy} on {tune_config.objective}: "
                        f"{tune_config.num_samples} trials x {len(tune_config.seeds)} seed(s)"), \
            contextlib.redirect_stdout(sys.stderr):  # Tune's own tables must not mix with --json
        grid = run_tune(table, base, tune_config, out, uri, args.address or tune_config.execution.address)
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        trials.append({"params": {k: v for k, v in (result.config or {}).items()},
                       "hits": metrics.get("hits"), "calls": metrics.get("calls"),
                       "error": None if result.error is None else (str(result.error).strip().splitlines() or [""])[0][:200]})
    # the budget, or less when the pool ran out first: the most calls any trial reached
    full = max((t["calls"] for t in trials if t["calls"] is not None), default=None)
    finished = [t for t in trials if t["hits"] is not None and t["calls"] == full]
    if not finished:
        raise DiscoveryError(f"tune: no trial reported results "
                             f"({sum(t['error'] is not None for t in trials)} failed)")
    best = max(finished, key=lambda t: t["hits"])
    best_config = trial_config(base, tune_config, best["params"], str(args.config))
    files = {"best_params.json": json.dumps(best, indent=2),
             "best_benchmark.yaml": yaml.safe_dump(best_config.model_dump(mode="json"), sort_keys=False)}
    if tune_config.campaign is not None:
        files["best_campaign.yaml"] = yaml.safe_dump(best_campaign(tune_config.campaign, best_config, tune_config),
                                                     sort_keys=False)
    for name, text in files.items():
        write_text_atomic(out / name, text)
    summary = {"name": tune_config.name, "policy": tune_config.policy, "objective": tune_config.objective,
               "budget": base.budget, "trials": trials, "best": best, "out": str(out),
               "files": sorted(files)}
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        from rich.table import Table

        table_out = Table(title=f"{tune_config.name}: {tune_config.policy} on {tune_config.objective} "
                                f"(hits after {base.budget} calls; stopped trials show where ASHA stopped them)")
        keys = list(tune_config.space)
        for col in (*keys, "calls", "hits", "error"):
            table_out.add_column(col, justify="right")
        for t in sorted(trials, key=lambda t: -(t["hits"] or -1)):
            table_out.add_row(*[_fmt(t["params"].get(k)) for k in keys], _fmt(t["calls"]), _fmt(t["hits"]),
                              t["error"] or "")
        _stdout_console().print(table_out)
        console.print(f"best: {best['params']} -> {best['hits']:.1f} hits; files in {out}: {', '.join(sorted(files))}")
    return 0


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _hits(table, objective) -> int:
    from discovery.benchmark.replay import hit_mask

    return int(hit_mask(table, objective).sum())


def print_benchmark(summary: dict, console) -> None:
    from rich.table import Table

    def f(stat, fmt="{:.1f}"):
        if stat["mean"] is None:
            return f"n/a ({100 * stat['reached']:.0f} %)" if "reached" in stat else "n/a"
        return fmt.format(stat["mean"]) + (f" ± {stat['std']:.1f}" if stat["std"] else "")

    for name, obj in summary["objectives"].items():
        table = Table(title=f"{name}: {obj['definition']} ({obj['pool_hits']} hits in {obj['pool_size']}; "
                            f"budget {summary['budget']} calls, batches of {summary['batch_size']}, "
                            f"{summary['n_seeds']} seeds)")
        for col in ("policy", "hits @ budget", "calls to 50 %", "calls to 90 %", "AF50", "AF90", "EF",
                    "in ±1σ", "in ±2σ"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for label, pol in obj["policies"].items():
            cal = next(iter(pol["calibration"].values()), {})

            def pct(x):
                return "n/a" if x is None else f"{100 * x:.0f} %"

            table.add_row(label, f(pol["hits_at_budget"]), f(pol["calls_to_50"], "{:.0f}"),
                          f(pol["calls_to_90"], "{:.0f}"), f(pol["af50"]), f(pol["af90"]), f(pol["ef"]),
                          pct(cal.get("within_1sigma")), pct(cal.get("within_2sigma")))
        console.print(table)
        console.print(f"random sampling needs {obj['random_expected_calls_to_50']:.0f} calls for 50 % "
                      "recall in expectation" if obj["random_expected_calls_to_50"] else "")
    console.print(f"outputs: {summary['out']}")


def cmd_kinds(args, console) -> int:
    """Every registered kind by role, with what it is (plugins included)."""
    from rich.table import Table

    from discovery import registry
    from discovery.kinds import ROLES

    listing = {role: {name: {"summary": k.summary, "config": f"{k.config.__module__}.{k.config.__qualname__}",
                             **({"fidelity": k.fidelity} if k.fidelity else {}),
                             **({"models": list(k.models)} if k.models else {})}
                      for name, k in sorted(registry.kinds(role).items())} for role in ROLES}
    if args.json:
        print(json.dumps(listing))
        return 0
    table = Table(title="registered kinds (use them as `kind:` in a campaign file; models: `discovery train NAME`)")
    for col in ("role", "kind", "what it is"):
        table.add_column(col)
    for role, entries in listing.items():
        for name, info in entries.items():
            table.add_row(role, name, info["summary"])
    _stdout_console().print(table)
    return 0


def cmd_dataset(args, console) -> int:
    """``discovery dataset build``: local by default; ``--ray``/``--address`` relax on Ray actors."""
    executor = None
    if args.ray or args.address:
        from discovery.actors.executor import RayExecutor

        executor = RayExecutor(address=args.address or "local")  # --ray alone: a fresh local instance
    return run_dataset_build(args, console, executor=executor)


def storage_message(exc: OSError, command: str) -> str:
    """One line for a storage fault: the file, what went wrong, and what to do about it."""
    where = exc.filename or "a file"
    if exc.filename2:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        remedy = "make the folder writable"
    elif exc.errno == errno.EIO:
        remedy = "check the disk"
    else:  # ENOSPC, EDQUOT, EFBIG (a file-size limit)
        remedy = "free some space (or lift the file-size limit)"
    then = ", then continue with --resume" if command == "run" else ", then run it again"
    return f"{where}: cannot write ({what}); {remedy}{then}"


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
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")  # no native dumps on `kill`
    # SIGTERM (batch schedulers, `kill`) stops as cleanly as Ctrl-C: actors and workers are shut down
    signal.signal(signal.SIGTERM, _interrupt)
    handlers = {"run": cmd_run, "validate": cmd_validate, "status": cmd_status, "benchmark": cmd_benchmark,
                "kinds": cmd_kinds, "report": cmd_report,
                "tune": cmd_tune, "train": cmd_train,
                "dataset": cmd_dataset, "csp": cmd_csp}
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
    except Exception as exc:
        fault = storage_error(exc)
        if fault is None:
            raise
        held.show()
        print(f"discovery: error: {storage_message(fault, args.command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = "; resume with --resume" if args.command == "run" else ""
        print(f"discovery: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
