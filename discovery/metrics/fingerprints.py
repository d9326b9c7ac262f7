"""CD-VAE's crystal fingerprints through matminer, cached per structure (MODELS.md 4.5).

As CD-VAE's ``scripts/compute_metrics.py: Crystal.get_fingerprints``:

- structure: matminer ``CrystalNNFingerprint.from_preset("ops")`` of every site, averaged over
  sites (61 numbers). If any site fails, the crystal has no fingerprint and CD-VAE counts it
  invalid (`Fingerprints.ok` is False);
- composition: matminer ``ElementProperty.from_preset("magpie")`` (132 numbers), standardised by
  CD-VAE's fixed ``CompScaler`` (`discovery.metrics.cdvae_constants`), NaN -> 0
  (`standardise_composition`).

Pinned: matminer 0.10.1 turned on NaN imputation by default (``impute_nan=True``, element means);
CD-VAE ran matminer 0.7.3 without imputation, so we pass ``impute_nan=False`` and missing Magpie
values stay NaN until the scaler replaces them with 0, as in CD-VAE.

Speed: CrystalNN (a Voronoi tessellation per site) takes 15-30 ms per site on this machine's CPU
(measured: 0.085 s per perov_5 crystal of 5 sites, 0.23 s per carbon_24 crystal of 7.8 sites); Magpie
takes 2.4 ms per composition. So:

- results are cached per structure, keyed by an exact content hash (`structure_key`: species,
  lattice matrix and fractional coordinates as float64 bytes), in a process-wide
  `FingerprintCache` or one the caller passes (optionally saved to / loaded from an ``.npz``);
  `discovery.structures.candidate_id` is not used as the key because it costs a symmetry
  standardisation per structure and merges structures that differ by numeric noise;
- Magpie vectors are cached per reduced formula;
- ``n_jobs > 1`` spreads CrystalNN over worker processes (``spawn``: safe next to torch/Ray
  threads; each worker pays about 3 s importing matminer, so small batches stay in-process).
  Symmetry-equivalent sites were tried as a shortcut and dropped: perov_5 and carbon_24 crystals
  have almost no equivalent sites (113 orbits for 125 perov_5 sites, 214 for 214 carbon sites).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from discovery.fileio import atomic_write

log = logging.getLogger(__name__)

#: Lengths of the two fingerprints.
STRUCT_FP_SIZE = 61
COMP_FP_SIZE = 132
#: Below this many uncached structures per worker, ``n_jobs > 1`` stays in-process (worker start-up ~3 s).
MIN_STRUCTURES_PER_WORKER = 40


@lru_cache(maxsize=1)
def _featurizers():
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie", impute_nan=False)


def structure_fingerprint(structure) -> np.ndarray | None:
    """Site-averaged CrystalNN "ops" fingerprint, or None when any site fails (CD-VAE: invalid).

    Shapes: (61,).
    """
    if structure is None or len(structure) == 0:
        return None
    crystal_nn, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = np.array([crystal_nn.featurize(structure, i) for i in range(len(structure))], dtype=float)
    except Exception as exc:  # noqa: BLE001 - CD-VAE counts any failure as an invalid crystal
        log.debug("CrystalNN fingerprint failed: %s", exc)
        return None
    if sites.shape != (len(structure), STRUCT_FP_SIZE):
        return None
    return sites.mean(axis=0)


@lru_cache(maxsize=16384)
def _magpie_of_formula(formula: str) -> tuple[float, ...] | None:
    from pymatgen.core import Composition

    _, magpie = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tuple(float(x) for x in magpie.featurize(Composition(formula)))
    except Exception as exc:  # noqa: BLE001 - an element without Magpie data
        log.debug("Magpie fingerprint of %s failed: %s", formula, exc)
        return None


def composition_fingerprint(structure) -> np.ndarray | None:
    """Raw Magpie ``ElementProperty`` vector (NaN where Magpie lacks data), or None on failure.

    Args:
        structure: a pymatgen Structure or Composition.

    Shapes: (132,).
    """
    if structure is None:
        return None
    comp = structure.composition if hasattr(structure, "composition") else structure
    if comp.num_atoms <= 0:
        return None
    values = _magpie_of_formula(comp.element_composition.reduced_composition.formula)
    return None if values is None else np.array(values, dtype=float)


def standardise_composition(fps: np.ndarray) -> np.ndarray:
    """CD-VAE's ``CompScaler.transform``: (x - mean) / std with its fixed constants, NaN -> 0.

    Shapes: (n, 132) -> (n, 132).
    """
    from discovery.metrics.cdvae_constants import COMP_SCALER_MEANS, COMP_SCALER_STDS

    out = (np.asarray(fps, dtype=float) - np.asarray(COMP_SCALER_MEANS)) / np.asarray(COMP_SCALER_STDS)
    return np.where(np.isnan(out), 0.0, out)


def structure_key(structure) -> str:
    """Exact content hash of a structure: species, lattice matrix and fractional coordinates."""
    h = hashlib.sha256()
    if structure.is_ordered:
        h.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
    else:  # partial occupancies: the species strings
        h.update("|".join(str(site.species) for site in structure).encode())
    h.update(np.ascontiguousarray(structure.lattice.matrix, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(structure.frac_coords, dtype=np.float64).tobytes())
    return h.hexdigest()[:32]


class FingerprintCache:
    """Structure fingerprints by `structure_key`; optionally persisted as an ``.npz`` file.

    A failed fingerprint is cached too (as NaNs with ``ok = False``) so it is not retried.

    Args:
        path: an ``.npz`` file to load now (if it exists) and to write with `save`.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self._data: dict[str, np.ndarray | None] = {}
        if self.path is not None and self.path.is_file():
            self.load(self.path)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> np.ndarray | None:
        """The cached fingerprint (None for a cached failure); KeyError when absent."""
        return self._data[key]

    def put(self, key: str, fp: np.ndarray | None) -> None:
        self._data[key] = None if fp is None else np.asarray(fp, dtype=float)

    def clear(self) -> None:
        self._data.clear()

    def load(self, path: str | Path) -> None:
        """Merge the entries of an ``.npz`` written by `save` (DataError if it is not one)."""
        from discovery.errors import DataError

        try:
            with np.load(path, allow_pickle=False) as z:
                keys, fps, ok = z["keys"], z["struct"], z["ok"]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: not a fingerprint cache (.npz with keys, struct, ok): {exc}") from exc
        if fps.ndim != 2 or fps.shape[1] != STRUCT_FP_SIZE or not len(keys) == len(fps) == len(ok):
            raise DataError(f"{path}: fingerprint cache arrays have shapes {keys.shape}, {fps.shape}, {ok.shape}; "
                            f"expected (n,), (n, {STRUCT_FP_SIZE}), (n,)")
        for k, fp, good in zip(keys.tolist(), fps, ok.tolist(), strict=True):
            self._data[str(k)] = fp.copy() if good else None

    def save(self, path: str | Path | None = None) -> Path:
        """Write all entries to ``path`` (default: the constructor's) and return it."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("FingerprintCache.save needs a path")
        keys = list(self._data)
        fps = np.full((len(keys), STRUCT_FP_SIZE), np.nan)
        ok = np.zeros(len(keys), dtype=bool)
        for i, k in enumerate(keys):
            if self._data[k] is not None:
                fps[i], ok[i] = self._data[k], True
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, "wb") as fh:
            np.savez_compressed(fh, keys=np.array(keys, dtype=str), struct=fps, ok=ok)
        return target


#: The process-wide cache used when a caller passes none.
DEFAULT_CACHE = FingerprintCache()


@dataclass(frozen=True)
class Fingerprints:
    """Fingerprints of a list of crystals, row i for crystal i.

    Attributes:
        struct: site-averaged CrystalNN vectors, NaN rows where ``ok`` is False. Shapes: (n, 61).
        comp: Magpie vectors standardised by CD-VAE's CompScaler (NaN -> 0), NaN rows where ``ok``
            is False. Shapes: (n, 132).
        ok: whether both fingerprints exist (CD-VAE counts a crystal without them invalid). Shapes: (n,).
    """

    struct: np.ndarray
    comp: np.ndarray
    ok: np.ndarray

    def __len__(self) -> int:
        return len(self.ok)

    def select(self, mask_or_index) -> Fingerprints:
        return Fingerprints(self.struct[mask_or_index], self.comp[mask_or_index], self.ok[mask_or_index])


def _structure_fingerprints_chunk(structures: list) -> list[np.ndarray | None]:
    """Worker entry point: CrystalNN fingerprints of a chunk (module-level so ``spawn`` can import it)."""
    return [structure_fingerprint(s) for s in structures]


def _compute_structure_fps(structures: list, n_jobs: int) -> list[np.ndarray | None]:
    n_workers = min(max(int(n_jobs), 1), max(len(structures) // MIN_STRUCTURES_PER_WORKER, 1))
    if n_workers <= 1:
        return _structure_fingerprints_chunk(structures)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Largest crystals first, dealt round-robin, so the workers finish together.
    order = sorted(range(len(structures)), key=lambda i: -len(structures[i]))
    n_chunks = n_workers * 4
    chunks = [order[k::n_chunks] for k in range(n_chunks)]
    out: list[np.ndarray | None] = [None] * len(structures)
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for idx, fps in zip(chunks, pool.map(_structure_fingerprints_chunk,
                                             [[structures[i] for i in c] for c in chunks]), strict=True):
            for i, fp in zip(idx, fps, strict=True):
                out[i] = fp
    return out


def fingerprints(structures: Sequence, n_jobs: int = 1, cache: FingerprintCache | None = None) -> Fingerprints:
    """CD-VAE's structure and composition fingerprints of crystals, through the cache.

    Args:
        structures: pymatgen Structures; None (a failed decode) gives ``ok = False``.
        n_jobs: worker processes for CrystalNN (1: in-process).
        cache: where to look up and store structure fingerprints (default `DEFAULT_CACHE`).

    Returns:
        `Fingerprints` in input order.
    """
    cache = DEFAULT_CACHE if cache is None else cache
    structures = list(structures)
    n = len(structures)
    struct = np.full((n, STRUCT_FP_SIZE), np.nan)
    comp_raw = np.full((n, COMP_FP_SIZE), np.nan)
    ok = np.zeros(n, dtype=bool)
    keys: list[str | None] = [None] * n
    todo: dict[str, int] = {}  # key -> first index needing CrystalNN
    for i, s in enumerate(structures):
        if s is None or len(s) == 0:
            continue
        keys[i] = structure_key(s)
        if keys[i] not in cache and keys[i] not in todo:
            todo[keys[i]] = i
    if todo:
        log.info("CrystalNN fingerprints of %d crystals (%d cached, n_jobs=%d)", len(todo),
                 sum(k is not None for k in keys) - len(todo), n_jobs)
        new = _compute_structure_fps([structures[i] for i in todo.values()], n_jobs)
        for key, fp in zip(todo, new, strict=True):
            cache.put(key, fp)
    for i, key in enumerate(keys):
        if key is None:
            continue
        fp = cache.get(key)
        cfp = composition_fingerprint(structures[i]) if fp is not None else None
        if fp is not None and cfp is not None:
            struct[i], comp_raw[i], ok[i] = fp, cfp, True
    comp = standardise_composition(comp_raw)
    comp[~ok] = np.nan
    return Fingerprints(struct=struct, comp=comp, ok=ok)
