"""A trained ICSG3D model: load it, encode crystals, decode and sample latent vectors.

Loading (`ICSG3DModel.load`) checks the manifest and each checkpoint (present, readable, of the
expected kind and configuration, same sha256 as recorded) and fails with one `DataError` line naming
the file.

Sampling (`ICSG3DModel.sample_random`, `sample_targeted`, `interpolate`) and decoding: latent vectors
are decoded in batches, VAE decoder -> UNet -> the occupancy sigmoid ``>= 0.8`` and, on those voxels
only (`~discovery.models.icsg3d.unet3d.UNet3D.segment`), the species argmax over the non-background classes
(optionally restricted to given elements) -> lattice from the coordinate channels -> recursive watershed -> an orthogonal pymatgen ``Structure``
(`discovery.models.icsg3d.decode`). A sample is *valid* when it decodes to 1..40 sites and
passes `discovery.structures.structural_problem` at 0.5 A (every pair distance, periodic images
included, at least 0.5 A, and a positive volume), the paper's validity check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from discovery.errors import DataError
from discovery.featurize.deciles import decile_index, one_hot
from discovery.lifecycle import changed_file_error, check_device, file_sha256
from discovery.models.icsg3d.presets import ICSG3DConfig

logger = logging.getLogger(__name__)

MODEL_NAME = "icsg3d"
MANIFEST_NAME = f"{MODEL_NAME}.json"
MANIFEST_FORMAT = "discovery.icsg3d.manifest"
MANIFEST_VERSION = 1
#: Checkpoint file of each part, inside the output folder.
FILES: dict[str, str] = {"unet": "unet.pt", "vae": "vae.pt", "heads": "heads.pt"}
#: Voxel threshold on the UNet's occupancy sigmoid (MODELS.md 1.5).
OCCUPANCY_THRESHOLD = 0.8
#: Minimum distance of the validity check. Units: A.
MIN_DISTANCE_A = 0.5
#: Latent vectors decoded per forward pass on the CPU (on CUDA: 4x).
DECODE_BATCH = 16


@dataclass
class Samples:
    """Decoded latent vectors.

    Attributes:
        structures: the decoded crystal per sample, None where nothing could be decoded.
        valid: 1..40 sites and no two atoms closer than 0.5 A (see the module docstring).
        deciles: the condition of each sample (for `interpolate`: the nearest decile of the blend).
        z: the latent vectors. Shapes: (n, latent).
        lattice_abc: cell lengths read from the decoded coordinate channels. Units: A. Shapes: (n, 3).
        base_index: for targeted sampling, the index of the base each sample came from; else -1.
        problems: why each invalid sample is invalid ("" for valid ones).
    """

    structures: list[Any]
    valid: np.ndarray
    deciles: np.ndarray
    z: np.ndarray
    lattice_abc: np.ndarray
    base_index: np.ndarray
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def valid_structures(self) -> list[Any]:
        """The valid structures, in sample order."""
        return [s for s, ok in zip(self.structures, self.valid, strict=True) if ok]


def validity_problem(structure) -> str | None:
    """Why a decoded structure is not a valid sample, or None (see `Samples.valid`)."""
    from discovery.featurize.voxels import MAX_SITES
    from discovery.structures import structural_problem

    if structure is None:
        return "nothing decoded"
    if len(structure) > MAX_SITES:
        return f"{len(structure)} sites (at most {MAX_SITES})"
    return structural_problem(structure, MIN_DISTANCE_A)


def _species_numbers(species: Sequence[str | int] | None, n_classes: int) -> list[int] | None:
    if species is None:
        return None
    from pymatgen.core.periodic_table import Element

    out = []
    for s in species:
        z = int(s) if isinstance(s, int | np.integer) else Element(str(s)).Z
        if not 1 <= z < n_classes:
            raise ValueError(f"species {s!r} (Z={z}) is outside the model's classes 1..{n_classes - 1}")
        out.append(z)
    if not out:
        raise ValueError("allowed species: empty list")
    return sorted(set(out))


class ICSG3DModel:
    """A trained ICSG3D model: frozen UNet, Cond-DFC-VAE and CGCNN heads, with its manifest.

    Build it with `train_icsg3d` or `load`.

    Args:
        config: the training config.
        unet, vae: the trained networks.
        heads: the `~discovery.models.icsg3d.heads.PropertyHeads`.
        manifest: the manifest dict (decile edges, split, bases, metrics).
        out_dir: the folder it lives in.
        device: "cpu" or "cuda".

    Attributes:
        decile_edges: inner decile edges of the condition property. Shapes: (n_deciles - 1,).
        version: first 12 hex digits of the sha256 of the manifest.
    """

    def __init__(self, config: ICSG3DConfig, unet, vae, heads, manifest: dict[str, Any],
                 out_dir: Path | None = None, device: str = "cpu"):
        import torch

        from discovery.featurize.voxels import VoxelConfig
        from discovery.models.icsg3d.training import freeze_

        self.config = config
        self.device = torch.device(device)
        self.unet = freeze_(unet.to(self.device))
        self.vae = vae.to(self.device).eval()
        self.heads = heads
        self.manifest = manifest
        self.out_dir = out_dir
        self.voxel_config = VoxelConfig(**manifest.get("voxel", {"d": config.grid}))
        self.condition_property: str = manifest["condition_property"]
        self.decile_edges = np.asarray(manifest["decile_edges"], dtype=np.float64)
        text = json.dumps(manifest, sort_keys=True).encode()
        self.version = hashlib.sha256(text).hexdigest()[:12]

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, out_dir: str | Path, device: str = "cpu") -> ICSG3DModel:
        """Load a model written by `train_icsg3d`.

        Raises:
            DataError: one line naming the file when the manifest or a checkpoint is missing, not
                readable, of another format, written for another configuration, or not the file the
                manifest recorded (sha256).
            ConfigError: CUDA requested without a GPU.
        """
        from pydantic import ValidationError

        from discovery.featurize.voxels import VoxelConfig
        from discovery.models.icsg3d.heads import PropertyHeads
        from discovery.models.icsg3d.training import load_checkpoint, unet_architecture, vae_architecture

        device = check_device(device)
        folder = Path(out_dir)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"{path}: ICSG3D manifest not found (train one with `discovery train icsg3d`)")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path}: not a readable ICSG3D manifest ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise DataError(f"{path}: not an ICSG3D manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
        if manifest.get("version") != MANIFEST_VERSION:
            raise DataError(f"{path}: manifest version {manifest.get('version')!r}, expected {MANIFEST_VERSION}")
        try:
            config = ICSG3DConfig.model_validate(manifest["config"])
            voxel = VoxelConfig.model_validate(manifest.get("voxel", {"d": config.grid}))
            edges = np.asarray(manifest["decile_edges"], dtype=np.float64)
            properties = [str(p) for p in manifest["properties"]]
            files = {part: manifest["files"][part] for part in FILES}
            condition = manifest["condition_property"]
            if not isinstance(condition, str) or not properties or properties[0] != condition:
                raise ValueError("condition_property must be the first of properties")
            if voxel.d != config.grid:
                raise ValueError(f"voxel grid {voxel.d} differs from config grid {config.grid}")
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DataError(f"{path}: config.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: damaged manifest ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})") from None
        if edges.shape != (config.n_deciles - 1,) or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
            raise DataError(f"{path}: decile_edges must be {config.n_deciles - 1} finite, non-decreasing numbers")

        def checked(part: str) -> Path:
            entry = files[part]
            file = folder / str(entry.get("path", FILES[part]) if isinstance(entry, dict) else FILES[part])
            if not file.is_file():
                raise DataError(f"{file}: {part} checkpoint not found (listed in {path.name})")
            return file

        def same_file(part: str, file: Path) -> None:
            want = files[part].get("sha256") if isinstance(files[part], dict) else None
            if want and file_sha256(file) != want:
                raise changed_file_error(file, path.name)

        unet_file = checked("unet")
        unet = load_checkpoint(unet_file, "unet", unet_architecture(config))["model"]
        same_file("unet", unet_file)
        vae_file = checked("vae")
        vae = load_checkpoint(vae_file, "vae", vae_architecture(config))["model"]
        same_file("vae", vae_file)
        heads_file = checked("heads")
        heads = PropertyHeads.load(heads_file, config.cgcnn, properties, device=device)
        same_file("heads", heads_file)
        return cls(config, unet, vae, heads, manifest, out_dir=folder, device=device)

    # ------------------------------------------------------------------ conditions and encoding

    @property
    def n_deciles(self) -> int:
        return self.config.n_deciles

    def decile_of(self, values: Sequence[float] | float) -> np.ndarray:
        """Decile index of each label value (training edges). Shapes: (n,)."""
        return decile_index(values, self.decile_edges)

    def predict_properties(self, structures: Sequence) -> dict[str, np.ndarray]:
        """CGCNN predictions of every head property (gap rule applied)."""
        return self.heads.predict(list(structures))

    def featurize(self, structures: Sequence) -> tuple[np.ndarray, list[Any], np.ndarray]:
        """Voxel inputs of ``structures`` in the model's grid.

        Returns:
            ``(x, prepared, ok)``: maps of the structures that could be voxelised, their prepared
            (orthogonal, shifted) structures, and a boolean mask over ``structures``.
            Shapes: x (n_ok, 4, d, d, d); ok (n,).
        """
        samples, prepared, ok = self._voxelise(structures)
        d = self.voxel_config.d
        x = np.stack([s.x for s in samples]) if samples else np.zeros((0, 4, d, d, d), np.float32)
        return x, prepared, ok

    def _voxelise(self, structures: Sequence) -> tuple[list[Any], list[Any], np.ndarray]:
        from discovery.featurize.voxels import featurize, prepare_structure

        samples, prepared, ok = [], [], np.zeros(len(structures), dtype=bool)
        for i, s in enumerate(structures):
            try:
                p = prepare_structure(s)
                sample = featurize(p, self.voxel_config)
            except DataError as exc:
                logger.debug("icsg3d: cannot voxelise %s (%s)", getattr(s, "formula", "?"), exc)
                continue
            samples.append(sample)
            prepared.append(p)
            ok[i] = True
        return samples, prepared, ok

    def _deciles_for(self, structures: Sequence, deciles: Sequence[int] | int | None) -> np.ndarray:
        if deciles is None:
            pred = self.heads.predict(list(structures), gap_rule=False)[self.condition_property]
            if not np.all(np.isfinite(pred)):
                raise DataError("icsg3d: cannot predict the condition of a structure without a crystal graph; "
                                "give its decile")
            return self.decile_of(pred)
        out = np.broadcast_to(np.asarray(deciles, dtype=np.int64), (len(structures),)).copy()
        if out.size and (out.min() < 0 or out.max() >= self.n_deciles):
            raise ValueError(f"decile must be in 0..{self.n_deciles - 1}")
        return out

    def encode_maps(self, x: np.ndarray, deciles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior ``(mu, logvar)`` of voxel maps. Shapes: (n, latent) each."""
        import torch

        mus, logvars = [], []
        with torch.inference_mode():
            for start in range(0, len(x), self._batch):
                xb = torch.as_tensor(x[start:start + self._batch], device=self.device)
                cb = torch.as_tensor(one_hot(deciles[start:start + self._batch], self.n_deciles),
                                     device=self.device)
                mu, logvar = self.vae.encode(xb, cb)
                mus.append(mu.float().cpu().numpy())
                logvars.append(logvar.float().cpu().numpy())
        latent = self.config.vae.latent
        return (np.concatenate(mus) if mus else np.zeros((0, latent), np.float32),
                np.concatenate(logvars) if logvars else np.zeros((0, latent), np.float32))

    def encode(self, structures: Sequence, deciles: Sequence[int] | int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior mean and log-variance of each structure under its condition.

        Args:
            structures: orthogonal crystals (pymatgen ``Structure``).
            deciles: condition per structure (or one for all); None: the decile of the condition
                property predicted by the CGCNN head.

        Returns:
            ``(mu, logvar, deciles)``. Shapes: (n, latent), (n, latent), (n,).

        Raises:
            DataError: a structure cannot be voxelised (one line naming its formula).
        """
        structures = list(structures)
        x, _, ok = self.featurize(structures)
        if not ok.all():
            bad = structures[int(np.flatnonzero(~ok)[0])]
            raise DataError(f"{bad.composition.reduced_formula}: cannot be voxelised (ICSG3D needs an orthogonal "
                            "cell with at most 40 sites)")
        dec = self._deciles_for(structures, deciles)
        mu, logvar = self.encode_maps(x, dec)
        return mu, logvar, dec

    # ------------------------------------------------------------------ decoding

    @property
    def _batch(self) -> int:
        return DECODE_BATCH * (4 if self.device.type == "cuda" else 1)

    def decode(self, z: np.ndarray, cond: np.ndarray, allowed_species: Sequence[str | int] | None = None,
               base_index: np.ndarray | None = None) -> Samples:
        """Decode latent vectors under (one-hot or blended) conditions, in batches.

        Args:
            z: latent vectors. Shapes: (n, latent).
            cond: condition rows. Shapes: (n, n_deciles).
            allowed_species: restrict the species argmax to these elements (symbols or Z);
                None: every non-background class.
            base_index: recorded in the result (targeted sampling).

        Returns:
            `Samples`.
        """
        import torch

        from discovery.models.icsg3d.decode import decode_structure, lattice_from_coords

        z = np.asarray(z, dtype=np.float32).reshape(-1, self.config.vae.latent)
        cond = np.asarray(cond, dtype=np.float32).reshape(len(z), self.n_deciles)
        n_classes = self.voxel_config.n_classes
        allowed = _species_numbers(allowed_species, n_classes)
        mask = torch.full((n_classes,), float("-inf"), device=self.device)
        mask[allowed if allowed is not None else slice(1, None)] = 0.0
        structures: list[Any] = []
        lattices = np.zeros((len(z), 3))
        with torch.inference_mode():
            for start in range(0, len(z), self._batch):
                zb = torch.as_tensor(z[start:start + self._batch], device=self.device)
                cb = torch.as_tensor(cond[start:start + self._batch], device=self.device)
                x_hat = self.vae.decode(zb, cb)
                labels, occ = self.unet.segment(x_hat, OCCUPANCY_THRESHOLD, mask)
                x_np = x_hat.float().cpu().numpy()
                labels_np = labels.cpu().numpy()
                occ_np = occ.float().cpu().numpy()
                for j in range(len(x_np)):
                    lattices[start + j] = lattice_from_coords(x_np[j, 1:], self.voxel_config)
                    try:
                        s = decode_structure(x_np[j], labels_np[j], occ_np[j], self.voxel_config,
                                             lattice_abc=lattices[start + j], threshold=OCCUPANCY_THRESHOLD)
                    except (ValueError, np.linalg.LinAlgError) as exc:
                        logger.debug("icsg3d: decoding failed (%s)", exc)
                        s = None
                    structures.append(s)
        problems = [validity_problem(s) or "" for s in structures]
        valid = np.array([p == "" for p in problems], dtype=bool)
        dec = cond.argmax(axis=1).astype(np.int64) if len(cond) else np.zeros(0, np.int64)
        base = np.full(len(z), -1, np.int64) if base_index is None else np.asarray(base_index, np.int64)
        return Samples(structures=structures, valid=valid, deciles=dec, z=z, lattice_abc=lattices,
                       base_index=base, problems=problems)

    # ------------------------------------------------------------------ sampling modes

    def sample_random(self, n: int, decile: int | Sequence[int] | None, rng: np.random.Generator,
                      allowed_species: Sequence[str | int] | None = None) -> Samples:
        """``n`` samples of z ~ N(0, I) under a decile condition.

        Args:
            n: number of samples.
            decile: the condition (one for all, or one per sample); None spreads the samples evenly
                over the deciles (the paper's 100 per decile for n = 1,000).
            rng: source of z.
            allowed_species: see `decode`.
        """
        dec = (np.arange(n) % self.n_deciles if decile is None
               else np.broadcast_to(np.asarray(decile, dtype=np.int64), (n,)).copy())
        if n and (dec.min() < 0 or dec.max() >= self.n_deciles):
            raise ValueError(f"decile must be in 0..{self.n_deciles - 1}")
        z = rng.standard_normal((n, self.config.vae.latent)).astype(np.float32)
        return self.decode(z, one_hot(dec, self.n_deciles), allowed_species)

    def sample_around(self, bases: Sequence, n_per_base: int, rng: np.random.Generator, scale: float = 0.5,
                      deciles: Sequence[int] | int | None = None,
                      allowed_species: Sequence[str | int] | None = None) -> Samples:
        """``n_per_base`` samples of z ~ N(mu_base, scale^2 I) around each base, under its decile.

        Args:
            bases: orthogonal base crystals.
            n_per_base: samples per base.
            rng: source of the noise.
            scale: standard deviation around the base's posterior mean (the paper's ``--var 0.5``).
            deciles: each base's condition (its own label's decile); None: predicted by the CGCNN.
            allowed_species: see `decode`.

        Raises:
            DataError: a base cannot be voxelised.
        """
        mu, _, dec = self.encode(list(bases), deciles)
        z = np.repeat(mu, n_per_base, axis=0)
        z = (z + scale * rng.standard_normal(z.shape)).astype(np.float32)
        dec_rep = np.repeat(dec, n_per_base)
        return self.decode(z, one_hot(dec_rep, self.n_deciles), allowed_species,
                           base_index=np.repeat(np.arange(len(mu)), n_per_base))

    def sample_targeted(self, base_structure, n: int, rng: np.random.Generator, scale: float = 0.5,
                        decile: int | None = None,
                        allowed_species: Sequence[str | int] | None = None) -> Samples:
        """``n`` samples around one base compound (MODELS.md 1.5 steps 1-2), see `sample_around`."""
        return self.sample_around([base_structure], n, rng, scale, None if decile is None else [decile],
                                  allowed_species)

    def interpolate(self, structure_a, structure_b, n_steps: int, deciles: Sequence[int] | None = None,
                    allowed_species: Sequence[str | int] | None = None) -> Samples:
        """Decode ``n_steps`` points on the line between the posterior means of two crystals.

        The latent vector and the condition are blended linearly with the same weight
        ``t = 0, ..., 1`` (the decoder takes the blended, soft condition); `Samples.deciles` holds
        the nearer end's decile.

        Args:
            structure_a, structure_b: orthogonal crystals.
            n_steps: points including both ends (>= 2).
            deciles: the two conditions; None: predicted by the CGCNN.
        """
        if n_steps < 2:
            raise ValueError("interpolate: n_steps must be >= 2")
        mu, _, dec = self.encode([structure_a, structure_b], deciles)
        t = np.linspace(0.0, 1.0, n_steps)[:, None]
        z = ((1 - t) * mu[0] + t * mu[1]).astype(np.float32)
        c = one_hot(dec, self.n_deciles)
        cond = ((1 - t) * c[0] + t * c[1]).astype(np.float32)
        return self.decode(z, cond, allowed_species)

    # ------------------------------------------------------------------ fine-tuning

    def fine_tune_vae(self, structures: Sequence, deciles: Sequence[int], epochs: int, seed: int = 0,
                      batch_size: int | None = None) -> list[float]:
        """Continue training the VAE on a few structures (e.g. confirmed hits), same loss.

        The frozen UNet stays the perceptual model; Adam at ``config.vae.lr``; structures that
        cannot be voxelised are skipped. Batch-norm layers stay in eval mode: a handful of hits
        would otherwise replace the statistics calibrated on the training maps.

        Returns:
            The mean training loss of every epoch (empty when nothing could be voxelised).
        """
        import torch

        from discovery.models.icsg3d.cond_dfc_vae import vae_loss

        x, _, ok = self.featurize(list(structures))
        dec = np.asarray(deciles, dtype=np.int64)[ok]
        if len(x) == 0 or epochs <= 0:
            return []
        cfg = self.config.vae
        bs = batch_size or cfg.batch_size
        rng = np.random.default_rng(seed)
        noise = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**31)))
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=cfg.lr, eps=1e-7)
        cond = one_hot(dec, self.n_deciles)
        losses = []
        self.vae.train()
        for module in self.vae.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        try:
            for _ in range(epochs):
                total, seen = 0.0, 0
                for chunk in np.array_split(rng.permutation(len(x)), max(1, math.ceil(len(x) / bs))):
                    xb = torch.as_tensor(x[chunk], device=self.device)
                    cb = torch.as_tensor(cond[chunk], device=self.device)
                    x_hat, mu, logvar = self.vae(xb, cb, rng_generator=noise)
                    loss = vae_loss(xb, x_hat, mu, logvar, self.unet.features, cfg.alpha, cfg.beta)["total"]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.item()) * len(chunk)
                    seen += len(chunk)
                losses.append(total / seen)
        finally:
            self.vae.eval()
        return losses


