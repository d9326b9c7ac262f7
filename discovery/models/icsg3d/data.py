"""ICSG3D's training data: labelled structures of a CDVAE CSV, and their augmented voxel maps.

`load_training_data` reads the CDVAE CSV (`discovery.data.loaders.load_cdvae_csv`) and keeps the
structures with a finite ``config.condition_property`` label (``heat_ref`` for perov_5,
``formation_energy_per_atom`` for Materials Project data); every check of the input runs before
anything is written. `augment` turns voxelised structures into training maps: the original and
``n_rotations - 1`` random 90-degree rotations each (`discovery.featurize.voxels.rotate90`), with
species and occupancy as uint8; sets above `MEMMAP_THRESHOLD_BYTES` go to memory-mapped files.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discovery.errors import DataError
from discovery.featurize.deciles import one_hot
from discovery.lifecycle import file_sha256
from discovery.models.icsg3d.presets import KNOWN_PROPERTIES, ICSG3DConfig
from discovery.records import Candidate

logger = logging.getLogger(__name__)

#: Augmented training sets larger than this are memory-mapped to disk. Units: bytes.
MEMMAP_THRESHOLD_BYTES = 4 * 1024**3


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



def augment(arrays: Mapping[str, np.ndarray], deciles: np.ndarray, n_deciles: int, n_rotations: int,
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


