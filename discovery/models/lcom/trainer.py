"""LCOM's trained-model lifecycle (`discovery.lifecycle.Trainer`): ``TRAINER`` reads a CDVAE CSV
with formation energies, encodes it with the CD-VAE named by ``cdvae_dir``, trains the conservative
members and loads them back as an `~discovery.models.lcom.wrapper.LCOMModel`.

    discovery train lcom --data runs/datasets/csp_binaries/csp_binaries.csv \\
        --set cdvae_dir=runs/cdvae --preset cpu --out runs/lcom

A model folder holds ``model.pt`` (members, scalers, multipliers), ``latents.npz`` (ids, formulas,
atom counts, CD-VAE means, composition vectors, targets and the split: what fine-tuning replays and what the generator
may start from) and ``lcom.json``, the manifest, written last. The manifest names the CD-VAE folder
(absolute, and relative to the LCOM folder) and the sha256 of its ``cdvae.json``: an LCOM model is
only loaded next to the very CD-VAE it was trained on.

This package imports `discovery.models.cdvae` (lazily, here only): LCOM is built on CD-VAE's latent
space. The dependency is one-way (CD-VAE knows nothing of LCOM).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from discovery.errors import ConfigError, DataError
from discovery.fileio import atomic_write
from discovery.lifecycle import (
    check_device,
    data_sha256,
    file_sha256,
    package_versions,
    read_manifest,
    verify_file,
    write_manifest,
)
from discovery.models.lcom.presets import LCOMConfig

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "lcom-model"
MANIFEST_VERSION = 1
MODEL_FORMAT = "lcom-model-weights"
MODEL_VERSION = 1


@dataclass
class LCOMData:
    """A CSV encoded by a CD-VAE.

    Attributes:
        path: the CSV. ids: candidate ids. formulas: reduced formulas. y: the property (eV/atom).
        mu: CD-VAE posterior means (n, latent). comp: composition vectors (n, k).
        cdvae: the loaded CD-VAE. cdvae_dir: its folder.
        n_rows, n_corrupt, n_duplicates: loader counts; n_skipped: rows without the property or
            that the CD-VAE cannot encode.
    """

    path: Path
    ids: list[str] = field(default_factory=list)
    formulas: list[str] = field(default_factory=list)
    n_atoms: list[int] = field(default_factory=list)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mu: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    comp: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    cdvae: Any = None
    cdvae_dir: Path | None = None
    n_rows: int = 0
    n_corrupt: int = 0
    n_duplicates: int = 0
    n_skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def cpu_only(device: str) -> None:
    """LCOM's members are small MLPs that train and descend on the CPU (its CD-VAE may use a GPU).

    Raises:
        ConfigError: another device than cpu.
    """
    check_device(device)
    if device != "cpu":
        raise ConfigError(f"lcom: device {device!r}: LCOM runs on the CPU (small MLPs); use device: cpu")


def cdvae_folder(folder: Path, info: Any, cdvae_dir: Path | None = None) -> Path:
    """The CD-VAE folder an LCOM model in ``folder`` was trained on: ``cdvae_dir`` when given, else
    the one its manifest's ``cdvae`` entry (``info``) names, absolute or relative to ``folder``.

    Raises:
        DataError: that folder is missing or holds another CD-VAE (sha256 of its cdvae.json).
    """
    info = info if isinstance(info, dict) else {}
    path = Path(folder) / "lcom.json"
    candidates = [Path(cdvae_dir)] if cdvae_dir is not None else [Path(str(info.get("dir", ""))),
                                                                   Path(folder) / str(info.get("relative", ""))]
    found = next((d for d in candidates if (d / "cdvae.json").is_file()), None)
    if found is None:
        raise DataError(f"{path}: its CD-VAE folder {candidates[0]} is missing (no cdvae.json)")
    if file_sha256(found / "cdvae.json") != info.get("manifest_sha256"):
        raise DataError(f"{found / 'cdvae.json'}: another CD-VAE than the one {path} was trained on")
    return found


def load_cdvae(folder: Path, device: str = "cpu") -> Any:
    """The CD-VAE of ``folder`` (DataError when missing or damaged)."""
    from discovery.models.cdvae.trainer import TRAINER as CDVAE_TRAINER

    return CDVAE_TRAINER.load(Path(folder), device)


class LCOMTrainer:
    """The LCOM family (``discovery train lcom``)."""

    name = "lcom"
    config_model = LCOMConfig
    stages = (("train", "LCOM epochs"),)

    def read_data(self, path: Path, config: LCOMConfig) -> LCOMData:
        """Read a CDVAE CSV with ``config.property`` and encode it with the CD-VAE of ``cdvae_dir``
        (writes nothing).

        Raises:
            ConfigError: no ``cdvae_dir``.
            DataError: missing CD-VAE folder, unreadable CSV, no such property, too few usable rows.
        """
        from discovery.data.loaders import load_cdvae_csv
        from discovery.models.cdvae.data import MAX_Z

        if config.cdvae_dir is None:
            raise ConfigError("lcom: cdvae_dir is required (the trained CD-VAE folder that encodes the data; "
                              "--set cdvae_dir=DIR)")
        cdvae = load_cdvae(config.cdvae_dir)
        path = Path(path)
        loaded = load_cdvae_csv(path)
        data = LCOMData(path=path, cdvae=cdvae, cdvae_dir=Path(config.cdvae_dir).resolve(), n_rows=loaded.n_rows,
                        n_corrupt=loaded.n_corrupt, n_duplicates=loaded.n_duplicates)
        columns = {k for lab in loaded.labels.values() for k in lab}
        if config.property not in columns:
            raise DataError(f"{path}: no numeric column {config.property!r} (found: {', '.join(sorted(columns)) or 'none'})")
        structures, ys = [], []
        for cand in loaded.candidates:
            value = loaded.labels.get(cand.id, {}).get(config.property)
            s = cand.pmg
            if value is None or not np.isfinite(value) or len(s) > cdvae.max_atoms or max(s.atomic_numbers) > MAX_Z:
                data.n_skipped += 1
                continue
            data.ids.append(cand.id)
            data.formulas.append(cand.formula)
            data.n_atoms.append(len(s))
            structures.append(s)
            ys.append(float(value))
        if len(structures) < 2:
            raise DataError(f"{path}: {len(structures)} rows with {config.property} that the CD-VAE in "
                            f"{config.cdvae_dir} can encode (need at least 2)")
        if config.max_structures is not None and len(structures) > config.max_structures:
            keep = np.sort(np.random.default_rng(np.random.SeedSequence([0, 0x1C0D])).choice(
                len(structures), size=config.max_structures, replace=False))
            data.n_skipped += len(structures) - len(keep)
            structures = [structures[k] for k in keep]
            ys = [ys[k] for k in keep]
            data.ids = [data.ids[k] for k in keep]
            data.formulas = [data.formulas[k] for k in keep]
            data.n_atoms = [data.n_atoms[k] for k in keep]
        from discovery.models.lcom.features import composition_matrix

        data.y = np.asarray(ys, dtype=np.float64)
        data.comp = composition_matrix(structures, config.composition)
        cdvae.read_graph_cache(Path(config.cdvae_dir) / "cache" / "crystalnn.npz")
        data.mu = cdvae.encode(structures)[0].astype(np.float32)
        logger.info("%s: %d structures encoded (%d rows, %d skipped)", path, len(data), data.n_rows, data.n_skipped)
        return data

    def train(self, data: LCOMData, config: LCOMConfig, out_dir: Path, *, tracker: Any = None, progress: Any = None,
              seed: int = 0, device: str = "cpu") -> Any:
        """Train ``ensemble_size`` members on the seeded split, write the folder, return the model."""
        import torch

        from discovery.models.checkpoints import write_checkpoint
        from discovery.models.lcom.conservative import (
            FitSettings,
            fit_member,
            new_member,
        )

        cpu_only(device)
        started = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        n = len(data)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1C03]))
        order = rng.permutation(n)
        n_val = min(int(round(config.val_fraction * n)), n - 2) if config.val_fraction > 0 else 0
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        z_mean = data.mu[train_idx].mean(axis=0)
        z_std = data.mu[train_idx].std(axis=0) + 1e-5
        y_mean = float(data.y[train_idx].mean())
        y_std = float(data.y[train_idx].std()) or 1.0
        z = ((data.mu - z_mean) / z_std).astype(np.float32)
        ys = ((data.y - y_mean) / y_std).astype(np.float32)
        zt, yt = torch.as_tensor(z), torch.as_tensor(ys)
        ct = torch.as_tensor(data.comp) if data.comp.shape[1] else None
        latent_dim, cond_dim = z.shape[1], data.comp.shape[1]
        settings = FitSettings.from_config(config, latent_dim)
        if tracker is not None:
            tracker.log_params({"preset": config.preset, "seed": seed, "n_train": len(train_idx), "n_val": len(val_idx),
                                "conservative": config.conservative, "tau": config.tau,
                                "adversarial_steps": config.adversarial_steps, "ensemble_size": config.ensemble_size,
                                "latent_dim": latent_dim, "cond_dim": cond_dim, "eta": settings.eta})
        members, histories = [], []
        total = config.epochs * config.ensemble_size
        tr = torch.as_tensor(train_idx)
        for k, member_seq in enumerate(np.random.SeedSequence([int(seed), 0x1C04]).spawn(config.ensemble_size)):
            init_seed, batch_seed = (int(x) for x in member_seq.generate_state(2, np.uint32))
            model = new_member(latent_dim, cond_dim, config, init_seed)

            def on_epoch(epoch: int, record: dict[str, float], k: int = k) -> None:
                if progress is not None:
                    progress("train", k * config.epochs + epoch, total,
                             {"train_loss": record["mse"], "gap": record["gap"], "alpha": record["alpha"]})
                if tracker is not None and k == 0:
                    tracker.log_metrics({"mse": record["mse"], "gap": record["gap"], "alpha": record["alpha"]},
                                        step=epoch)

            history = fit_member(model, zt[tr], ct[tr] if ct is not None else None, yt[tr], settings,
                                 torch.Generator().manual_seed(batch_seed), on_epoch=on_epoch)
            members.append(model)
            histories.append(history)
        from discovery.models.lcom.wrapper import LCOMModel

        scalers = {"z_mean": z_mean, "z_std": z_std, "y_mean": y_mean, "y_std": y_std}
        probe = LCOMModel(members, config, {}, scalers, data.cdvae)
        metrics = self._metrics(probe, z, data.comp, data.y, train_idx, val_idx, histories)
        metrics["train_seconds"] = time.perf_counter() - started
        model_file = write_checkpoint(out_dir / "model.pt", {
            "format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": "lcom", "config": config.model_dump(mode="json"),
            "latent_dim": latent_dim, "cond_dim": cond_dim, "members": [m.state_dict() for m in members],
            "log_alphas": [h[-1]["log_alpha"] for h in histories],
            "scalers": {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in scalers.items()}})
        split = np.zeros(n, dtype=bool)
        split[train_idx] = True
        latents_file = out_dir / "latents.npz"
        with atomic_write(latents_file, "wb") as fh:
            np.savez(fh, ids=np.array(data.ids, dtype="U64"), formulas=np.array(data.formulas, dtype="U64"),
                     n_atoms=np.array(data.n_atoms, dtype=np.int64), mu=data.mu, comp=data.comp, y=data.y,
                     train=split)
        cdvae_dir = Path(data.cdvae_dir).resolve()
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "kind": self.name, "preset": config.preset,
            "config": config.model_dump(mode="json"), "seed": int(seed),
            "data": {"path": str(data.path), "sha256": data_sha256(data.path), "n_rows": data.n_rows,
                     "n_structures": n, "n_corrupt": data.n_corrupt, "n_duplicates": data.n_duplicates,
                     "n_skipped": data.n_skipped, "n_train": len(train_idx), "n_val": len(val_idx)},
            "metrics": metrics,
            "files": {"model": {"path": model_file.name, "sha256": file_sha256(model_file)},
                      "latents": {"path": latents_file.name, "sha256": file_sha256(latents_file)}},
            "versions": package_versions(),
            "cdvae": {"dir": str(cdvae_dir), "relative": os.path.relpath(cdvae_dir, out_dir.resolve()),
                      "manifest_sha256": file_sha256(cdvae_dir / "cdvae.json"), "version": data.cdvae.version},
            "history": histories,
        }
        write_manifest(out_dir, self.name, manifest)
        if tracker is not None:
            tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                                step=config.epochs)
        return self.load(out_dir, device)

    @staticmethod
    def _metrics(model: Any, z: np.ndarray, comp: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
                 val_idx: np.ndarray, histories: list[list[dict[str, float]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, idx in (("train", train_idx), ("val", val_idx)):
            if len(idx):
                mean, std = model.predict(z[idx], comp[idx])
                out[f"{name}_mae"] = float(np.mean(np.abs(mean - y[idx])))
                out[f"{name}_spread"] = float(np.mean(std))
        last = [h[-1] for h in histories if h]
        out["final_gap"] = float(np.mean([r["gap"] for r in last]))
        out["final_alpha"] = float(np.mean([r["alpha"] for r in last]))
        out["final_mse"] = float(np.mean([r["mse"] for r in last]))
        if len(val_idx):  # what the optimiser does off the data: predicted drop after opt_steps
            _, preds = model.optimize(z[val_idx[:256]], comp[val_idx[:256]])
            out["opt_predicted_drop"] = float(np.mean(preds[0] - preds[-1]))
        return out

    def load(self, folder: Path, device: str = "cpu", cdvae_dir: Path | None = None) -> Any:
        """Load a model folder with its CD-VAE (the one the manifest names, or ``cdvae_dir``, which
        must hold that same model).

        Raises:
            DataError: missing or damaged manifest or weights, or a CD-VAE folder that is missing or
                holds another model than the one LCOM was trained on (one line naming the file).
        """
        import torch

        from discovery.models.checkpoints import first_line, read_checkpoint
        from discovery.models.lcom.conservative import EnergyMLP
        from discovery.models.lcom.wrapper import LCOMModel

        cpu_only(device)
        folder = Path(folder)
        manifest = read_manifest(folder, self.name, MANIFEST_FORMAT)
        path = folder / f"{self.name}.json"
        try:
            config = LCOMConfig.model_validate(manifest["config"])
            info = manifest["cdvae"]
            files = manifest.get("files") or {}
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: not an LCOM manifest ({first_line(exc)})") from None
        model_file = verify_file(folder, path.name, "model", files.get("model"))
        latents_file = verify_file(folder, path.name, "latents", files.get("latents"))
        cdvae = load_cdvae(cdvae_folder(folder, info, cdvae_dir), device)
        payload = read_checkpoint(model_file, MODEL_FORMAT, MODEL_VERSION, kind="lcom")
        try:
            members = []
            for sd in payload["members"]:
                m = EnergyMLP(int(payload["latent_dim"]), int(payload["cond_dim"]), config.hidden,
                              config.n_hidden_layers, config.negative_slope)
                m.load_state_dict(sd)
                members.append(m)
            scalers = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in payload["scalers"].items()}
            scalers["y_mean"], scalers["y_std"] = float(scalers["y_mean"]), float(scalers["y_std"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise DataError(f"{model_file}: weights do not fit the recorded architecture ({first_line(exc)})") from None
        if int(payload["latent_dim"]) != cdvae.latent_dim:
            raise DataError(f"{model_file}: latent size {payload['latent_dim']} differs from the CD-VAE's "
                            f"{cdvae.latent_dim}")
        try:
            with np.load(latents_file, allow_pickle=False) as f:
                train = f["train"]
                mu, comp, y = f["mu"][train], f["comp"][train], f["y"][train]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{latents_file}: unreadable ({first_line(exc)})") from None
        model = LCOMModel(members, config, manifest, scalers, cdvae, folder, payload.get("log_alphas"))
        model.train_latents = (model.standardise(mu), comp.astype(np.float32), y.astype(np.float64))
        return model

    def describe(self, model: Any) -> str:
        """One line: preset, variant, size, held-out MAE, final gap and multiplier."""
        m = model.manifest.get("metrics", {})
        c = model.config
        variant = f"conservative, tau {c.tau:g}" if c.conservative else "supervised (SL)"
        return (f"LCOM ({c.preset}, {variant}, {c.ensemble_size} member{'s' * (c.ensemble_size > 1)}) on "
                f"{model.manifest['data']['n_train']} crystals: held-out MAE {m.get('val_mae', float('nan')):.3f} "
                f"eV/atom, final gap {m.get('final_gap', float('nan')):.2f} (alpha {m.get('final_alpha', 0):.3g}), "
                f"predicted drop after {c.opt_steps} steps {m.get('opt_predicted_drop', float('nan')):.3f} eV/atom, "
                f"{m.get('train_seconds', 0) / 60:.1f} min; CD-VAE {model.manifest['cdvae']['dir']}")


TRAINER = LCOMTrainer()
