"""``discovery dataset build CONFIG --out DIR``: build a CHGNet-relaxed training set.

    discovery dataset build configs/datasets/csp_binaries.yaml --out runs/datasets/csp_binaries \\
        [--set key=value ...] [--workers N]

`discovery.cli` wires ``add_dataset_parser`` into its sub-commands and calls ``cmd_dataset``;
with Ray (``--ray`` / ``--address``) it passes a `RayExecutor` as ``executor`` (this package sits
below the actors and imports no Ray). Bad input (missing or invalid config file, an ``--out`` that
holds another build) raises `ConfigError` / `DataError`: one line, exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: The build's progress stages and their labels.
STAGES = (("plan", "planning"), ("relax", "CHGNet relax"))


def add_dataset_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``dataset build``; returns the ``dataset`` parser."""
    dataset = subparsers.add_parser("dataset", help="build a training set of CHGNet-relaxed crystals")
    actions = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="plan, relax (resumable) and write a CDVAE-format CSV")
    build.add_argument("config", type=Path, help="dataset YAML file (see configs/datasets/)")
    build.add_argument("--out", type=Path, required=True, help="build folder (plan, work file, CSV, dataset.json)")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a value of the config (repeatable)")
    build.add_argument("--workers", type=int, default=None, help="CHGNet workers (with Ray; default: the config's)")
    build.add_argument("--ray", action="store_true", help="relax on a fresh local Ray instance (`workers` CHGNet actors)")
    build.add_argument("--address", default=None, help="Ray cluster address (implies --ray)")
    return dataset


def cmd_dataset(args, console, executor: Any = None) -> int:
    """Run ``discovery dataset build``; returns the exit code.

    Args:
        args: the parsed arguments.
        console: a rich console (progress, summary).
        executor: an executor not yet started (the Ray one); None: local.

    Raises:
        ConfigError, DataError: bad input, one line.
    """
    from discovery.datasets.builder import build_dataset
    from discovery.datasets.config import load_dataset_config
    from discovery.errors import ConfigError

    overrides = list(args.overrides or [])
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: expected at least 1")
        overrides.append(f"workers={args.workers}")
    config = load_dataset_config(args.config, overrides)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a folder")
    held = getattr(args, "held_logs", None)
    if held is not None:
        held.show()
    from discovery.progress import StageProgress

    with StageProgress(console, STAGES) as bars:
        manifest = build_dataset(config, args.out, executor=executor, progress=bars)
    c = manifest["counts"]
    console.print(f"{manifest['csv']['path']}: {c['structures']} structures over {c['compositions']} compositions "
                  f"({c['dropped_duplicates']} duplicates, {c['dropped_failed']} failed relaxations dropped; "
                  f"{manifest['wall_seconds'] / 60:.1f} min); sha256 {manifest['csv']['sha256'][:16]}; "
                  f"folder {args.out}")
    return 0
