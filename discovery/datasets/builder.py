"""`build_dataset`: a CD-VAE-format CSV of CHGNet-relaxed crystals, resumable and deterministic.

The build folder holds:

- ``plan.json``: the config, its hash and every job (starting structure) of the build
  (`discovery.datasets.plan`); written once, atomically. A restart reuses it; a folder planned for
  another config is refused;
- ``relaxations.jsonl``: one line per finished relaxation (`discovery.datasets.worklog.WorkLog`),
  appended as each batch returns, so a restart after a kill repeats no finished relaxation;
- ``<name>.csv``: columns ``material_id``, ``formula``, ``cif``, ``energy_per_atom``,
  ``formation_energy_per_atom``, ``source`` (``prototype:<name>`` or ``random:<space group>``);
  written atomically once every job is done;
- ``dataset.json``: the manifest, written last: config, CSV sha256, counts, CHGNet reference
  energies, wall time, package versions.

Planning and relaxations run through a project executor (`discovery.executor.LocalExecutor` by
default, or a `RayExecutor` the caller passes): ``workers`` planner components
(`discovery.datasets.plan.Planner`: pyxtal, `PLAN_CHUNK` compositions per call) while there is no
plan yet, and ``workers`` CHGNet slots (`discovery.oracles.chgnet_oracle`, the MLIP fidelity) in the
executor's evaluation pool, each taking the next job as soon as it is free (local: one of each).

After relaxation a structure is kept when CHGNet converged or stopped at ``max_steps`` with a sound
result: no pair closer than 0.5 A, volume per atom at most ``max_volume_per_atom``, formation
energy at most ``max_formation_energy``, composition unchanged and not excluded. Formation energy
per atom = E/atom - sum_i x_i mu_i, with mu_i the lowest CHGNet energy per atom among the
relaxations of element i's reference job(s). Duplicates (`discovery.structures.structure_matcher`,
pymatgen's default tolerances) within a composition are dropped, the lowest energy kept.

Determinism: the plan depends only on the config (seeded streams); CHGNet relaxations on CPU with
one thread are repeatable, so the same config gives the same CSV on the same machine (the CSV's
sha256 is in the manifest to check it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from discovery.datasets.config import DatasetConfig
from discovery.datasets.plan import Job, Plan, plan_jobs
from discovery.datasets.worklog import WorkLog
from discovery.errors import ConfigError, DataError
from discovery.fileio import write_text_atomic
from discovery.lifecycle import file_sha256, package_versions, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "discovery-dataset"
MANIFEST_VERSION = 1
PLAN_FORMAT = "discovery-dataset-plan"
#: Compositions per call to a planner component.
PLAN_CHUNK = 4
CSV_COLUMNS = ("material_id", "formula", "cif", "energy_per_atom", "formation_energy_per_atom", "source")

ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


#: Settings that change how a build runs, not what it makes: a killed build may resume with others.
RUN_SETTINGS = frozenset({"workers"})


def config_hash(config: DatasetConfig) -> str:
    """sha256 of the config's JSON (keys sorted), without `RUN_SETTINGS`."""
    data = {k: v for k, v in config.model_dump(mode="json").items() if k not in RUN_SETTINGS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- plan file


def read_plan(config: DatasetConfig, out_dir: Path) -> Plan | None:
    """The plan in ``out_dir / "plan.json"`` when it belongs to ``config``; None when there is none.

    Raises:
        ConfigError: ``out_dir`` holds the plan of another config.
    """
    path = out_dir / "plan.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        same = stored.get("format") == PLAN_FORMAT and stored.get("config_hash") == config_hash(config)
        if same:
            plan = Plan(compositions=list(stored["compositions"]), counts=dict(stored["counts"]),
                        jobs=[Job.from_json(j) for j in stored["jobs"]])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None  # a damaged plan is made again (the work log keeps only this config's results)
    if not same:
        raise ConfigError(f"{out_dir}: holds a build of another dataset config ({path.name}); use another --out folder")
    logger.info("%s: resuming a build of %d jobs", out_dir, len(plan.jobs))
    return plan


def make_plan(config: DatasetConfig, out_dir: Path, progress: ProgressFn | None = None, mapper: Any = None) -> Plan:
    """Plan the build (`discovery.datasets.plan.plan_jobs`) and write ``plan.json`` atomically."""
    started = time.perf_counter()
    plan = plan_jobs(config, (lambda d, t: progress("plan", d, t, {})) if progress else None, mapper)
    write_json_atomic(out_dir / "plan.json", {
        "format": PLAN_FORMAT, "config_hash": config_hash(config), "config": config.model_dump(mode="json"),
        "compositions": plan.compositions, "counts": plan.counts, "jobs": [j.to_json() for j in plan.jobs]})
    logger.info("%s: planned %d jobs over %d compositions in %.0f s", out_dir, len(plan.jobs), len(plan.compositions),
                time.perf_counter() - started)
    return plan


def load_or_plan(config: DatasetConfig, out_dir: Path, progress: ProgressFn | None = None) -> Plan:
    """`read_plan`, or `make_plan` here (serially) when there is none."""
    return read_plan(config, out_dir) or make_plan(config, out_dir, progress)


# ----------------------------------------------------------------------------- relaxations


def _candidate(job: Job) -> Any:
    from discovery.records import Candidate

    return Candidate(id=job.id, structure=job.structure, formula=job.formula, generator="dataset",
                     generator_version="1", conditions={"calc": job.calc} if job.calc else {})


def _record(job: Job, evaluation: Any) -> dict[str, Any]:
    ok = evaluation.status == "ok"
    return {"job": job.id, "status": "ok" if ok else "failed",
            "energy_per_atom": evaluation.energy_per_atom if ok else None,
            "structure": evaluation.relaxed_structure if ok else None,
            "n_steps": int((evaluation.properties or {}).get("n_steps", 0)),
            "wall_s": float(evaluation.provenance.wall_s) if evaluation.provenance else None,
            "error": None if ok or evaluation.failure is None else
            f"{evaluation.failure.error_class}: {evaluation.failure.message}"[:300]}


class Workers:
    """The build's components on an executor: ``n`` CHGNet relaxation slots (and ``n`` planners when
    the plan is still to be made). A `LocalExecutor` (the default) has one of each and runs them here
    with one BLAS thread (ASE's cell filter calls 3x3 LAPACK routines that are ~8x slower with a
    second, contended OpenBLAS thread; Ray workers set one thread in their environment)."""

    def __init__(self, config: DatasetConfig, executor: Any, planners: bool):
        import contextlib

        from discovery.build import ComponentSpec
        from discovery.datasets.plan import PLANNER_KIND, PlannerConfig
        from discovery.oracles.chgnet_oracle import MLIPConfig

        self.limits: Any = contextlib.nullcontext()
        if executor is None:
            import scipy.linalg  # noqa: F401 - load scipy's own BLAS before limiting it
            from threadpoolctl import threadpool_limits

            from discovery.executor import LocalExecutor

            executor, n, self.limits = LocalExecutor(), 1, threadpool_limits(1)
        else:
            n = config.workers
        self.config, self.executor = config, executor
        relax = ComponentSpec(role="mlip", config=MLIPConfig(fmax_ev_per_a=config.relax.fmax_ev_per_a,
                                                             max_steps=config.relax.max_steps))
        components = {}
        if planners:
            plan_spec = ComponentSpec(role="generator", config=PlannerConfig(dataset=config), registered=PLANNER_KIND)
            components.update({f"planner-{k}": plan_spec for k in range(n)})
        self.planners = [f"planner-{k}" for k in range(n)] if planners else []
        # CHGNet fills the executor's evaluation pool (its "DFT" slots): each slot takes the next job
        # as soon as it is free, so a slow relaxation never holds the other workers back
        self.executor.start(components, relax, n)

    def close(self) -> None:
        self.executor.shutdown()

    def map_formulas(self, formulas: list[str], progress: Any = None) -> list[list[Job]]:
        """`plan.structure_jobs` of every formula on the planners (chunks of `PLAN_CHUNK`)."""
        chunks = [formulas[k:k + PLAN_CHUNK] for k in range(0, len(formulas), PLAN_CHUNK)]
        out: list[list[Job]] = []
        for start in range(0, len(chunks), len(self.planners)):
            group = chunks[start:start + len(self.planners)]
            calls = [(self.planners[k], "structure_jobs", (chunk,)) for k, chunk in enumerate(group)]
            for result in self.executor.call_many(calls):
                out += [[Job.from_json(j) for j in jobs] for jobs in result]
            if progress is not None:
                progress(len(out), len(formulas))
        return out

    def relax(self, jobs: list[Job], log: WorkLog, progress: ProgressFn | None = None) -> None:
        """Relax every job not in ``log``, appending each result as it arrives."""
        pending = {j.id: j for j in jobs if j.id not in log}
        total, done = len(jobs), len(jobs) - len(pending)
        failed = sum(1 for r in log.results.values() if r.get("status") != "ok")
        if progress is not None:
            progress("relax", done, total, {})
        for job in pending.values():
            self.executor.submit_dft(_candidate(job))
        while pending:
            for evaluation in self.executor.completed(1.0):
                job = pending.pop(evaluation.candidate_id, None)
                if job is None:
                    continue
                record = _record(job, evaluation)
                failed += record["status"] != "ok"
                log.append(record)
                done += 1
                if progress is not None:
                    progress("relax", done, total, {"failed": failed})


# ----------------------------------------------------------------------------- assembly


def reference_energies(plan: Plan, log: WorkLog) -> dict[str, dict[str, Any]]:
    """Per element, the lowest relaxed energy per atom of its reference job(s) and which job.

    Raises:
        DataError: an element whose reference relaxations all failed.
    """
    out: dict[str, dict[str, Any]] = {}
    for job in plan.jobs:
        if not job.is_reference:
            continue
        rec = log.results.get(job.id)
        if rec is None or rec.get("status") != "ok" or rec.get("energy_per_atom") is None:
            continue
        e = float(rec["energy_per_atom"])
        if job.formula not in out or e < out[job.formula]["energy_per_atom"]:
            out[job.formula] = {"energy_per_atom": e, "job": job.id, "source": job.source}
    needed = {str(el) for j in plan.jobs if not j.is_reference for el in _elements(j.formula)}
    missing = sorted(needed - set(out))
    if missing:
        raise DataError(f"no CHGNet reference energy for {missing}: every reference relaxation failed")
    return out


def _elements(formula: str) -> list[str]:
    from pymatgen.core import Composition

    return [str(el) for el in Composition(formula).elements]


def assemble(config: DatasetConfig, plan: Plan, log: WorkLog, refs: dict[str, dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of the CSV (plan order) and what was dropped on the way."""
    from pymatgen.core import Structure

    from discovery.structures import structural_problem, structure_matcher

    counts = {"failed": 0, "unsound": 0, "exploded": 0, "too_high": 0, "excluded": 0, "duplicates": 0}
    by_formula: dict[str, list[tuple[int, Any, dict[str, Any]]]] = {}
    order = 0
    for job in plan.jobs:
        if job.is_reference:
            continue
        rec = log.results.get(job.id)
        if rec is None or rec.get("status") != "ok" or rec.get("structure") is None:
            counts["failed"] += 1
            continue
        structure = Structure.from_dict(rec["structure"])
        formula = structure.composition.reduced_formula
        if formula in config.excluded:
            counts["excluded"] += 1
            continue
        if formula != job.formula or structural_problem(structure, 0.5) is not None:
            counts["unsound"] += 1
            continue
        if structure.volume / len(structure) > config.max_volume_per_atom:
            counts["exploded"] += 1
            continue
        energy = float(rec["energy_per_atom"])
        comp = structure.composition.fractional_composition
        e_form = energy - sum(float(x) * refs[str(el)]["energy_per_atom"] for el, x in comp.items())
        if not np.isfinite(e_form) or e_form > config.max_formation_energy:
            counts["too_high"] += 1
            continue
        row = {"material_id": job.id, "formula": formula, "energy_per_atom": energy,
               "formation_energy_per_atom": e_form, "source": job.source}
        by_formula.setdefault(formula, []).append((order, structure, row))
        order += 1
    kept: list[tuple[int, Any, dict[str, Any]]] = []
    matcher = structure_matcher()
    for formula, items in by_formula.items():
        if not config.dedup or len(items) == 1:
            kept += items
            continue
        items = sorted(items, key=lambda t: (t[2]["energy_per_atom"], t[0]))
        chosen: list[tuple[int, Any, dict[str, Any]]] = []
        for item in items:
            if any(matcher.fit(item[1], other[1]) for other in chosen):
                counts["duplicates"] += 1
                continue
            chosen.append(item)
        kept += chosen
    rows = []
    from pymatgen.io.cif import CifWriter

    for _, structure, row in sorted(kept, key=lambda t: t[0]):
        rows.append({**row, "cif": str(CifWriter(structure))})
    return rows, counts


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The CDVAE-format CSV, written next to ``path`` and moved into place."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})
    return write_text_atomic(path, buffer.getvalue())


def build_dataset(config: DatasetConfig, out_dir: str | Path, executor: Any = None,
                  progress: ProgressFn | None = None) -> dict[str, Any]:
    """Plan, relax (resuming), assemble and write the data set of ``config`` into ``out_dir``.

    Args:
        config: what to build.
        out_dir: the build folder (created; a folder of another config is refused).
        executor: an executor that is not started yet (`discovery.executor.LocalExecutor`, or the
            Ray one); it is started with ``config.workers`` CHGNet components and shut down. None:
            a LocalExecutor with one CHGNet component.
        progress: ``progress(stage, done, total, info)`` for stages ``plan`` and ``relax``.

    Returns:
        The manifest (also written to ``out_dir / "dataset.json"``).

    Raises:
        ConfigError: ``out_dir`` is a file or holds another config's build.
        DataError: an element without a usable reference, or no structure survives.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = read_plan(config, out_dir)
    log = WorkLog(out_dir / "relaxations.jsonl", config_hash(config))
    resumed = sum(1 for j in plan.jobs if j.id in log) if plan is not None else 0
    if plan is None or resumed < len(plan.jobs):
        workers = Workers(config, executor, planners=plan is None)
        try:
            with workers.limits:
                if plan is None:
                    plan = make_plan(config, out_dir, progress, workers.map_formulas)
                workers.relax(plan.jobs, log, progress)
        finally:
            workers.close()
    elif progress is not None:
        progress("relax", len(plan.jobs), len(plan.jobs), {})
    refs = reference_energies(plan, log)
    rows, dropped = assemble(config, plan, log, refs)
    if not rows:
        raise DataError(f"{out_dir}: no relaxed structure survived the checks ({dropped})")
    csv_path = write_csv(out_dir / f"{config.name}.csv", rows)
    relax_s = sum(float(r.get("wall_s") or 0.0) for r in log.results.values())
    n_comp = len({r["formula"] for r in rows})
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "name": config.name,
        "config": config.model_dump(mode="json"), "config_hash": config_hash(config),
        "csv": {"path": csv_path.name, "sha256": file_sha256(csv_path), "rows": len(rows)},
        "counts": {"structures": len(rows), "compositions": n_comp, "planned_compositions": len(plan.compositions),
                   "jobs": len(plan.jobs), **{f"planned_{k}": v for k, v in plan.counts.items() if k != "compositions"},
                   "resumed": resumed, "relaxed_now": len(plan.jobs) - resumed, **{f"dropped_{k}": v
                                                                                  for k, v in dropped.items()},
                   "prototype_rows": sum(r["source"].startswith("prototype") for r in rows),
                   "random_rows": sum(r["source"].startswith("random") for r in rows)},
        "references": refs,
        "excluded_formulas": list(config.exclude_formulas),
        "wall_seconds": time.perf_counter() - started, "relax_seconds_sum": relax_s,
        "versions": {**package_versions(), **_more_versions()},
    }
    write_json_atomic(out_dir / "dataset.json", manifest)
    logger.info("%s: %d structures over %d compositions (%s dropped) in %.0f s", csv_path, len(rows), n_comp,
                sum(dropped.values()), manifest["wall_seconds"])
    return manifest


def _more_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("chgnet", "pyxtal", "ase"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
