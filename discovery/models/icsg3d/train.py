"""Training ICSG3D end to end: UNet, Cond-DFC-VAE and CGCNN heads from a CDVAE CSV.

Training (`train_icsg3d`), in this order (MODELS.md 1.1-1.5; sizes from `ICSG3DConfig`):

1. **Data.** `load_training_data` reads the CDVAE CSV (`discovery.data.loaders.load_cdvae_csv`) and
   keeps the structures with a finite ``config.condition_property`` label (``heat_ref`` for perov_5,
   ``formation_energy_per_atom`` for Materials Project data). Every check of the input runs before
   anything is written.
2. **Split.** A seeded 80/20 split of the structures (`~discovery.models.icsg3d.training.split_indices`),
   made before augmentation, so rotated copies always stay with their parent. The 20 % are held out
   from every network (the benchmark evaluates on them).
3. **Voxels.** At most ``max_structures`` training structures (a seeded subset) are featurised
   (`discovery.featurize.voxel_cache.load_or_featurize`, cached under ``out_dir/cache``, keyed by candidate
   ids and grid settings); structures that cannot be voxelised (non-orthogonal, > 40 sites) are
   skipped and counted. Each structure gives ``n_rotations`` maps: the original and ``n - 1`` random
   90-degree rotations (`~discovery.featurize.voxels.rotate90`). Species and occupancy are stored as
   uint8; sets above `MEMMAP_THRESHOLD_BYTES` go to memory-mapped files under ``out_dir/cache``.
4. **Condition.** Decile edges are ``np.quantile`` of the training labels at 0.1, ..., 0.9
   (``n_deciles`` bins); a label's decile is the bin ``[e_{k-1}, e_k)`` it falls in, as in
   `discovery.featurize.deciles.DecileConditions` (the released code's ``pd.qcut`` closes bins
   on the right instead, which differs only for a label equal to an edge). One-hot, ``n_deciles``
   wide.
5. **Networks.** UNet (`~discovery.models.icsg3d.training.train_unet`), then the VAE with the frozen
   UNet as perceptual model (`train_vae`; both use the same validation maps, grouped by parent), then
   the CGCNN heads on every training structure (`discovery.models.icsg3d.heads.PropertyHeads`).
6. **Files** in ``out_dir``: ``unet.pt``, ``vae.pt``, ``heads.pt`` (weights-only checkpoints, each
   written atomically) and last the manifest ``icsg3d.json`` (config, voxel settings, decile edges,
   split ids, training labels, a few base structures per decile, metrics, sha256 of every file), also
   atomic, so a crashed training leaves no manifest. Parameters, per-epoch curves (``unet/...``,
   ``vae/...``, ``heads/<property>/...``), final metrics and the four files go to the tracker.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from discovery.configbase import flatten
from discovery.errors import DataError
from discovery.featurize.deciles import decile_edges, decile_index
from discovery.lifecycle import check_device, file_sha256, json_number, package_versions, write_manifest
from discovery.models.icsg3d.data import ICSG3DData, augment, load_training_data
from discovery.models.icsg3d.model import (FILES, MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, MODEL_NAME,
                                           ICSG3DModel)
from discovery.models.icsg3d.presets import ICSG3DConfig
from discovery.protocols import NullTracker

logger = logging.getLogger(__name__)

#: Share of the structures held out from training.
TEST_FRACTION = 0.2
#: Base structures per decile stored in the manifest (targeted sampling before any hit).
BASES_PER_DECILE = 4

#: ``progress(stage, done, total, info)``; stages "load", "featurise", "unet", "vae", "heads".
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


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
    from discovery.featurize.voxel_cache import load_or_featurize
    from discovery.featurize.voxels import VoxelConfig
    from discovery.models.icsg3d.heads import PropertyHeads
    from discovery.models.icsg3d.training import (save_checkpoint, split_indices, train_unet, train_vae,
                                                  unet_architecture, vae_architecture)

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
        arrays = augment(feats, deciles_all[kept], config.n_deciles, config.n_rotations,
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
        "kind": MODEL_NAME,
        "preset": config.preset,
        "versions": package_versions(),
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
        "metrics": metrics,
        "files": {part: {"path": name, "sha256": file_sha256(out / name)} for part, name in FILES.items()},
    }
    manifest = json_number(manifest)
    write_manifest(out, MODEL_NAME, manifest)
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


