"""A disk cache of voxel maps: one ``.npz`` per (voxel settings, set of structures), written
atomically, so a training run featurises each structure once (`load_or_featurize`)."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from discovery.errors import DataError
from discovery.fileio import atomic_write
from discovery.featurize.voxels import CACHE_FORMAT, VoxelConfig, coordinate_channels, featurize_many

logger = logging.getLogger(__name__)


def _cif_id(structure) -> str:
    return hashlib.sha256(structure.to(fmt="cif").encode()).hexdigest()


class VoxelCache:
    """A folder of ``.npz`` files, one per (config, set of structures), written atomically.

    Args:
        root: The folder; created on first write.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(ids: Sequence[str], config: VoxelConfig) -> str:
        """sha256 of the format version, the config JSON and the sorted ids."""
        h = hashlib.sha256()
        h.update(f"voxels-v{CACHE_FORMAT}\n".encode())
        h.update(config.model_dump_json().encode())
        for i in sorted(ids):
            h.update(b"\n")
            h.update(i.encode())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """File that holds the arrays of ``key``."""
        return self.root / f"voxels-{key}.npz"

    def save(self, key: str, arrays: Mapping[str, np.ndarray], ids: Sequence[str]) -> Path:
        """Write stacked arrays (as `featurize_many` returns them) for ``ids`` (one per row)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        with atomic_write(final, "wb") as fh:
            np.savez(
                fh,
                key=np.array(key),
                ids=np.asarray(list(ids), dtype=str),
                density=np.ascontiguousarray(arrays["x"][:, 0]),
                species=arrays["species"].astype(np.uint8),
                lattice=arrays["lattice"].astype(np.float32),
            )
        return final

    def load(self, key: str, config: VoxelConfig) -> dict[str, np.ndarray] | None:
        """The cached arrays of ``key`` (with ``ids``), ``None`` when absent or unreadable.

        An unreadable file is logged as a warning and left for the caller to overwrite.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    raise ValueError("key mismatch")
                ids = data["ids"]
                density = data["density"]
                species = data["species"].astype(np.int64)
                lattice = data["lattice"].astype(np.float32)
            n, d = len(ids), config.d
            if density.shape != (n, d, d, d) or species.shape != (n, d, d, d) or lattice.shape != (n, 6):
                raise ValueError("array shapes do not match the config")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("voxel cache %s is unreadable (%s); rebuilding it", path, exc)
            return None
        x = np.empty((n, 4, d, d, d), dtype=np.float32)
        x[:, 0] = density
        for i in range(n):
            x[i, 1:] = coordinate_channels(lattice[i, :3], config)
        return {
            "x": x,
            "species": species,
            "occupancy": (species > 0).astype(np.float32),
            "lattice": lattice,
            "ids": ids,
        }


def load_or_featurize(
    structures: Sequence,
    ids: Sequence[str] | None,
    config: VoxelConfig | None,
    cache_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> dict[str, np.ndarray]:
    """Featurise ``structures`` once and reuse the result from ``cache_dir`` afterwards.

    The cache key is the sha256 of the config JSON and the sorted ids, so the same set in another
    order hits the same file; rows come back in the order of ``ids``. A corrupt file is rebuilt.

    Args:
        structures: pymatgen ``Structure`` objects.
        ids: One unique id per structure (e.g. candidate ids); ``None`` uses the sha256 of each
            structure's CIF text.
        config: Grid settings; defaults to ``VoxelConfig()``.
        cache_dir: Folder of the cache files.
        progress: Passed to `featurize_many` when featurising.
        on_error: Passed to `featurize_many`; skipped structures have no row.

    Returns:
        ``x``, ``species``, ``occupancy``, ``lattice`` as `featurize_many` stacks them, and ``ids``
        (str array) naming each row.

    Raises:
        DataError: ``ids`` and ``structures`` differ in length or ``ids`` repeats a value; or a
            structure cannot be featurised and ``on_error="raise"``.
    """
    config = config or VoxelConfig()
    ids = [_cif_id(s) for s in structures] if ids is None else [str(i) for i in ids]
    if len(ids) != len(structures):
        raise DataError(f"load_or_featurize: {len(ids)} ids for {len(structures)} structures")
    if len(set(ids)) != len(ids):
        raise DataError("load_or_featurize: ids must be unique")
    cache = VoxelCache(cache_dir)
    key = cache.key(ids, config)
    cached = cache.load(key, config)
    if cached is not None:
        logger.info("voxel cache hit %s (%d structures)", cache.path(key), len(cached["ids"]))
        row = {str(i): n for n, i in enumerate(cached["ids"])}
        take = np.asarray([row[i] for i in ids if i in row], dtype=np.int64)
        return {name: arr[take] for name, arr in cached.items()}
    arrays = featurize_many(structures, config, progress=progress, on_error=on_error)
    kept_ids = np.asarray([ids[i] for i in arrays.pop("index")], dtype=str)
    cache.save(key, arrays, kept_ids)
    logger.info("voxel cache written %s (%d structures)", cache.path(key), len(kept_ids))
    return {**arrays, "ids": kept_ids}
