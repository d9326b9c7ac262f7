"""ICSG3D end to end: train UNet, Cond-DFC-VAE and CGCNN heads from a CDVAE CSV, load, sample, evaluate.

Training (`train_icsg3d`), in this order (MODELS.md 1.1-1.5; sizes from `ICSG3DConfig`):

1. **Data.** `load_training_data` reads the CDVAE CSV (`discovery.data.loaders.load_cdvae_csv`) and
   keeps the structures with a finite ``config.condition_property`` label (``heat_ref`` for perov_5,
   ``formation_energy_per_atom`` for Materials Project data). Every check of the input runs before
   anything is written.
2. **Split.** A seeded 80/20 split of the structures (`~discovery.models.icsg3d_training.split_indices`),
   made before augmentation, so rotated copies always stay with their parent. The 20 % are held out
   from every network (the benchmark evaluates on them).
3. **Voxels.** At most ``max_structures`` training structures (a seeded subset) are featurised
   (`discovery.featurize.voxels.load_or_featurize`, cached under ``out_dir/cache``, keyed by candidate
   ids and grid settings); structures that cannot be voxelised (non-orthogonal, > 40 sites) are
   skipped and counted. Each structure gives ``n_rotations`` maps: the original and ``n - 1`` random
   90-degree rotations (`~discovery.featurize.voxels.rotate90`). Species and occupancy are stored as
   uint8; sets above `MEMMAP_THRESHOLD_BYTES` go to memory-mapped files under ``out_dir/cache``.
4. **Condition.** Decile edges are ``np.quantile`` of the training labels at 0.1, ..., 0.9
   (``n_deciles`` bins); a label's decile is the bin ``[e_{k-1}, e_k)`` it falls in, as in
   `discovery.generators.conditions.DecileConditions` (the released code's ``pd.qcut`` closes bins
   on the right instead, which differs only for a label equal to an edge). One-hot, ``n_deciles``
   wide.
5. **Networks.** UNet (`~discovery.models.icsg3d_training.train_unet`), then the VAE with the frozen
   UNet as perceptual model (`train_vae`; both use the same validation maps, grouped by parent), then
   the CGCNN heads on every training structure (`discovery.models.icsg3d_heads.PropertyHeads`).
6. **Files** in ``out_dir``: ``unet.pt``, ``vae.pt``, ``heads.pt`` (weights-only checkpoints, each
   written atomically) and last the manifest ``icsg3d.json`` (config, voxel settings, decile edges,
   split ids, training labels, a few base structures per decile, metrics, sha256 of every file), also
   atomic, so a crashed training leaves no manifest. Parameters, per-epoch curves (``unet/...``,
   ``vae/...``, ``heads/<property>/...``), final metrics and the four files go to the tracker.

Loading (`ICSG3DModel.load`) checks the manifest and each checkpoint (present, readable, of the
expected kind and configuration, same sha256 as recorded) and fails with one `DataError` line naming
the file.

Sampling (`ICSG3DModel.sample_random`, `sample_targeted`, `interpolate`) and decoding: latent vectors
are decoded in batches, VAE decoder -> UNet -> the occupancy sigmoid ``>= 0.8`` and, on those voxels
only (`~discovery.models.unet3d.UNet3D.segment`), the species argmax over the non-background classes
(optionally restricted to given elements) -> lattice from the coordinate channels -> recursive watershed -> an orthogonal pymatgen ``Structure``
(`discovery.generators.icsg3d_decode`). A sample is *valid* when it decodes to 1..40 sites and
passes `discovery.structures.structural_problem` at 0.5 A (every pair distance, periodic images
included, at least 0.5 A, and a positive volume), the paper's validity check.

`evaluate_reconstruction` is MODELS.md 1.6: lattice MAE per axis, mean site EMD, mean
``|N_true - N_pred|`` and the UNet's non-zero recall, on structures encoded with their own decile
(z = mu, the posterior mean) and decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from discovery.errors import ConfigError, DataError
from discovery.models.icsg3d_presets import KNOWN_PROPERTIES, ICSG3DConfig
from discovery.records import Candidate

logger = logging.getLogger(__name__)

MANIFEST_NAME = "icsg3d.json"
MANIFEST_FORMAT = "discovery.icsg3d.manifest"
MANIFEST_VERSION = 1
#: Checkpoint file of each part, inside the output folder.
FILES: dict[str, str] = {"unet": "unet.pt", "vae": "vae.pt", "heads": "heads.pt"}
#: Share of the structures held out from training.
TEST_FRACTION = 0.2
#: Voxel threshold on the UNet's occupancy sigmoid (MODELS.md 1.5).
OCCUPANCY_THRESHOLD = 0.8
#: Minimum distance of the validity check. Units: A.
MIN_DISTANCE_A = 0.5
#: Base structures per decile stored in the manifest (targeted sampling before any hit).
BASES_PER_DECILE = 4
#: Augmented training sets larger than this are memory-mapped to disk. Units: bytes.
MEMMAP_THRESHOLD_BYTES = 4 * 1024**3
#: Latent vectors decoded per forward pass on the CPU (on CUDA: 4x).
DECODE_BATCH = 16

#: ``progress(stage, done, total, info)``; stages "load", "featurise", "unet", "vae", "heads".
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


# ----------------------------------------------------------------------------- data


@dataclass
class ICSG3DData:
    """Labelled structures of one CDVAE CSV, ready for `train_icsg3d`.

    Attributes:
        source: the CSV file.
        candidates: structures with a finite condition label, in file order.
        labels: property -> (n,) float64 labels aligned with ``candidates`` (NaN where missing).
        properties: the head properties, the condition property first.
        condition_property: the label that conditions the VAE.
        n_rows, n_corrupt, n_unlabelled: rows read, unreadable rows, rows without a condition label.
        sha256: digest of the file.
        load_s: seconds spent reading and checking it.
    """

    source: Path
    candidates: list[Candidate]
    labels: dict[str, np.ndarray]
    properties: list[str]
    condition_property: str
    n_rows: int = 0
    n_corrupt: int = 0
    n_unlabelled: int = 0
    sha256: str = ""
    load_s: float = 0.0

    def __len__(self) -> int:
        return len(self.candidates)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_training_data(data_path: str | Path, config: ICSG3DConfig, max_rows: int | None = None) -> ICSG3DData:
    """Read a CDVAE CSV and check it can train ``config``.

    Args:
        data_path: the CSV file (CIF strings in column ``cif``, numeric property columns).
        config: the ICSG3D config (``condition_property``, ``head_properties``).
        max_rows: read at most this many rows.

    Returns:
        The `ICSG3DData`.

    Raises:
        DataError: one line naming the file: missing, not a CDVAE CSV, no readable structure, no
            condition column, a requested head property missing, or fewer than 2 labelled structures.
    """
    from discovery.data.loaders import load_cdvae_csv

    t0 = time.perf_counter()
    path = Path(data_path)
    loaded = load_cdvae_csv(path, max_rows=max_rows)
    if not loaded.candidates:
        detail = f" (first: {loaded.errors[0]})" if loaded.errors else ""
        raise DataError(f"{path}: no readable structure in {loaded.n_rows} rows{detail}")
    columns: list[str] = []
    for row in loaded.labels.values():
        for key in row:
            if key not in columns:
                columns.append(key)
    prop = config.condition_property
    if prop not in columns:
        raise DataError(f"{path}: no numeric column {prop!r} for condition_property "
                        f"(numeric columns: {', '.join(columns) or 'none'})")
    if config.head_properties is not None:
        missing = [p for p in config.head_properties if p not in columns]
        if missing:
            raise DataError(f"{path}: head_properties {missing} are not numeric columns "
                            f"(numeric columns: {', '.join(columns)})")
        properties = [prop] + [p for p in config.head_properties if p != prop]
    else:
        properties = [prop] + [p for p in KNOWN_PROPERTIES if p in columns and p != prop]
    keep = [c for c in loaded.candidates if math.isfinite(loaded.labels[c.id].get(prop, math.nan))]
    if len(keep) < 2:
        raise DataError(f"{path}: {len(keep)} structures have a {prop!r} label; need at least 2")
    labels = {p: np.array([loaded.labels[c.id].get(p, math.nan) for c in keep], dtype=np.float64)
              for p in properties}
    return ICSG3DData(source=path, candidates=keep, labels=labels, properties=properties,
                      condition_property=prop, n_rows=loaded.n_rows, n_corrupt=loaded.n_corrupt,
                      n_unlabelled=len(loaded.candidates) - len(keep), sha256=file_sha256(path),
                      load_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- deciles


def decile_edges(values: Sequence[float], n_deciles: int = 10) -> np.ndarray:
    """Inner quantile edges of ``values``: ``np.quantile`` at 1/n, ..., (n-1)/n.

    Shapes: (n_deciles - 1,).

    Example:
        >>> decile_edges(np.arange(11.0), 2).tolist()
        [5.0]
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("decile_edges: no finite values")
    return np.quantile(v, np.arange(1, n_deciles) / n_deciles)


