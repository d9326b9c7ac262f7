"""Open (or resume) a campaign folder and wire a `Campaign` for `discovery run`.

Everything that can fail because of the user's input (folder state, datasets, reference phases,
oracle set-up) fails here, before the ledger or any other file is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discovery import __version__
from discovery import registry
from discovery.build import ComponentSpec, build_component
from discovery.campaign import Campaign, Reporter
from discovery.campaign.allocation import generator_labels
from discovery.config import CampaignConfig, config_to_yaml, flatten
from discovery.errors import ConfigError, DataError
from discovery.fileio import write_text_atomic
from discovery.ledger.sqlite import SqliteLedger, check_ledger
from discovery.lifecycle import model_sources, needs_training
from discovery.report import LEDGER_NAME
from discovery.seeds import reference_candidates, seed_candidates, withheld_candidates

log = logging.getLogger(__name__)

# Settings that must not change when a campaign is resumed: they define what the results mean.
FROZEN_ON_RESUME = ("seed", "chemistry", "dft", "mlip", "objective", "validation")


@dataclass
class PreparedCampaign:
    campaign: Campaign
    ledger: SqliteLedger
    tracker: Any
    out_dir: Path


def check_folder(out_dir: Path, resume: bool) -> None:
    """Refuse a campaign folder that cannot be started (or resumed) before anything is written.

    Raises:
        ConfigError: a ledger without ``--resume``, ``--resume`` without one, or a folder (or, for
            a new campaign, its nearest existing parent) this process cannot write.
        LedgerError: the ledger to resume is damaged.
    """
    has_ledger = (out_dir / LEDGER_NAME).exists()
    if has_ledger and not resume:
        raise ConfigError(f"{out_dir}: already holds a campaign; pass --resume to continue it "
                          "or choose another --out")
    if resume and not has_ledger:
        raise ConfigError(f"{out_dir}: --resume given but there is no campaign here")
    if resume:
        check_ledger(out_dir / LEDGER_NAME)  # a damaged ledger is refused before anything is written
    check_writable(out_dir)


def check_writable(out_dir: Path) -> None:
    """Raise `ConfigError` naming ``out_dir`` when this process cannot write there: a read-only
    folder or file system (also for root), or no permission. A new folder is checked at its
    nearest existing parent; nothing is written."""
    folder = out_dir
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{out_dir}: campaign folder: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_mount(folder) else "no write permission"
        what = "campaign folder" if folder == out_dir else f"cannot create the campaign folder: {folder}"
        raise ConfigError(f"{out_dir}: {what} is not writable ({reason}); make it writable or choose another --out")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_resume_compatible(config: CampaignConfig, out_dir: Path) -> None:
    from discovery.configbase import read_yaml_mapping

    stored = read_yaml_mapping(out_dir / "campaign.yaml", "stored campaign")
    current = config.model_dump(mode="json")
    defaults = CampaignConfig().model_dump(mode="json")
    for key in FROZEN_ON_RESUME:  # a section older campaign files lack stands at its default
        if stored.get(key, defaults[key]) != current.get(key):
            raise ConfigError(f"{out_dir}/campaign.yaml: {key}: differs from the campaign being resumed; "
                              "results would not be comparable (start a new --out instead)")


def build_specs(config: CampaignConfig, out_dir: Path) -> tuple[dict[str, ComponentSpec], ComponentSpec]:
    import numpy as np

    seq = np.random.SeedSequence(config.seed)
    streams = seq.spawn(len(config.generators) + 1)
    elements = tuple(config.chemistry.elements)
    components: dict[str, ComponentSpec] = {}
    labels = generator_labels([registry.kind_of(g).name for g in config.generators])
    for i, (gen, label) in enumerate(zip(config.generators, labels, strict=True)):
        components[f"generator:{label}"] = ComponentSpec("generator", gen, elements, config.chemistry.max_atoms,
                                                         int(streams[i].generate_state(1)[0]))
    components["surrogate"] = ComponentSpec("surrogate", config.surrogate, elements,
                                            seed=int(streams[-1].generate_state(1)[0]),
                                            workdir=out_dir / "checkpoints")
    if config.mlip.enabled:
        components["mlip"] = ComponentSpec("mlip", config.mlip)
    dft = ComponentSpec("dft", config.dft, elements, workdir=out_dir / "work" / "dft")
    oracle = build_component(dft)  # cheap: calculators are only built inside calculations
    dft.extra.update(fingerprint=oracle.fingerprint, fidelity=str(oracle.fidelity))
    return components, dft


def make_tracker(config: CampaignConfig, out_dir: Path, run_id: str | None, experiment: str | None = None,
                 run_name: str | None = None):
    """The campaign's MLflow run (or another run in the same store: ``experiment``, ``run_name``)."""
    from discovery.protocols import NullTracker
    from discovery.tracking.mlflow_tracker import MlflowTracker

    if not config.tracking.enabled:
        return NullTracker()
    uri = config.tracking.tracking_uri or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    artifacts = (out_dir / "mlartifacts").resolve().as_uri() if not config.tracking.tracking_uri else None
    return MlflowTracker(uri, experiment or config.tracking.experiment or config.name,
                         run_name=run_name or out_dir.name, run_id=run_id, artifact_location=artifacts)


