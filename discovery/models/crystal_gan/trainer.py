"""The crystal GAN's lifecycle trainer (``discovery train crystal_gan``).

Training (`CrystalGANTrainer.train`), in this order:

1. the hold-out compositions (`~discovery.models.crystal_gan.data.choose_holdout`) are removed from
   the matrices read by `read_data`;
2. the rest is augmented per composition to ``samples_per_composition`` (`augment`, seeded);
3. the networks train (`~discovery.models.crystal_gan.training.train_crystal_gan`);
4. the model folder gets ``crystal_gan.pt`` (generator, critic and Q-network weights; weights-only,
   atomic) and last the manifest ``crystal_gan.json``: config, seed, data (path, sha256, rows,
   compositions), the hold-out compositions (counts and formulas), the training compositions,
   metrics (last epoch's means, time), file sha256 and package versions.

`load` checks the manifest and the checkpoint; anything wrong is one `DataError` line naming the
file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from discovery import lifecycle
from discovery.errors import DataError
from discovery.protocols import NullTracker
from discovery.models.crystal_gan.config import CrystalGANConfig
from discovery.models.crystal_gan.data import CrystalGANData, composition_formula

logger = logging.getLogger(__name__)

NAME = "crystal_gan"
MANIFEST_FORMAT = "discovery.crystal_gan.manifest"
CHECKPOINT_FORMAT = "discovery.crystal_gan"
VERSION = 1


class CrystalGANTrainer:
    """`discovery.lifecycle.Trainer` of the crystal GAN."""

    name = NAME
    config_model = CrystalGANConfig
    stages = (("augment", "Augmenting compositions"), ("train", "Training the crystal GAN"))

    def read_data(self, path: Path, config: CrystalGANConfig) -> CrystalGANData:
        """Read and check the ``.npy`` matrices (`load_matrices`) and the hold-out compositions."""
        from discovery.models.crystal_gan.data import choose_holdout, load_matrices
        from discovery.models.crystal_gan.representation import Blocks

        blocks = Blocks.from_config(config.blocks)
        data = load_matrices(path, blocks, config.row_threshold)
        holdout = choose_holdout(data, blocks, config.holdout, config.holdout_extra, config.holdout_seed)
        if len(holdout) >= len(data.compositions()):
            raise DataError(f"{path}: every composition is held out; nothing left to train on")
        return data

    def train(self, data: CrystalGANData, config: CrystalGANConfig, out_dir: Path, *, tracker: Any = None,
              progress: lifecycle.ProgressFn | None = None, seed: int = 0, device: str = "cpu"):
        """Train and write the model folder (manifest last); returns the loaded `CrystalGANModel`."""
        from discovery.models.checkpoints import write_checkpoint
        from discovery.models.crystal_gan.data import augment, choose_holdout
        from discovery.models.crystal_gan.representation import Blocks
        from discovery.models.crystal_gan.training import train_crystal_gan

        lifecycle.cpu_only("crystal_gan", device)
        tracker = tracker or NullTracker()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        blocks = Blocks.from_config(config.blocks)
        holdout = choose_holdout(data, blocks, config.holdout, config.holdout_extra, config.holdout_seed)
        keep = np.array([tuple(c) not in set(holdout) for c in data.counts.tolist()])
        if progress:
            progress("augment", 0, 1, {})
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        x, counts = augment(data.matrices[keep], data.counts[keep], blocks, config.samples_per_composition, rng)
        if progress:
            progress("augment", 1, 1, {"samples": len(x)})
        tracker.log_params({"model": NAME, **lifecycle.json_number(config.model_dump(mode="json")), "seed": seed,
                            "holdout": ",".join(composition_formula(h, blocks) for h in holdout)})
        nets = train_crystal_gan(x, counts, config, seed, progress=progress,
                                 log_metrics=lambda m, e: tracker.log_metrics({f"{NAME}/{k}": v for k, v in m.items()}, e))
        metrics = {k: float(v) for k, v in nets.history[-1].items()}
        metrics["train_s"] = time.perf_counter() - t0
        ckpt = write_checkpoint(out_dir / f"{NAME}.pt", {
            "format": CHECKPOINT_FORMAT, "version": VERSION, "kind": NAME, "config": config.model_dump(mode="json"),
            "generator": nets.generator.state_dict(), "critic": nets.critic.state_dict(),
            "qnet": nets.qnet.state_dict()})
        train_comps = sorted({tuple(c) for c in data.counts[keep].tolist()})
        manifest = {
            "format": MANIFEST_FORMAT, "version": VERSION, "kind": NAME, "preset": config.preset,
            "config": config.model_dump(mode="json"), "seed": seed,
            "data": {"path": str(data.path), "sha256": lifecycle.data_sha256(data.path), "rows": len(data),
                     "training_rows": int(keep.sum()), "augmented_rows": len(x),
                     "compositions": len(data.compositions())},
            "holdout_counts": [list(h) for h in holdout],
            "holdout": [composition_formula(h, blocks) for h in holdout],
            "training_compositions": [list(c) for c in train_comps],
            "metrics": metrics,
            "files": {"weights": {"path": ckpt.name, "sha256": lifecycle.file_sha256(ckpt)}},
            "versions": lifecycle.package_versions(),
        }
        lifecycle.write_manifest(out_dir, NAME, manifest)
        tracker.log_artifact(str(ckpt), NAME)
        return self.load(out_dir, device)

    def load(self, folder: Path, device: str = "cpu"):
        """The `CrystalGANModel` of a model folder.

        Raises:
            DataError: one line naming the file when the folder is missing or damaged.
            ConfigError: a device other than the CPU.
        """
        lifecycle.cpu_only("crystal_gan", device)
        from discovery.models.checkpoints import first_line, read_checkpoint
        from discovery.models.crystal_gan.model import CrystalGANModel
        from discovery.models.crystal_gan.networks import CrystalGenerator, CrystalQNetwork
        from discovery.models.crystal_gan.representation import Blocks

        folder = Path(folder)
        manifest = lifecycle.read_manifest(folder, NAME, MANIFEST_FORMAT)
        path = folder / f"{NAME}.json"
        try:
            config = CrystalGANConfig.model_validate(manifest["config"])
            entry = manifest["files"]["weights"]
        except Exception as exc:  # pydantic or KeyError: a manifest of another shape
            raise DataError(f"{path}: not a usable crystal_gan manifest ({first_line(exc)})") from None
        ckpt = lifecycle.verify_file(folder, path.name, "weights", entry)
        payload = read_checkpoint(ckpt, CHECKPOINT_FORMAT, VERSION, NAME)
        blocks = Blocks.from_config(config.blocks)
        try:
            gen = CrystalGenerator(config.latent_dim, blocks.max_counts, config.g_fc, config.g_channels,
                                   config.g_cell_hidden, config.bn_eps)
            gen.load_state_dict(payload["generator"])
            qnet = CrystalQNetwork(blocks.max_counts, config.q_channels, config.q_fc, config.bn_eps)
            qnet.load_state_dict(payload["qnet"])
        except (KeyError, RuntimeError) as exc:
            raise DataError(f"{ckpt}: weights do not fit the recorded config ({first_line(exc)})") from None
        return CrystalGANModel(config, gen, qnet, blocks, manifest)

    def describe(self, model: Any) -> str:
        """One summary line."""
        m = model.manifest.get("metrics", {})
        d = model.manifest.get("data", {})
        return (f"crystal_gan ({model.config.preset}): {d.get('augmented_rows', '?')} augmented samples of "
                f"{len(model.manifest.get('training_compositions', []))} compositions, {model.config.epochs} epochs "
                f"in {m.get('train_s', float('nan')):.0f} s; held out {', '.join(model.manifest.get('holdout', []))}")


TRAINER = CrystalGANTrainer()
