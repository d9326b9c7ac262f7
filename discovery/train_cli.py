"""``discovery train MODEL``: train any registered model family outside a campaign.

    discovery train icsg3d --data perov_5/val.csv --preset cpu --out runs/icsg3d \\
        --set condition_property=heat_ref [--set unet.epochs=2 ...] [--device cpu|cuda] [--max-structures N]
    discovery train lcom --data dataset.csv --cdvae runs/cdvae --out runs/lcom

A family built on another's model (its `Kind.models`, e.g. LCOM on CD-VAE) takes that folder as
``--<model> DIR``, the same as ``--set <model>_dir=DIR``.

``MODEL`` is any kind of role ``model`` in `discovery.registry` (its `~discovery.lifecycle.Trainer`).
Everything the user gives is checked before anything is written: the preset, every ``--set`` key
(validated like a campaign file: one line naming the key and what was expected), the device, the
data file (read and checked by the trainer). Errors are `ConfigError`/`DataError` with one line
(exit code 2 in ``discovery.cli``). Then the output folder is created, MLflow records the run
(``sqlite:///<out>/mlflow.db`` unless ``--tracking-uri`` says otherwise, ``--no-tracking`` turns it
off) and a rich progress bar follows each of the trainer's stages.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from discovery import registry
from discovery.errors import ConfigError
from discovery.lifecycle import PRESETS, check_device, training_config
from discovery.progress import StageProgress

logger = logging.getLogger(__name__)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train MODEL`` (one sub-command per registered model family); returns the ``train`` parser."""
    train = subparsers.add_parser("train", help="train a model family (e.g. ICSG3D) from a data file")
    models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name, kind in sorted(registry.kinds("model").items()):
        p = models.add_parser(name, help=kind.summary or name)
        p.add_argument("--data", type=Path, required=True, help="training data (e.g. a CDVAE-format CSV)")
        p.add_argument("--out", type=Path, required=True, help=f"output folder (checkpoints, {name}.json, mlflow.db)")
        p.add_argument("--preset", default="cpu", metavar="{" + ",".join(PRESETS) + "}",
                       help="model sizes (default: cpu)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a value of the preset (repeatable)")
        p.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train (default: cpu)")
        p.add_argument("--max-structures", type=int, default=None, metavar="N",
                       help="structures to train on (the preset's max_structures; where the model has one)")
        p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
        p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///<out>/mlflow.db)")
        p.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
        p.add_argument("--overwrite", action="store_true", help="replace a model already trained in --out")
        for base in kind.models:  # a family built on another's model takes its folder (LCOM: --cdvae DIR)
            p.add_argument(f"--{base.replace('_', '-')}", dest=f"{base}_dir", type=Path, default=None, metavar="DIR",
                           help=f"the trained {base} model folder it builds on (its config's {base}_dir)")
    return train


def config_from_args(model: str, preset: str, overrides: list[str] | None = None,
                     max_structures: int | None = None) -> Any:
    """The training config of ``model``'s ``preset`` with ``--set`` overrides, validated.

    Raises:
        ConfigError: unknown model or preset, malformed override, unknown key or bad value (one line).
    """
    source = f"discovery train {model}"
    trainer = registry.trainer(model)
    items = list(overrides or [])
    if max_structures is not None:
        items.append(f"max_structures={max_structures}")
    if any(item.split("=", 1)[0].strip() == "preset" for item in items):
        raise ConfigError(f"{source}: --set preset: use --preset")
    if preset not in PRESETS:
        raise ConfigError(f"{source}: --preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return training_config(trainer.config_model, preset, items, source)


def describe_training(info: dict[str, Any]) -> str:
    """The losses and metrics of a training step worth a glance (and the property it learns)."""
    shown = [f"{k} {v:.4g}" for k, v in info.items()
             if k in ("train_loss", "val_loss", "val_recall", "val_mse", "val_mae", "loss_d", "loss_g")
             and isinstance(v, int | float)]
    if "property" in info:
        shown.insert(0, str(info["property"]))
    return ", ".join(shown)


def cmd_train(args, console) -> int:
    """Run ``discovery train MODEL``; returns the exit code.

    Raises:
        ConfigError, DataError: bad input, one line, before anything is written.
    """
    trainer = registry.trainer(args.model)
    bases = {f"{base}_dir": getattr(args, f"{base}_dir", None) for base in registry.get_kind("model", args.model).models}
    overrides = [*args.overrides, *(f"{key}={folder.resolve()}" for key, folder in bases.items() if folder is not None)]
    config = config_from_args(args.model, args.preset, overrides, args.max_structures)
    device = check_device(args.device)
    data_path: Path = args.data
    if not data_path.exists():
        raise ConfigError(f"--data {data_path}: not found")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    manifest = out / f"{trainer.name}.json"
    if manifest.exists() and not args.overwrite:
        raise ConfigError(f"--out {out}: already holds a trained model ({manifest.name}); "
                          "pass --overwrite to replace it")
    with console.status(f"reading {data_path}"):
        data = trainer.read_data(data_path, config)
    held = getattr(args, "held_logs", None)
    if held is not None:
        held.show()

    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first: a crash while new weights replace old ones must leave a folder that
    # reads as "no model", never an old manifest next to new weights.
    manifest.unlink(missing_ok=True)
    from discovery.protocols import NullTracker

    tracker: Any = NullTracker()
    if not args.no_tracking:
        from discovery.tracking.mlflow_tracker import MlflowTracker

        uri = args.tracking_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        artifacts = None if args.tracking_uri else (out / "mlartifacts").resolve().as_uri()
        tracker = MlflowTracker(uri, experiment=trainer.name, run_name=out.resolve().name, artifact_location=artifacts)
    status = "FAILED"
    try:
        with StageProgress(console, trainer.stages, describe_training) as bars:
            model = trainer.train(data, config, out, tracker=tracker, progress=bars, seed=args.seed, device=device)
        status = "FINISHED"
    finally:
        tracker.close(status)
    console.print(trainer.describe(model))
    console.print(f"model folder: {out}" + (f"; MLflow run {tracker.run_id}" if tracker.run_id else ""))
    return 0