def read_training_data(config: CampaignConfig, reporter: Reporter) -> list[tuple[str, Any, Any]]:
    """Read and check the data of every model the campaign has to train (before any file is
    written): ``(key path, model fields, data)`` in training order."""
    todo = []
    for where, component in config.components():
        for sub, fields in model_sources(component):
            if not needs_training(fields):
                continue
            key = f"{where}.{sub}" if sub else where
            trainer = registry.trainer(fields.model_name)
            reporter.status(f"reading {fields.model_name} training data {fields.train_data}")
            try:
                todo.append((key, fields, trainer.read_data(fields.train_data, fields.training_config())))
            except DataError as exc:
                raise ConfigError(f"{key}.train_data: {exc}") from None
    return todo


def train_missing_models(config: CampaignConfig, out_dir: Path, todo: list[tuple[str, Any, Any]],
                         reporter: Reporter) -> None:
    """Train the models the campaign asks for, here with every core, before the workers start.

    Each training is its own MLflow run (experiment = the model's name, in the campaign's store) and
    reports every stage through ``reporter``; the model's manifest is written last, so a training
    cut short runs again at the next start.
    """
    for key, fields, data in todo:
        trainer = registry.trainer(fields.model_name)
        training = fields.training_config()
        log.info("%s: no model in %s; training the %s preset on %s first", fields.model_name,
                 fields.checkpoint_dir, training.preset, fields.train_data)

        def progress(stage: str, done: int, total: int, info: dict[str, Any], key: str = key) -> None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in info.items()
                              if k in ("val_loss", "val_recall", "val_mae") and isinstance(v, int | float))
            reporter.status(f"training {fields.model_name} for {key}: {stage} {done}/{total}"
                            + (f" ({shown})" if shown else ""))

        tracker = make_tracker(config, out_dir, None, experiment=fields.model_name, run_name=f"{config.name}-{key}")
        status = "FAILED"
        try:
            trainer.train(data, training, fields.checkpoint_dir, tracker=tracker, progress=progress,
                          seed=fields.train_seed, device=fields.device)
            status = "FINISHED"
        finally:
            tracker.close(status)


@dataclass
class CheckedInputs:
    """Everything `check_inputs` read: seeds, references, component specs and the training data."""

    seeds: list
    references: list
    components: dict[str, ComponentSpec]
    dft: ComponentSpec
    training: list[tuple[str, Any, Any]]
    withheld: list  # known phases kept from the campaign (`validation.withhold`)


def check_inputs(config: CampaignConfig, out_dir: Path, source: str = "campaign",
                 reporter: Reporter | None = None) -> CheckedInputs:
    """Everything `discovery validate` checks and `discovery run` checks before writing anything:
    seed data sets, references (built and pre-checked by the DFT oracle), component specs and the
    training data of models the campaign would train.

    Raises:
        ConfigError: one line naming the file and what is wrong.
    """
    reporter = reporter or Reporter()
    reporter.status("loading seed structures and references")
    try:
        withheld = withheld_candidates(config)
        seeds = seed_candidates(config, withheld)
        references = reference_candidates(config)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    components, dft = build_specs(config, out_dir)
    oracle = build_component(dft)
    precheck = getattr(oracle, "precheck", None)
    for ref in references if precheck else ():
        problem = precheck(ref)
        if problem is not None:
            raise ConfigError(f"{source}: reference {ref.formula}: {problem.error_class}: {problem.message}")
    return CheckedInputs(seeds, references, components, dft, read_training_data(config, reporter), withheld)