def decile_index(values: Sequence[float] | float, edges: np.ndarray) -> np.ndarray:
    """Decile of each value: bins ``[e_{k-1}, e_k)`` (`DecileConditions.bin`), below e_0 in bin 0.

    Example:
        >>> decile_index([0.0, 4.9, 5.0, 99.0], np.array([5.0])).tolist()
        [0, 0, 1, 1]
    """
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(v)):
        raise ValueError("decile_index: values must be finite")
    return np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right").astype(np.int64)


def one_hot(index: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """float32 one-hot rows. Shapes: (len(index), n)."""
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"one_hot: index outside 0..{n - 1}")
    return np.eye(n, dtype=np.float32)[idx]


# ----------------------------------------------------------------------------- helpers


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, allow_nan=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_number(x: Any) -> Any:
    """Floats for JSON: NaN and infinities become None."""
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {str(k): _json_number(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_number(v) for v in x]
    return x


def check_device(device: str) -> str:
    """``device`` when torch can use it; `ConfigError` for CUDA without a GPU."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was requested but torch sees no CUDA device")
    return device


def _augment(arrays: Mapping[str, np.ndarray], deciles: np.ndarray, n_deciles: int, n_rotations: int,
             rng: np.random.Generator, cache_dir: Path, key: str) -> dict[str, np.ndarray]:
    """The training arrays: ``n_rotations`` maps per structure, condition rows and parent groups."""
    from discovery.featurize.voxels import rotate90

    n = len(arrays["x"])
    total = n * n_rotations
    d = arrays["x"].shape[-1]
    shapes = {"x": ((total, 4, d, d, d), np.float32), "species": ((total, d, d, d), np.uint8),
              "occupancy": ((total, d, d, d), np.uint8)}
    nbytes = sum(int(np.prod(s)) * np.dtype(t).itemsize for s, t in shapes.values())
    if nbytes > MEMMAP_THRESHOLD_BYTES:
        folder = cache_dir / f"augmented-{key[:16]}"
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("training maps take %.1f GiB: memory-mapped under %s", nbytes / 1024**3, folder)
        out = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=t, shape=s)
               for name, (s, t) in shapes.items()}
    else:
        out = {name: np.empty(s, dtype=t) for name, (s, t) in shapes.items()}
    row = 0
    for i in range(n):
        sample = {"x": arrays["x"][i], "species": arrays["species"][i], "occupancy": arrays["occupancy"][i],
                  "lattice": arrays["lattice"][i]}
        for r in range(n_rotations):
            s = sample if r == 0 else rotate90(sample, rng)
            out["x"][row] = s["x"]
            out["species"][row] = s["species"]
            out["occupancy"][row] = s["occupancy"]
            row += 1
    out["cond"] = one_hot(np.repeat(deciles, n_rotations), n_deciles)
    out["groups"] = np.repeat(np.arange(n), n_rotations)
    return out


class _Timer:
    """Wall time per stage: ``with timer("unet"): ...`` adds to ``timer.wall["unet"]``."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0


# ----------------------------------------------------------------------------- training


def train_icsg3d(data_path: str | Path | ICSG3DData, config: ICSG3DConfig, out_dir: str | Path,
                 tracker: Any = None, progress: ProgressFn | None = None, seed: int = 0,
                 device: str = "cpu") -> ICSG3DModel:
    """Train UNet, VAE and CGCNN heads on a CDVAE CSV and write them to ``out_dir``.

    See the module docstring for the steps and files.

    Args:
        data_path: the CSV, or data already read with `load_training_data` (the CLI reads it first
            so that bad input fails before anything is written).
        config: sizes and schedules (`ICSG3DConfig`).
        out_dir: output folder (created); existing files of an earlier run are replaced.
        tracker: a `discovery.protocols.Tracker` (params, per-epoch metrics, artifacts); None: none.
        progress: ``progress(stage, done, total, info)`` (see `ProgressFn`).
        seed: the only source of randomness (split, subset, rotations, initialisation, shuffling).
        device: "cpu" or "cuda".

    Returns:
        The trained `ICSG3DModel` (eval mode, on ``device``).

    Raises:
        DataError: the data cannot train the model (see `load_training_data`; also when no training
            structure can be voxelised).
        ConfigError: CUDA requested without a GPU.
    """
    from discovery.featurize.voxels import VoxelConfig, load_or_featurize
    from discovery.models.icsg3d_heads import PropertyHeads
    from discovery.models.icsg3d_training import (save_checkpoint, split_indices, train_unet, train_vae,
                                                  unet_architecture, vae_architecture)
    from discovery.tracking.mlflow_tracker import NullTracker

    t_start = time.perf_counter()
    timer = _Timer()
    device = check_device(device)
    tracker = tracker if tracker is not None else NullTracker()

    def report(stage: str, done: int, total: int, info: dict[str, Any] | None = None) -> None:
        if progress is not None:
            progress(stage, done, total, dict(info or {}))

    report("load", 0, 1)
    if isinstance(data_path, ICSG3DData):
        data = data_path
        t_start -= data.load_s  # read by the caller beforehand: still part of the training time
    else:
        data = load_training_data(data_path, config)
    timer.wall["load"] = data.load_s
    report("load", 1, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / MANIFEST_NAME
    stale.unlink(missing_ok=True)  # the manifest is the last file written: none until this run ends

    ss = np.random.SeedSequence(seed)
    split_ss, subset_ss, rot_ss, val_ss, unet_ss, vae_ss, heads_ss = ss.spawn(7)
    n = len(data)
    cond = data.condition_property
    train_idx, test_idx = split_indices(n, TEST_FRACTION, split_ss)
    y_train = data.labels[cond][train_idx]
    edges = decile_edges(y_train, config.n_deciles)
    deciles_all = decile_index(data.labels[cond], edges)
    voxel_cfg = VoxelConfig(d=config.grid)
    subset = np.random.default_rng(subset_ss).permutation(train_idx)
    if config.max_structures is not None:
        subset = subset[:config.max_structures]
    subset = np.sort(subset)

    from discovery.config import flatten

    tracker.log_params({**flatten(config.model_dump(mode="json")), "seed": seed, "device": device,
                        "data": str(data.source), "n_structures": n, "n_train": len(train_idx),
                        "n_test": len(test_idx), "n_voxel_requested": len(subset)})
    logger.info("icsg3d: %d structures (%d train, %d held out); UNet/VAE on %d, %d copies each; "
                "condition %s deciles %s", n, len(train_idx), len(test_idx), len(subset), config.n_rotations,
                cond, np.round(edges, 4).tolist())

    # voxels -------------------------------------------------------------------------------------
    with timer("featurise"):
        cands = [data.candidates[i] for i in subset]
        feats = load_or_featurize([c.pmg for c in cands], [c.id for c in cands], voxel_cfg, out / "cache",
                                  progress=lambda done, total: report("featurise", done, total),
                                  on_error="skip")
        report("featurise", len(cands), len(cands))
        row_of = {c.id: i for i, c in zip(subset, cands)}
        kept = np.array([row_of[str(i)] for i in feats["ids"]], dtype=np.int64)
        if kept.size == 0:
            raise DataError(f"{data.source}: none of the {len(subset)} training structures can be voxelised "
                            "(ICSG3D needs orthogonal cells with at most 40 sites)")
        key = hashlib.sha256(("|".join(map(str, feats["ids"])) + f"|{config.n_rotations}|{seed}").encode()
                             ).hexdigest()
        arrays = _augment(feats, deciles_all[kept], config.n_deciles, config.n_rotations,
                          np.random.default_rng(rot_ss), out / "cache", key)
        del feats
    n_maps = len(arrays["x"])
    logger.info("icsg3d: %d of %d structures voxelised -> %d training maps", kept.size, len(subset), n_maps)

    def stage_progress(stage: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
        report(stage, epoch, total, metrics)
        tracker.log_metrics({f"{stage}/{k}": v for k, v in metrics.items()
                             if k != "epoch" and isinstance(v, int | float) and math.isfinite(v)}, step=epoch)

    # UNet, then VAE on the same validation maps --------------------------------------------------
    unet_split = split_indices(n_maps, config.unet.val_fraction, val_ss, arrays["groups"])
    vae_split = (unet_split if config.vae.val_fraction == config.unet.val_fraction
                 else split_indices(n_maps, config.vae.val_fraction, val_ss, arrays["groups"]))
    with timer("unet"):
        report("unet", 0, config.unet.epochs)
        unet, unet_hist = train_unet(arrays, config, device, progress=stage_progress, seed=unet_ss,
                                     split=unet_split)
        save_checkpoint(out / FILES["unet"], "unet", unet_architecture(config), unet.state_dict(),
                        {"history": unet_hist})
    with timer("vae"):
        report("vae", 0, config.vae.epochs)
        vae, vae_hist = train_vae(arrays, unet, config, device, progress=stage_progress, seed=vae_ss,
                                  split=vae_split)
        save_checkpoint(out / FILES["vae"], "vae", vae_architecture(config), vae.state_dict(),
                        {"history": vae_hist})
    memmapped = isinstance(arrays["x"], np.memmap)
    del arrays
    if memmapped:
        shutil.rmtree(out / "cache" / f"augmented-{key[:16]}", ignore_errors=True)

    # CGCNN heads on every training structure ----------------------------------------------------
    with timer("heads"):
        heads = PropertyHeads(config.cgcnn, data.properties, device=device)
        report("heads", 0, config.cgcnn.epochs * len(heads.properties))
        train_structures = [data.candidates[i].pmg for i in train_idx]
        heads.fit(train_structures, {p: data.labels[p][train_idx] for p in heads.properties},
                  seed=heads_ss, progress=report, log_metrics=tracker.log_metrics)
        heads.save(out / FILES["heads"])

    # manifest ------------------------------------------------------------------------------------
    def best(history: list[dict[str, float]]) -> dict[str, float]:
        key_ = "val_loss" if "val_loss" in history[0] else "train_loss"
        return min(history, key=lambda e: e[key_])

    rng_bases = np.random.default_rng(0)
    bases = []
    for k in range(config.n_deciles):
        pool = kept[deciles_all[kept] == k]
        for i in rng_bases.permutation(pool)[:BASES_PER_DECILE]:
            c = data.candidates[int(i)]
            bases.append({"id": c.id, "decile": k, "label": float(data.labels[cond][i]), "structure": c.structure})
    timer.wall["total"] = time.perf_counter() - t_start
    metrics = {"unet": best(unet_hist), "vae": best(vae_hist), "heads": heads.metrics,
               "wall_s": dict(timer.wall), "n_maps": n_maps, "n_voxel_structures": int(kept.size)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "config": config.model_dump(mode="json"),
        "voxel": voxel_cfg.model_dump(mode="json"),
        "condition_property": cond,
        "properties": heads.properties,
        "decile_edges": [float(e) for e in edges],
        "seed": seed,
        "data": {"path": str(Path(data.source).resolve()), "sha256": data.sha256, "n_rows": data.n_rows,
                 "n_corrupt": data.n_corrupt, "n_unlabelled": data.n_unlabelled, "n_structures": n},
        "split": {"test_fraction": TEST_FRACTION,
                  "train_ids": [data.candidates[i].id for i in train_idx],
                  "test_ids": [data.candidates[i].id for i in test_idx],
                  "voxel_ids": [data.candidates[i].id for i in kept]},
        "train_labels": [float(v) for v in y_train],
        "bases": bases,
        "metrics": _json_number(metrics),
        "files": {part: {"path": name, "sha256": file_sha256(out / name)} for part, name in FILES.items()},
    }
    _write_json_atomic(out / MANIFEST_NAME, manifest)
    final = {"unet/best_val_loss": metrics["unet"].get("val_loss", math.nan),
             "unet/best_val_recall": metrics["unet"].get("val_recall", math.nan),
             "vae/best_val_loss": metrics["vae"].get("val_loss", math.nan),
             "vae/best_val_mse": metrics["vae"].get("val_mse", math.nan),
             **{f"wall_s/{k}": v for k, v in timer.wall.items()}}
    for prop, m in heads.metrics.items():
        if m.get("val_mae") is not None:
            final[f"heads/{prop}/best_val_mae"] = m["val_mae"]
    tracker.log_metrics({k: float(v) for k, v in final.items() if v is not None and math.isfinite(v)}, step=0)
    for name in (*FILES.values(), MANIFEST_NAME):
        tracker.log_artifact(str(out / name), "icsg3d")
    logger.info("icsg3d: trained in %.0f s (%s); files in %s", timer.wall["total"],
                ", ".join(f"{k} {v:.0f} s" for k, v in timer.wall.items() if k != "total"), out)
    return ICSG3DModel(config, unet, vae, heads, manifest, out_dir=out, device=device)


# ----------------------------------------------------------------------------- the trained model


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
        heads: the `~discovery.models.icsg3d_heads.PropertyHeads`.
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
        from discovery.models.icsg3d_training import freeze_

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
        from discovery.models.icsg3d_heads import PropertyHeads
        from discovery.models.icsg3d_training import load_checkpoint, unet_architecture, vae_architecture

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
                raise DataError(f"{file}: sha256 differs from the one recorded in {path.name}; "
                                "the checkpoint belongs to another training run")

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

        from discovery.generators.icsg3d_decode import decode_structure, lattice_from_coords

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

        from discovery.models.cond_dfc_vae import vae_loss

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


# ----------------------------------------------------------------------------- evaluation


def evaluate_reconstruction(model: ICSG3DModel, structures: Sequence, labels: Sequence[float] | None = None,
                            batch_size: int = 64, per_structure: bool = False) -> dict[str, Any]:
    """Reconstruction metrics of MODELS.md 1.6 on held-out crystals.

    Each structure is voxelised (in the frame of `~discovery.featurize.voxels.prepare_structure`),
    encoded with its own decile (from ``labels``; else the CGCNN's prediction), decoded from
    z = mu, segmented and rebuilt.

    Args:
        model: the trained model.
        structures: reference crystals; those that cannot be voxelised are counted and skipped.
        labels: condition-property label per structure.
        batch_size: structures voxelised at a time (bounds memory).
        per_structure: also return ``lattice_true`` and ``lattice_pred`` (n_ok, 3) arrays in A and the
            list ``site_emds`` (for plots).

    Returns:
        ``n``, ``n_skipped``, ``lattice_mae_a``/``_b``/``_c`` (A), ``site_emd`` (mean matched site
        distance in A over decoded structures), ``n_sites_mae`` (mean |N_true - N_pred|, N_pred = 0
        when nothing decodes), ``unet_nonzero_recall`` (species argmax of the UNet on the *true* maps,
        over atom voxels), ``vae_mse``, ``decoded_fraction``, ``valid_fraction`` and ``match_rate``
        (pymatgen ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)``, CDVAE's reconstruction
        criterion).
    """
    import torch

    from discovery.generators.icsg3d_decode import site_emd
    from discovery.models.unet3d import nonzero_recall_counts

    structures = list(structures)
    labels_arr = None if labels is None else np.asarray(labels, dtype=np.float64)
    abs_err, emds, dn, mse_sum, mse_n = [], [], [], 0.0, 0
    true_abc, pred_abc = [], []
    correct = atoms = 0
    n_ok = decoded = valid = matched = 0
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        voxels, prepared, ok = model._voxelise(chunk)
        if not voxels:
            continue
        x = np.stack([v.x for v in voxels])
        species = np.stack([v.species for v in voxels])
        dec = model._deciles_for(prepared, None if labels_arr is None
                                 else model.decile_of(labels_arr[start:start + batch_size][ok]))
        mu, _ = model.encode_maps(x, dec)
        samples = model.decode(mu, one_hot(dec, model.n_deciles))
        with torch.inference_mode():
            for s0 in range(0, len(x), model._batch):
                xb = torch.as_tensor(x[s0:s0 + model._batch], device=model.device)
                species_logits, _ = model.unet(xb)
                c, a = nonzero_recall_counts(species_logits, torch.as_tensor(species[s0:s0 + model._batch],
                                                                             device=model.device))
                correct += c
                atoms += a
                cb = torch.as_tensor(one_hot(dec[s0:s0 + model._batch], model.n_deciles), device=model.device)
                x_hat = model.vae.decode(torch.as_tensor(mu[s0:s0 + model._batch], device=model.device), cb)
                mse_sum += float(((x_hat - xb) ** 2).mean(dim=(1, 2, 3, 4)).sum().item())
                mse_n += len(xb)
        for p, s, abc, ok_valid in zip(prepared, samples.structures, samples.lattice_abc, samples.valid,
                                       strict=True):
            n_ok += 1
            abs_err.append(np.abs(np.asarray(p.lattice.abc) - abc))
            true_abc.append(np.asarray(p.lattice.abc))
            pred_abc.append(np.asarray(abc))
            dn.append(abs(len(p) - (len(s) if s is not None else 0)))
            if s is not None:
                decoded += 1
                emd = site_emd(s, p)
                if math.isfinite(emd):
                    emds.append(emd)
            if ok_valid:
                valid += 1
                try:
                    matched += bool(matcher.fit(p, s))
                except Exception:  # pymatgen raises on degenerate cells
                    pass
    n = len(structures)
    err = np.asarray(abs_err) if abs_err else np.full((1, 3), np.nan)
    details = {} if not per_structure else {
        "lattice_true": np.asarray(true_abc).reshape(-1, 3), "lattice_pred": np.asarray(pred_abc).reshape(-1, 3),
        "site_emds": list(emds)}
    return {**details,
        "n": n,
        "n_skipped": n - n_ok,
        "lattice_mae_a": float(np.mean(err[:, 0])),
        "lattice_mae_b": float(np.mean(err[:, 1])),
        "lattice_mae_c": float(np.mean(err[:, 2])),
        "site_emd": float(np.mean(emds)) if emds else math.nan,
        "n_sites_mae": float(np.mean(dn)) if dn else math.nan,
        "unet_nonzero_recall": correct / atoms if atoms else math.nan,
        "vae_mse": mse_sum / mse_n if mse_n else math.nan,
        "decoded_fraction": decoded / n_ok if n_ok else math.nan,
        "valid_fraction": valid / n_ok if n_ok else math.nan,
        "match_rate": matched / n_ok if n_ok else math.nan,
    }
