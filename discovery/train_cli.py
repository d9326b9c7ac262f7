"""``discovery train``: train generative models outside a campaign (for now ICSG3D).

    discovery train icsg3d --data perov_5/val.csv --preset cpu --out runs/icsg3d \\
        --set condition_property=heat_ref [--set unet.epochs=2 ...] [--device cpu|cuda] [--max-structures N]

Everything the user gives is checked before anything is written: the preset, every ``--set``
key (validated like the config file of a campaign: one line naming the key and what was
expected), the device, the data file and its columns. Errors are `ConfigError`/`DataError` with one
line (exit code 2 in ``discovery.cli``). Then the output folder is created, MLflow records the run
(``sqlite:///<out>/mlflow.db`` unless ``--tracking-uri`` says otherwise, ``--no-tracking`` turns it
off) and a rich progress bar follows each stage (data, voxels, UNet, VAE, CGCNN heads).

This module imports nothing heavy at import time, so ``discovery.cli`` can import it at the top.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from discovery.errors import ConfigError

logger = logging.getLogger(__name__)

PRESETS = ("cpu", "faithful")
STAGES = (("load", "data"), ("featurise", "voxels"), ("unet", "UNet"), ("vae", "VAE"), ("heads", "CGCNN heads"))


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train icsg3d`` to the ``discovery`` sub-command parsers; returns the ``train`` parser."""
    train = subparsers.add_parser("train", help="train a generative model (ICSG3D) from a CDVAE CSV")
    models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    p = models.add_parser("icsg3d", help="3-D UNet + Cond-DFC-VAE + CGCNN heads (Court et al. 2020)")
    p.add_argument("--data", type=Path, required=True, help="CDVAE-format CSV (CIF column 'cif')")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, icsg3d.json, mlflow.db)")
    p.add_argument("--preset", default="cpu", metavar="{cpu,faithful}", help="model sizes (default: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable), e.g. condition_property=heat_ref or unet.epochs=2")
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train (default: cpu)")
    p.add_argument("--max-structures", type=int, default=None, metavar="N",
                   help="structures the UNet and VAE train on (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///<out>/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    p.add_argument("--overwrite", action="store_true", help="replace a model already trained in --out")
    return train


def icsg3d_config_from_args(preset: str, overrides: list[str] | None = None,
                            max_structures: int | None = None):
    """The `ICSG3DConfig` of a preset with ``--set`` overrides, validated.

    Raises:
        ConfigError: unknown preset, malformed override, unknown key or bad value (one line).
    """
    from pydantic import ValidationError

    from discovery.config import _format_validation_error, _set_path, parse_overrides
    from discovery.models.icsg3d_presets import ICSG3DConfig

    source = "discovery train icsg3d"
    if preset not in PRESETS:
        raise ConfigError(f"{source}: --preset {preset!r}: expected one of {', '.join(PRESETS)}")
    raw: dict[str, Any] = {"preset": preset}
    for key, value in parse_overrides(overrides, source):
        if key == "preset":
            raise ConfigError(f"{source}: --set preset: use --preset")
        _set_path(raw, key, value, source)
    if max_structures is not None:
        raw["max_structures"] = max_structures
    try:
        return ICSG3DConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


class StageProgress:
    """One rich progress bar per training stage, fed by the pipeline's ``progress`` callback."""

    def __init__(self, console):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("[bold]{task.fields[label]:<12}"), BarColumn(bar_width=24),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=console, transient=False)
        self.labels = dict(STAGES)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, stage: str, done: int, total: int, info: dict[str, Any]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task("", total=max(total, 1),
                                                       label=self.labels.get(stage, stage))
        shown = [f"{k} {v:.4g}" for k, v in info.items()
                 if k in ("train_loss", "val_loss", "val_recall", "val_mse", "val_mae")
                 and isinstance(v, int | float)]
        if "property" in info:
            shown.insert(0, str(info["property"]))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1),
                             description=", ".join(shown))


def cmd_train(args, console) -> int:
    """Run ``discovery train icsg3d`` (the only model so far); returns the exit code.

    Raises:
        ConfigError, DataError: bad input, one line, before anything is written.
    """
    from discovery.generators.icsg3d_pipeline import (MANIFEST_NAME, check_device, load_training_data,
                                                      train_icsg3d)

    if getattr(args, "model", "icsg3d") != "icsg3d":
        raise ConfigError(f"discovery train: unknown model {args.model!r}; expected icsg3d")
    config = icsg3d_config_from_args(args.preset, args.overrides, args.max_structures)
    device = check_device(args.device)
    data_path: Path = args.data
    if not data_path.is_file():
        raise ConfigError(f"--data {data_path}: file not found")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if (out / MANIFEST_NAME).exists() and not args.overwrite:
        raise ConfigError(f"--out {out}: already holds a trained model ({MANIFEST_NAME}); "
                          "pass --overwrite to replace it")
    with console.status(f"reading {data_path}"):
        data = load_training_data(data_path, config)
    held = getattr(args, "held_logs", None)
    if held is not None:
        held.show()
    logger.info("%s: %d labelled structures (%d rows, %d unreadable, %d without %s); heads for %s",
                data_path, len(data), data.n_rows, data.n_corrupt, data.n_unlabelled, config.condition_property,
                ", ".join(data.properties))

    out.mkdir(parents=True, exist_ok=True)
    tracker = None
    if not args.no_tracking:
        from discovery.tracking.mlflow_tracker import MlflowTracker

        uri = args.tracking_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        artifacts = None if args.tracking_uri else (out / "mlartifacts").resolve().as_uri()
        tracker = MlflowTracker(uri, experiment="icsg3d", run_name=out.resolve().name, artifact_location=artifacts)
    status = "FAILED"
    try:
        with StageProgress(console) as bars:
            model = train_icsg3d(data, config, out, tracker=tracker, progress=bars, seed=args.seed, device=device)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.close(status)
    m = model.manifest["metrics"]

    def fmt(value: Any, spec: str = ".3g") -> str:
        return "n/a" if value is None else format(value, spec)

    heads = ", ".join(f"{p} {fmt(v.get('val_mae'))}" for p, v in m["heads"].items())
    console.print(f"icsg3d trained in {m['wall_s']['total']:.0f} s: UNet val recall "
                  f"{fmt(m['unet'].get('val_recall'))}, VAE val loss {fmt(m['vae'].get('val_loss'), '.4g')}, "
                  f"CGCNN val MAE {heads or 'n/a'}")
    console.print(f"model folder: {out} (version {model.version})"
                  + (f"; MLflow run {tracker.run_id}" if tracker is not None else ""))
    return 0