def prepare(config: CampaignConfig, out_dir: Path, resume: bool = False, address: str | None = None,
            reporter: Reporter | None = None, source: str = "campaign") -> PreparedCampaign:
    """Validate the folder and inputs, then open the ledger and tracker and wire the campaign."""
    from discovery.filters import CandidateFilter

    out_dir = Path(out_dir).resolve()
    check_folder(out_dir, resume)
    if resume:
        check_resume_compatible(config, out_dir)
    reporter = reporter or Reporter()
    inputs = check_inputs(config, out_dir, source, reporter)
    seeds, references, components, dft, training = (inputs.seeds, inputs.references, inputs.components,
                                                    inputs.dft, inputs.training)

    # ---- validation is over: from here on files are written
    out_dir.mkdir(parents=True, exist_ok=True)
    train_missing_models(config, out_dir, training, reporter)  # before the ledger: an interrupted
    # training leaves no campaign behind, and the next start trains again
    if not resume:
        write_text_atomic(out_dir / "campaign.yaml", config_to_yaml(config))
    ledger = SqliteLedger(out_dir / LEDGER_NAME, writer=True)
    meta = ledger.meta()
    config_json = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    if not meta:
        ledger.append("meta", "campaign", {
            "name": config.name, "code_version": __version__,
            "config_fingerprint": hashlib.sha256(config_json.encode()).hexdigest()[:12],
            "dft_fingerprint": dft.extra["fingerprint"], "dft_fidelity": dft.extra["fidelity"],
            "dft_slots": config.execution.dft_slots,
            "hit_e_above_hull_ev": config.objective.hit_e_above_hull_ev,
            # what `discovery status` checks results against (the ledger alone tells the story)
            "withheld": [{"formula": w.formula, "prototype": w.conditions["prototype"], "structure": w.structure}
                         for w in inputs.withheld],
        })
    elif meta.get("dft_slots") != config.execution.dft_slots:
        ledger.append("meta", "slots", {"dft_slots": config.execution.dft_slots})
    tracker = make_tracker(config, out_dir, meta.get("mlflow_run_id"))
    if tracker.run_id and not meta.get("mlflow_run_id"):
        ledger.append("meta", "mlflow", {"mlflow_run_id": tracker.run_id})
    tracker.log_params(flatten(config.model_dump(mode="json")))
    tracker.log_text(config_to_yaml(config), "campaign.yaml")
    tracker.set_tag("dft_fingerprint", dft.extra["fingerprint"])

    executor = make_executor(config, address)
    filt = CandidateFilter(config.filters)
    filt.add_known(seeds)
    import numpy as np

    from discovery.campaign import hit_objective
    from discovery.kinds import BuildContext

    policy = registry.build(config.policy, BuildContext(objective=hit_objective(config), rng=np.random.default_rng(
        np.random.SeedSequence(config.seed, spawn_key=(10_000,)))))
    campaign = Campaign(config, out_dir, ledger, executor, components, dft, seeds, references, filt,
                        policy, tracker, reporter)
    return PreparedCampaign(campaign, ledger, tracker, out_dir)


def make_executor(config: CampaignConfig, address: str | None):
    if config.execution.backend == "local" and not address:
        from discovery.executor import LocalExecutor

        return LocalExecutor()
    from discovery.actors.executor import RayExecutor  # the only place the core reaches for Ray

    return RayExecutor(address=address or config.execution.address, num_cpus=config.execution.num_cpus,
                       execution=config.execution)


def run_benchmark_jobs(table, config, address: str | None = None, on_done=None) -> list:
    """Every run of a replay benchmark, in this process (``execution.backend: local``) or as Ray
    tasks; results in job order, ``on_done`` called as each finishes."""
    from discovery.benchmark.runner import jobs_of, run_local

    if config.execution.backend == "local" and not address:
        return run_local(table, config, on_done)
    from discovery.actors.replay import run_jobs_on_ray

    return run_jobs_on_ray(table, config, jobs_of(config), address or config.execution.address, on_done)
