"""Lifecycle trainers of the composition models (``discovery train composition_gan`` / ``composition_vae``).

Training (`CompositionTrainer.train`): the featurizer is fitted on every usable row of the table
(bag-of-atoms elements sorted by Z, 58 Magpie descriptors, min-max ranges), the network trained
with `discovery.models.composition_gan.training.train_loop`, then the model folder is written:
``<name>.pt`` (weights-only checkpoint, atomic) and last the manifest ``<name>.json`` (config, seed,
data sha256 and row counts, the featurizer's ranges, the training formulas for novelty, metrics,
file sha256, package versions).

Loading checks the manifest and the checkpoint (present, same sha256, readable, of this kind);
anything wrong is one `DataError` line naming the file.
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
from discovery.models.composition_gan.config import CompositionGANConfig, CompositionVAEConfig
from discovery.models.composition_gan.data import CompositionTable, read_composition_table

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "discovery.composition_model.manifest"
CHECKPOINT_FORMAT = "discovery.composition_model"
VERSION = 1


class CompositionTrainer:
    """Trainer of a composition model family (`discovery.lifecycle.Trainer`)."""

    def __init__(self, name: str, config_model: type):
        self.name = name
        self.config_model = config_model
        self.stages = (("featurize", "Featurising the composition table"), ("train", f"Training {name}"))

    # ------------------------------------------------------------------ lifecycle

    def read_data(self, path: Path, config: Any) -> CompositionTable:
        """Read and check the composition CSV (`read_composition_table`)."""
        return read_composition_table(path)

    def train(self, data: CompositionTable, config: Any, out_dir: Path, *, tracker: Any = None,
              progress: lifecycle.ProgressFn | None = None, seed: int = 0, device: str = "cpu"):
        """Train and write the model folder (manifest last); returns the loaded `CompositionModel`."""
        import torch

        from discovery.models.checkpoints import write_checkpoint
        from discovery.models.composition_gan.features import Featurizer
        from discovery.models.composition_gan.model import CompositionModel
        from discovery.models.composition_gan.training import build_gan, build_vae, train_loop

        lifecycle.cpu_only(self.name, device)
        tracker = tracker or NullTracker()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if progress:
            progress("featurize", 0, 1, {})
        elements = data.elements()
        probe = Featurizer(tuple(elements), np.zeros((len(elements), 0)), np.zeros(0), np.zeros(0), 0.0, 1.0)
        fractions = probe.fractions_of(data.compositions)
        feat = Featurizer.fit(fractions, elements, data.y)
        x = feat.transform(fractions)
        if not config.descriptors:
            x = x[:, :feat.n_elements]
        y = feat.scale_y(data.y)
        if progress:
            progress("featurize", 1, 1, {"rows": len(data), "features": x.shape[1]})
        tracker.log_params({"model": self.name, **lifecycle.json_number(config.model_dump(mode="json")),
                            "seed": seed, "rows": len(data)})
        if self.name == "composition_gan":
            state = build_gan(x.shape[1], config, seed)
        else:
            state = build_vae(x.shape[1], config, seed)
        state = train_loop(state, x, y, config, seed, progress=progress,
                           log_metrics=lambda m, step: tracker.log_metrics({f"{self.name}/{k}": v for k, v in m.items()},
                                                                            step), stage="train")
        last = state.history[-1]
        metrics = {k: float(v) for k, v in last.items()}
        metrics["train_s"] = time.perf_counter() - t0
        weights: dict[str, Any] = {}
        if self.name == "composition_gan":
            weights = {"generator": state.generator.state_dict(), "discriminator": state.discriminator.state_dict()}
            with torch.no_grad():
                _, pred = state.discriminator(torch.as_tensor(x, dtype=torch.float32))
            metrics["regressor_mae_ev"] = float(np.mean(np.abs(feat.unscale_y(pred.numpy()) - data.y)))
        else:
            weights = {"vae": state.vae.state_dict()}
        ckpt = write_checkpoint(out_dir / f"{self.name}.pt", {
            "format": CHECKPOINT_FORMAT, "version": VERSION, "kind": self.name,
            "config": config.model_dump(mode="json"), "dim": int(x.shape[1]), **weights})
        manifest = {
            "format": MANIFEST_FORMAT, "version": VERSION, "kind": self.name, "preset": config.preset,
            "config": config.model_dump(mode="json"), "seed": seed,
            "data": {"path": str(data.path), "sha256": lifecycle.data_sha256(data.path), "rows": len(data),
                     "skipped": dict(data.skipped)},
            "featurizer": feat.to_dict(), "dim": int(x.shape[1]),
            "training_formulas": sorted(set(data.formulas)),
            "target_range_ev": [float(np.min(data.y)), float(np.max(data.y))],
            "metrics": metrics,
            "files": {"weights": {"path": ckpt.name, "sha256": lifecycle.file_sha256(ckpt)}},
            "versions": lifecycle.package_versions(),
        }
        tracker.log_metrics({f"{self.name}/final/{k}": v for k, v in metrics.items()}, len(state.history))
        lifecycle.write_manifest(out_dir, self.name, manifest)
        tracker.log_artifact(str(ckpt), self.name)
        return self.load(out_dir, device)

    def load(self, folder: Path, device: str = "cpu"):
        """The `CompositionModel` of a model folder.

        Raises:
            DataError: one line naming the file when the folder is missing or damaged.
            ConfigError: a device other than the CPU.
        """
        lifecycle.cpu_only(self.name, device)
        from discovery.models.checkpoints import first_line, read_checkpoint
        from discovery.models.composition_gan.features import Featurizer
        from discovery.models.composition_gan.model import CompositionModel
        from discovery.models.composition_gan.networks import CondDiscriminator, CondGenerator, CondVAE

        folder = Path(folder)
        manifest = lifecycle.read_manifest(folder, self.name, MANIFEST_FORMAT)
        path = folder / f"{self.name}.json"
        try:
            config = self.config_model.model_validate(manifest["config"])
            files = manifest["files"]
            feat = Featurizer.from_dict(manifest["featurizer"])
        except Exception as exc:  # pydantic or KeyError: a manifest of another shape
            raise DataError(f"{path}: not a usable {self.name} manifest ({first_line(exc)})") from None
        ckpt = lifecycle.verify_file(folder, path.name, "weights", files.get("weights"))
        payload = read_checkpoint(ckpt, CHECKPOINT_FORMAT, VERSION, self.name)
        dim = int(payload.get("dim", 0))
        try:
            if self.name == "composition_gan":
                gen = CondGenerator(dim, config.noise_dim, config.hidden)
                gen.load_state_dict(payload["generator"])
                disc = CondDiscriminator(dim, config.hidden)
                disc.load_state_dict(payload["discriminator"])
                return CompositionModel(self.name, config, gen, feat, manifest, disc.eval())
            vae = CondVAE(dim, config.latent_dim, config.hidden)
            vae.load_state_dict(payload["vae"])
            return CompositionModel(self.name, config, vae, feat, manifest)
        except (KeyError, RuntimeError) as exc:
            raise DataError(f"{ckpt}: weights do not fit the recorded config ({first_line(exc)})") from None

    def describe(self, model: Any) -> str:
        """One summary line."""
        m = model.manifest.get("metrics", {})
        extra = f", property head training-set MAE {m['regressor_mae_ev']:.3f} eV/atom" if "regressor_mae_ev" in m else ""
        return (f"{self.name} ({model.config.preset}): {model.manifest.get('data', {}).get('rows', '?')} "
                f"compositions, {model.featurizer.dim} features, {model.config.epochs} epochs in "
                f"{m.get('train_s', float('nan')):.0f} s{extra}")


COMPOSITION_GAN_TRAINER = CompositionTrainer("composition_gan", CompositionGANConfig)
COMPOSITION_VAE_TRAINER = CompositionTrainer("composition_vae", CompositionVAEConfig)
