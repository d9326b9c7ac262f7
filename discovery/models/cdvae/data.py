"""CD-VAE training data: a CDVAE-format CSV read into canonical cells, a seeded split, and the
torch_geometric ``Data`` objects (with their CrystalNN graphs) the model trains on.

The CSV is read with `discovery.data.loaders.load_cdvae_csv` (rows whose CIF cannot be parsed are
counted and skipped; duplicate structures are read once). Every structure becomes CD-VAE's
canonical cell (`discovery.models.cdvae.graphs.canonical_structure`). Structures the model
cannot represent are skipped and counted: cells larger than ``max_atoms``, and elements beyond
Pu (Z > 94: the encoder's embedding is PyG's ``Embedding(95, .)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery.errors import DataError
from discovery.models.cdvae.presets import AUTO_PROPERTIES, CDVAEConfig

if TYPE_CHECKING:
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

#: Largest atomic number the encoder embeds.
MAX_Z = 94


@dataclass
class CDVAEData:
    """A CDVAE CSV, read and checked.

    Attributes:
        path: the file.
        ids: candidate ids (canonical ids of `discovery.structures`), one per structure.
        structures: canonical cells (Niggli-reduced when ``niggli``), in file order.
        labels: per structure, its numeric columns.
        property: the property column the property head learns (None: no head).
        n_rows, n_corrupt, n_duplicates: counts from the loader.
        n_skipped: structures the model cannot represent (too large, unknown elements).
    """

    path: Path
    ids: list[str] = field(default_factory=list)
    structures: list[Any] = field(default_factory=list)
    labels: list[dict[str, float]] = field(default_factory=list)
    property: str | None = None
    n_rows: int = 0
    n_corrupt: int = 0
    n_duplicates: int = 0
    n_skipped: int = 0

    def __len__(self) -> int:
        return len(self.structures)

    def property_values(self) -> np.ndarray:
        """The property of every structure (NaN where missing). Shapes: (n,)."""
        if self.property is None:
            return np.full(len(self), np.nan)
        return np.array([lab.get(self.property, np.nan) for lab in self.labels], dtype=np.float64)


def resolve_property(path: Path, wanted: str | None, columns: set[str]) -> str | None:
    """The property column to learn: ``auto`` picks the first of `AUTO_PROPERTIES` present.

    Raises:
        DataError: a named column that no row has.
    """
    if wanted is None:
        return None
    if wanted == "auto":
        return next((p for p in AUTO_PROPERTIES if p in columns), None)
    if wanted not in columns:
        raise DataError(f"{path}: no numeric property column {wanted!r} (found: {', '.join(sorted(columns)) or 'none'})")
    return wanted


def read_cdvae_data(path: str | Path, config: CDVAEConfig, max_rows: int | None = None) -> CDVAEData:
    """Read a CDVAE-format CSV for CD-VAE (writes nothing).

    Raises:
        DataError: the file is missing or unreadable, has no ``cif`` column, holds no usable
            structure, or lacks the requested property column (one line naming the file).
    """
    from discovery.data.loaders import load_cdvae_csv
    from discovery.models.cdvae.graphs import canonical_structure

    path = Path(path)
    loaded = load_cdvae_csv(path, max_rows=max_rows)
    data = CDVAEData(path=path, n_rows=loaded.n_rows, n_corrupt=loaded.n_corrupt, n_duplicates=loaded.n_duplicates)
    if not loaded.candidates:
        detail = f"; first error: {loaded.errors[0]}" if loaded.errors else ""
        raise DataError(f"{path}: no readable crystal structure in {loaded.n_rows} rows{detail}")
    columns = {k for lab in loaded.labels.values() for k in lab}
    data.property = resolve_property(path, config.property, columns)
    for cand in loaded.candidates:
        structure = cand.pmg
        if max(structure.atomic_numbers) > MAX_Z or (config.max_atoms is not None and len(structure) > config.max_atoms):
            data.n_skipped += 1
            continue
        try:
            canonical = canonical_structure(structure, niggli=config.niggli)
        except Exception as exc:  # a degenerate cell pymatgen cannot reduce
            logger.warning("%s: %s skipped (%s)", path, cand.id, exc)
            data.n_skipped += 1
            continue
        data.ids.append(cand.id)
        data.structures.append(canonical)
        data.labels.append(loaded.labels.get(cand.id, {}))
    if len(data) < 2:
        raise DataError(f"{path}: {len(data)} usable structures (need at least 2; {data.n_skipped} too large or "
                        f"with elements beyond Z = {MAX_Z})")
    if data.property is not None and not np.isfinite(data.property_values()).any():
        raise DataError(f"{path}: property column {data.property!r} has no numeric value")
    logger.info("%s: %d structures (%d rows, %d corrupt, %d duplicates, %d skipped), property %s", path, len(data),
                data.n_rows, data.n_corrupt, data.n_duplicates, data.n_skipped, data.property)
    return data


def split_indices(n: int, val_fraction: float, seed: int, max_structures: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) index split; with ``max_structures`` a seeded subset first.

    Shapes: (n_train,), (n_val,); both sorted.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCD7AE]))
    order = rng.permutation(n)
    if max_structures is not None:
        order = order[:max_structures]
    n_val = max(1, round(val_fraction * len(order)))
    n_val = min(n_val, len(order) - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def to_graph_data(structures: Sequence[Structure], properties: Sequence[float] | None = None,
                  cache: Any = None, progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """torch_geometric ``Data`` objects of canonical structures, with their CrystalNN graphs.

    Fields (CD-VAE's names): ``frac_coords`` (n, 3), ``atom_types`` (n,) atomic numbers,
    ``lengths`` and ``angles`` (1, 3), ``num_atoms``, ``edge_index`` (2, E) as (source, target),
    ``to_jimages`` (E, 3), ``num_bonds``, ``y`` (1, 1) (NaN when unknown).

    Args:
        structures: canonical cells (`graphs.canonical_structure`).
        properties: property per structure (None: all NaN).
        cache: a `graphs.CrystalNNCache` (None: a memory-only one).
        progress: ``progress(done, total)`` every 50 structures.
    """
    import torch
    from torch_geometric.data import Data

    from discovery.models.cdvae.graphs import CrystalNNCache

    cache = cache if cache is not None else CrystalNNCache(None)
    out = []
    total = len(structures)
    for k, s in enumerate(structures):
        edge_index, images = cache.get(s)
        y = float(properties[k]) if properties is not None else math.nan
        lengths, angles = s.lattice.abc, s.lattice.angles
        out.append(Data(
            frac_coords=torch.tensor(np.asarray(s.frac_coords), dtype=torch.float32),
            atom_types=torch.tensor(s.atomic_numbers, dtype=torch.long),
            lengths=torch.tensor([lengths], dtype=torch.float32),
            angles=torch.tensor([angles], dtype=torch.float32),
            num_atoms=len(s), num_nodes=len(s),
            edge_index=torch.from_numpy(edge_index), to_jimages=torch.from_numpy(images),
            num_bonds=edge_index.shape[1],
            y=torch.tensor([[y]], dtype=torch.float32)))
        if progress is not None and ((k + 1) % 50 == 0 or k + 1 == total):
            progress(k + 1, total)
    return out


def fit_scalers(structures: Sequence[Structure], properties: np.ndarray | None) -> dict[str, list[float]]:
    """CD-VAE's ``StandardScalerTorch`` fits: mean and (biased) std + 1e-5 of the scaled lattice
    (lengths / N^(1/3), angles) and of the property (finite values only)."""
    lat = np.array([[*(np.array(s.lattice.abc) / len(s) ** (1 / 3)), *s.lattice.angles] for s in structures])
    out = {"lattice_mean": lat.mean(axis=0).tolist(), "lattice_std": (lat.std(axis=0) + 1e-5).tolist()}
    if properties is not None:
        finite = properties[np.isfinite(properties)]
        if finite.size:
            out["prop_mean"] = [float(finite.mean())]
            out["prop_std"] = [float(finite.std() + 1e-5)]
    return out


def to_structures(outputs: dict[str, Any]) -> list[Structure | None]:
    """pymatgen Structures from a Langevin output (``num_atoms``, ``lengths``, ``angles``,
    ``frac_coords``, ``atom_types``); None where the lattice cannot be built (non-positive or
    non-finite lengths, impossible angles), as CD-VAE's ``Crystal`` marks them not constructed."""
    from pymatgen.core import Lattice, Structure

    num = outputs["num_atoms"].cpu().numpy()
    lengths = outputs["lengths"].detach().cpu().double().numpy()
    angles = outputs["angles"].detach().cpu().double().numpy()
    frac = outputs["frac_coords"].detach().cpu().double().numpy()
    types = outputs["atom_types"].cpu().numpy()
    out: list[Structure | None] = []
    start = 0
    for b, n in enumerate(num.tolist()):
        f, t = frac[start:start + n], types[start:start + n]
        start += n
        params = np.concatenate([lengths[b], angles[b]])
        if n < 1 or not np.all(np.isfinite(params)) or lengths[b].min() <= 0 or not np.all(np.isfinite(f)):
            out.append(None)
            continue
        try:
            lattice = Lattice.from_parameters(*params.tolist())
            if not np.all(np.isfinite(lattice.matrix)) or lattice.volume <= 0:
                out.append(None)
                continue
            out.append(Structure(lattice, [int(z) for z in t], f, coords_are_cartesian=False))
        except Exception:  # pymatgen rejects impossible cells in several ways
            out.append(None)
    return out
