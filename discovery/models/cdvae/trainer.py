"""CD-VAE's trained-model lifecycle (`discovery.lifecycle.Trainer`): ``TRAINER`` reads a CDVAE CSV,
trains into a model folder and loads it back as a `~discovery.models.cdvae.wrapper.CDVAEModel`.

A model folder holds:

- ``model.pt``: the best (top-1 validation loss) weights, the fitted scalers and the architecture;
- ``last.pt``: the resumable state of the latest validation (weights, optimiser, scheduler,
  random streams, history). A training that finds a ``last.pt`` of the same configuration,
  data (sha256), split and seed continues from it instead of starting again;
- ``cache/crystalnn.npz``: the CrystalNN graphs of the data (reused by later trainings here);
- ``cdvae.json``: the manifest, written last (`discovery.lifecycle.write_manifest`): besides the
  common keys, ``split`` (train / held-out candidate ids), ``property``, ``max_atoms``,
  ``train_property`` (the training split's property values), ``bases`` (training structures of
  the lowest property decile, the default bases of targeted sampling) and the history.

The split is seeded: ``val_fraction`` (0.2) of the structures are held out; their validation loss
selects the top-1 checkpoint and drives the plateau schedule, as CD-VAE's validation set does
(the benchmark then reports reconstruction and generation against that same held-out 20 %, or
against ``--eval-data``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from discovery.errors import DataError
from discovery.lifecycle import (
    check_device,
    data_sha256,
    package_versions,
    read_manifest,
    verify_file,
    write_manifest,
)
from discovery.models.cdvae.data import CDVAEData, read_cdvae_data
from discovery.models.cdvae.presets import CDVAEConfig

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "cdvae-model"
MANIFEST_VERSION = 1
MODEL_FORMAT = "cdvae-model-weights"
MODEL_VERSION = 1
#: Training structures of the lowest property decile kept in the manifest as default bases.
N_BASES = 32


def _fingerprint(config: CDVAEConfig, data_hash: str, seed: int, train_ids: list[str], val_ids: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    h.update(f"|{data_hash}|{seed}|".encode())
    h.update("|".join(train_ids).encode())
    h.update(b"#")
    h.update("|".join(val_ids).encode())
    return h.hexdigest()


def build_module(config: CDVAEConfig, max_atoms: int, predict_property: bool, scalers: dict[str, Any],
                 seed: int) -> Any:
    """A freshly initialised `CDVAE` with its scalers; the initialisation is drawn from ``seed``
    inside a forked torch RNG (the global stream is left as it was)."""
    import torch

    from discovery.models.cdvae.model import CDVAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = CDVAE(config.model_dump(mode="json"), max_atoms, predict_property)
    module.set_scalers(**scalers)
    return module


class CDVAETrainer:
    """The CD-VAE family (``discovery train cdvae``)."""

    name = "cdvae"
    config_model = CDVAEConfig
    stages = (("graphs", "CrystalNN graphs"), ("train", "CD-VAE epochs"))

    def read_data(self, path: Path, config: CDVAEConfig) -> CDVAEData:
        """Read and check a CDVAE CSV (writes nothing).

        Raises:
            DataError: see `discovery.models.cdvae.data.read_cdvae_data`.
        """
        return read_cdvae_data(path, config)

    def train(self, data: CDVAEData, config: CDVAEConfig, out_dir: Path, *, tracker: Any = None,
              progress: Any = None, seed: int = 0, device: str = "cpu") -> Any:
        """Train CD-VAE on the seeded 80/20 split of ``data`` into ``out_dir`` (resuming a
        matching ``last.pt``) and return the loaded `CDVAEModel`."""
        from discovery.models.cdvae.data import (
            fit_scalers,
            split_indices,
            to_graph_data,
        )
        from discovery.models.cdvae.graphs import CrystalNNCache
        from discovery.models.cdvae.training import (
            CHECKPOINT_FORMAT,
            CHECKPOINT_VERSION,
            train_cdvae,
        )
        from discovery.models.checkpoints import read_checkpoint, write_checkpoint

        check_device(device)
        started = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        train_idx, val_idx = split_indices(len(data), config.val_fraction, seed, config.max_structures)
        train_ids = [data.ids[k] for k in train_idx]
        val_ids = [data.ids[k] for k in val_idx]
        data_hash = data_sha256(data.path)
        fingerprint = _fingerprint(config, data_hash, seed, train_ids, val_ids)
        used = np.concatenate([train_idx, val_idx])
        max_atoms = config.max_atoms or max(len(data.structures[k]) for k in used)
        props = data.property_values()
        predict_property = data.property is not None
        scalers = fit_scalers([data.structures[k] for k in train_idx], props[train_idx] if predict_property else None)
        if predict_property and "prop_mean" not in scalers:
            raise DataError(f"{data.path}: no training structure has a value of {data.property!r}")

        cache = CrystalNNCache(out_dir / "cache" / "crystalnn.npz")
        n_used = len(used)

        def graph_progress(done: int, total: int) -> None:
            if done % 500 == 0 or done == total:
                cache.save()
            if progress is not None:
                progress("graphs", done, total, {})

        graphs = to_graph_data([data.structures[k] for k in used], props[used], cache, graph_progress)
        cache.save()
        train_graphs, val_graphs = graphs[:len(train_idx)], graphs[len(train_idx):n_used]

        resume = None
        last = out_dir / "last.pt"
        if last.is_file():
            try:
                payload = read_checkpoint(last, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, kind="last")
                if payload.get("fingerprint") == fingerprint:
                    resume = payload
                else:
                    logger.info("cdvae: %s belongs to another training (config, data, split or seed); starting anew",
                                last)
            except DataError as exc:
                logger.warning("cdvae: %s ignored (%s)", last, exc)
        arch = config.model_dump(mode="json")
        module = build_module(config, max_atoms, predict_property, scalers, seed)
        if tracker is not None:
            tracker.log_params({"preset": config.preset, "seed": seed, "n_train": len(train_idx), "n_val": len(val_idx),
                                "property": data.property or "none", "max_atoms": max_atoms,
                                "n_parameters": sum(p.numel() for p in module.parameters())})
        state = train_cdvae(module, train_graphs, val_graphs, config, out_dir, seed=seed, device=device,
                            fingerprint=fingerprint, tracker=tracker, progress=progress, resume=resume,
                            write_checkpoint=write_checkpoint)
        best_path = out_dir / "best.pt"
        best = (read_checkpoint(best_path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, kind="best")
                if best_path.is_file() else None)
        if best is None or best.get("fingerprint") != fingerprint:  # not this training's: no finite validation
            raise DataError(f"{out_dir}: no validation loss of this training was finite; no model written")
        module.load_state_dict(best["model"])
        model_file = write_checkpoint(out_dir / "model.pt", {
            "format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": "cdvae", "config": arch,
            "max_atoms": max_atoms, "predict_property": predict_property, "model": module.state_dict(),
            "epoch": best["epoch"]})
        last_record = state.history[-1] if state.history else {}
        best_record = next((r for r in state.history if int(r["epoch"]) == state.best_epoch), {})
        metrics = {"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "epochs": state.epoch,
                   "skipped_steps": state.skipped_steps, "train_seconds": state.elapsed_s,
                   "wall_seconds": time.perf_counter() - started,
                   **{k: v for k, v in best_record.items() if k.startswith("val_")},
                   **{f"last_{k}": v for k, v in last_record.items() if k.startswith("train_")}}
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "kind": self.name, "preset": config.preset,
            "config": arch, "seed": int(seed),
            "data": {"path": str(data.path), "sha256": data_hash, "n_rows": data.n_rows, "n_structures": len(data),
                     "n_corrupt": data.n_corrupt, "n_duplicates": data.n_duplicates, "n_skipped": data.n_skipped,
                     "n_train": len(train_idx), "n_val": len(val_idx)},
            "metrics": metrics,
            "files": {"model": {"path": model_file.name, "sha256": _sha(model_file)}},
            "versions": package_versions(),
            "property": data.property, "max_atoms": max_atoms,
            "split": {"train": train_ids, "val": val_ids},
            "train_property": [float(v) for v in props[train_idx]] if predict_property else [],
            "bases": _bases(data, train_idx, props),
            "history": state.history,
        }
        write_manifest(out_dir, self.name, manifest)
        if tracker is not None:
            tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                                step=state.epoch)
        logger.info("cdvae: trained %d epochs in %.0f s; best validation loss %.4g at epoch %d", state.epoch,
                    state.elapsed_s, state.best_val_loss, state.best_epoch)
        return self.load(out_dir, device)

    def load(self, folder: Path, device: str = "cpu") -> Any:
        """Load a model folder (manifest and checked weights).

        Raises:
            DataError: missing or damaged manifest or weights (one line naming the file).
        """
        from discovery.models.cdvae.model import CDVAE
        from discovery.models.cdvae.wrapper import CDVAEModel
        from discovery.models.checkpoints import first_line, read_checkpoint

        check_device(device)
        folder = Path(folder)
        manifest = read_manifest(folder, self.name, MANIFEST_FORMAT)
        path = folder / f"{self.name}.json"
        try:
            config = CDVAEConfig.model_validate(manifest["config"])
        except (KeyError, ValueError) as exc:
            raise DataError(f"{path}: config is not a CD-VAE training config ({first_line(exc)})") from None
        model_file = verify_file(folder, path.name, "model", (manifest.get("files") or {}).get("model"))
        payload = read_checkpoint(model_file, MODEL_FORMAT, MODEL_VERSION, kind="cdvae")
        try:
            module = CDVAE(payload["config"], int(payload["max_atoms"]), bool(payload["predict_property"]))
            module.load_state_dict(payload["model"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise DataError(f"{model_file}: weights do not fit the recorded architecture ({first_line(exc)})") from None
        return CDVAEModel(module, config, manifest, folder, device)

    def describe(self, model: Any) -> str:
        """One line: preset, size, best validation loss and time."""
        m = model.manifest.get("metrics", {})
        return (f"CD-VAE ({model.config.preset}) on {model.manifest['data']['n_train']} crystals: best validation "
                f"loss {m.get('best_val_loss', float('nan')):.4g} at epoch {m.get('best_epoch')} of {m.get('epochs')}, "
                f"type accuracy {m.get('val_type_accuracy', float('nan')):.3f}, "
                f"{m.get('train_seconds', 0) / 60:.1f} min; property head: {model.property or 'none'}")


def _sha(path: Path) -> str:
    from discovery.lifecycle import file_sha256

    return file_sha256(path)


def _bases(data: CDVAEData, train_idx: np.ndarray, props: np.ndarray) -> list[dict[str, Any]]:
    """Training structures of the lowest property decile (all training structures without a
    property), at most `N_BASES`, as ``{id, value, cif}``."""
    from pymatgen.io.cif import CifWriter

    idx = np.asarray(train_idx)
    values = props[idx]
    finite = np.isfinite(values)
    if finite.any():
        cut = np.quantile(values[finite], 0.1)
        chosen = idx[finite & (values <= cut)]
        chosen = chosen[np.argsort(props[chosen], kind="stable")][:N_BASES]
    else:
        chosen = idx[:N_BASES]
    return [{"id": data.ids[k], "value": float(props[k]) if np.isfinite(props[k]) else None,
             "cif": str(CifWriter(data.structures[k]))} for k in chosen]


TRAINER = CDVAETrainer()
