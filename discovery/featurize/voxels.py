"""Voxel density maps of orthogonal crystals for ICSG3D (Court et al., JCIM 60, 4518, 2020).

A crystal becomes four ``d x d x d`` channels (MODELS.md 1.1): a density map ``M`` made of one
normalised Gaussian per site, and three coordinate channels ``p`` (CoordConv) from which the decoder
reads the lattice back. Two more grids are targets of the segmentation UNet: the species matrix
(atomic number of the nearest site within ``label_frac * sigma``, 0 for background) and the binary
occupancy. Only orthogonal cells are representable, because a site's Cartesian position is taken as
``frac * (a, b, c)``.

Recipe (what `featurize` does):

1. Use the cell as given when it is orthogonal; otherwise try pymatgen's conventional standard cell
   and reject the structure (`DataError`) when that is not orthogonal either (angles 90 within
   ``ORTHOGONAL_TOL_DEG``), or has more than ``MAX_SITES`` sites, or is disordered (the released
   code orders disordered cells with pymatgen's oxidation-state and order-disorder transformations;
   here that is left to the data loader).
2. Wrap fractional coordinates into [0, 1) and shift them so the minimum along each axis is 0.
3. Each axis of the grid spans ``[-eps*L, L + eps*L]`` in ``d`` voxels of size
   ``delta = L (1 + 2 eps) / d``; values are taken at voxel centres. Only the sites of the one cell
   are placed (no periodic images).
4. ``M(v) = (2 pi)^(-3/2) sum_s Z_s / sigma_s^3 exp(-|v - x_s|^2 / (2 sigma_s^2))`` with
   ``sigma_s = sigma_frac * r_s`` and ``r_s`` the mean ionic radius (`site_radius`), so each site
   integrates to ``Z_s``.
5. ``p_k = linspace(0, L_k (1 + 2 eps), d + 1)[:-1]`` along axis ``k`` (this grid starts at 0 while
   the density grid starts at ``-eps*L``, as in the released code).

Rotation augmentation (`rotate90`) deviates from the released code on purpose. The released code
rotates the coordinate channels together with the density, so after a rotation about (x, y) the
channel ``p_x`` runs along the y axis; its lattice read-out then reports (a, b, c) in the old order
while the grid holds them permuted. That is harmless for the cubic cells the paper used and wrong for
any other orthogonal cell. Here density, species and occupancy are rotated, the lattice lengths are
permuted the way the axes were, and the coordinate channels are permuted the same way (not
rotated), so channel ``k`` always runs along grid axis ``k`` and ``lattice_from_coords`` recovers
the permuted lattice. The rotated grid shows a proper rotation of the crystal (one axis reversed
per 90 degrees).

The disk cache (`VoxelCache`, `load_or_featurize`) stores density (float32), species (uint8) and
the lattice (float32) only; the coordinate channels and the occupancy are rebuilt on load, which
makes the file about 5x smaller than the arrays it returns.

Throughput, measured on this project's shared 2-core CPU worker (numpy only, one process, ``d = 32``,
the 5-site perovskites of perov_5/val.csv): a median of 0.83 ms per structure, i.e. about 1,200
structures/s on a quiet core (about 0.1 ms per site for the grids, the rest pymatgen bookkeeping);
`featurize_many` over 200 structures reached 270-450 structures/s while the two cores were shared
with other jobs (load average about 4.5). Memory, not time, bounds a data set: one featurised
structure takes 896 KiB (x 512 KiB, species 256 KiB, occupancy 128 KiB).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from discovery.configbase import Strict
from discovery.errors import DataError

logger = logging.getLogger(__name__)

#: Largest cell the representation accepts (ICSG3D ``--max_sites 40``).
MAX_SITES: int = 40
#: Tolerance on the 90-degree cell angles. Units: degree.
ORTHOGONAL_TOL_DEG: float = 1e-3
#: Fractional coordinates within this of 1 are wrapped to 0 (numerical noise of CIF round trips).
_WRAP_TOL: float = 1e-6
#: Version of the cache file layout; part of the cache key.
CACHE_FORMAT: int = 1

_AXIS_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))


class VoxelConfig(Strict):
    """Grid and Gaussian settings of the ICSG3D voxel representation (defaults: the released code).

    Attributes:
        d: Voxels per axis.
        eps_frac: Margin on each side of the cell as a fraction of the cell length.
        sigma_frac: Gaussian width as a multiple of the site's ionic radius.
        label_frac: A voxel gets a site's species when closer than ``label_frac * sigma``.
        default_radius_a: Radius of an element without tabulated ionic radii. Units: A.
        n_classes: Number of species classes (atomic numbers 0..n_classes-1, 0 = background).
    """

    d: int = Field(32, ge=4, le=256)
    eps_frac: float = Field(0.25, ge=0.0, le=2.0)
    sigma_frac: float = Field(1.0, gt=0.0)
    label_frac: float = Field(1.0, gt=0.0)
    default_radius_a: float = Field(1.2, gt=0.0)
    n_classes: int = Field(95, ge=2, le=256)


@dataclass(frozen=True)
class VoxelSample:
    """One featurised crystal.

    Shapes:
        x: (4, d, d, d) float32, channels [M, p_x, p_y, p_z]; M in electrons/A^3, p in A.
        species: (d, d, d) int64, atomic number of the labelled site, 0 for background.
        occupancy: (d, d, d) float32, 1 where species > 0.
        lattice: (6,) float32, a, b, c (A) and alpha, beta, gamma (degree).
    """

    x: np.ndarray
    species: np.ndarray
    occupancy: np.ndarray
    lattice: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """The four arrays by name."""
        return {"x": self.x, "species": self.species, "occupancy": self.occupancy, "lattice": self.lattice}


# ----------------------------------------------------------------------------- sites and cells


@lru_cache(maxsize=256)
def site_radius(symbol: str, default: float = 1.2) -> float:
    """Mean ionic radius of an element over its tabulated oxidation states.

    Args:
        symbol: Element symbol, e.g. ``"Ti"``.
        default: Radius when pymatgen tabulates none (noble gases, H) or the mean is NaN.

    Returns:
        The radius. Units: A.

    Example:
        >>> round(site_radius("Ti"), 3)
        0.852
        >>> site_radius("He")
        1.2
    """
    from pymatgen.core.periodic_table import Element

    radii = [float(r) for r in Element(symbol).ionic_radii.values()]
    if not radii:
        return float(default)
    mean = float(np.mean(radii))
    return mean if math.isfinite(mean) else float(default)


def _is_orthogonal(angles: Sequence[float]) -> bool:
    return all(abs(float(a) - 90.0) <= ORTHOGONAL_TOL_DEG for a in angles)


def prepare_structure(structure):
    """The orthogonal, ordered cell that `featurize` places on the grid, with sites shifted.

    Fractional coordinates are wrapped into [0, 1) and shifted so that their minimum along each
    axis is 0; the returned structure holds exactly the Cartesian sites the density is built from,
    which makes it the reference for round-trip and EMD comparisons.

    Args:
        structure: A pymatgen ``Structure``.

    Returns:
        A new pymatgen ``Structure`` on an orthogonal lattice.

    Raises:
        DataError: The structure is disordered, has no orthogonal conventional cell, or has more
            than ``MAX_SITES`` sites.
    """
    from pymatgen.core import Lattice, Structure

    name = structure.formula
    if not structure.is_ordered:
        raise DataError(f"{name}: disordered structure; voxel featurisation needs ordered sites")
    cell = structure
    if not _is_orthogonal(cell.lattice.angles):
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        try:
            cell = SpacegroupAnalyzer(structure).get_conventional_standard_structure()
        except Exception as exc:  # spglib failures come in several types
            raise DataError(f"{name}: cell is not orthogonal and symmetry analysis failed: {exc}") from None
        if not _is_orthogonal(cell.lattice.angles):
            angles = ", ".join(f"{a:.3f}" for a in structure.lattice.angles)
            raise DataError(
                f"{name}: cell angles ({angles}) are not 90 degrees and its conventional cell is not "
                "orthogonal either; voxel featurisation needs an orthogonal cell"
            )
    if len(cell) > MAX_SITES:
        raise DataError(f"{name}: {len(cell)} sites in the conventional cell, at most {MAX_SITES} allowed")
    frac = np.mod(cell.frac_coords, 1.0)
    frac[frac > 1.0 - _WRAP_TOL] = 0.0
    frac = frac - frac.min(axis=0)
    a, b, c = cell.lattice.abc
    return Structure(Lattice.orthorhombic(a, b, c), [site.specie for site in cell], frac)


# ----------------------------------------------------------------------------- grids


def voxel_size(abc: Sequence[float], config: VoxelConfig) -> np.ndarray:
    """Edge length of one voxel along each axis.

    Units: A. Shapes: (3,).
    """
    return np.asarray(abc, dtype=np.float64) * (1.0 + 2.0 * config.eps_frac) / config.d


def voxel_centres(length: float, config: VoxelConfig) -> np.ndarray:
    """Cartesian centres of the voxels along one axis of length ``length``.

    Units: A. Shapes: (d,).
    """
    delta = length * (1.0 + 2.0 * config.eps_frac) / config.d
    return -config.eps_frac * length + (np.arange(config.d) + 0.5) * delta


def coordinate_channels(abc: Sequence[float], config: VoxelConfig) -> np.ndarray:
    """The three coordinate channels ``p`` for a cell of lengths ``abc``.

    Channel ``k`` is ``linspace(0, L_k (1 + 2 eps), d + 1)[:-1]`` along grid axis ``k`` and constant
    along the other two.

    Units: A. Shapes: (3, d, d, d) float32.
    """
    d = config.d
    out = np.empty((3, d, d, d), dtype=np.float32)
    for k, length in enumerate(np.asarray(abc, dtype=np.float64)):
        ramp = np.linspace(0.0, length * (1.0 + 2.0 * config.eps_frac), d + 1)[:-1]
        shape = [1, 1, 1]
        shape[k] = d
        out[k] = ramp.reshape(shape)
    return out


def featurize(structure, config: VoxelConfig | None = None) -> VoxelSample:
    """Density, coordinate, species and occupancy grids of one orthogonal crystal.

    Args:
        structure: A pymatgen ``Structure`` (orthogonal, or with an orthogonal conventional cell).
        config: Grid settings; defaults to ``VoxelConfig()``.

    Returns:
        The `VoxelSample`.

    Raises:
        DataError: See `prepare_structure`; also for an atomic number >= ``n_classes``.

    Units:
        Density in electrons per A^3 (sum of Z over the grid times the voxel volume gives the number
        of electrons that fall inside the grid); coordinates and lattice lengths in A.

    Shapes:
        See `VoxelSample`.
    """
    config = config or VoxelConfig()
    cell = prepare_structure(structure)
    d = config.d
    abc = np.asarray(cell.lattice.abc, dtype=np.float64)
    # the coordinate channels are a function of the stored float32 lattice, so a cache or a rotation
    # that rebuilds them from `lattice` reproduces them bit for bit
    abc_stored = abc.astype(np.float32)
    cart = cell.frac_coords * abc  # orthogonal cell: Cartesian = frac * (a, b, c)
    centres = [voxel_centres(length, config) for length in abc]

    density = np.zeros((d, d, d), dtype=np.float64)
    species = np.zeros((d, d, d), dtype=np.int64)
    best = np.full((d, d, d), np.inf)
    norm = (2.0 * np.pi) ** -1.5
    for site, pos in zip(cell, cart):
        z = int(site.specie.Z)
        if z >= config.n_classes:
            raise DataError(f"{cell.composition.reduced_formula}: atomic number {z} needs more than "
                            f"n_classes={config.n_classes} species classes")
        sigma = config.sigma_frac * site_radius(site.specie.symbol, config.default_radius_a)
        sq = [(centres[k] - pos[k]) ** 2 for k in range(3)]  # per-axis squared offsets, (d,) each
        gx, gy, gz = (np.exp(-s / (2.0 * sigma * sigma)) for s in sq)
        density += (norm * z / sigma**3) * (gx[:, None, None] * gy[None, :, None] * gz[None, None, :])
        dist2 = sq[0][:, None, None] + sq[1][None, :, None] + sq[2][None, None, :]
        win = (dist2 < (config.label_frac * sigma) ** 2) & (dist2 < best)
        species[win] = z
        best[win] = dist2[win]

    x = np.empty((4, d, d, d), dtype=np.float32)
    x[0] = density
    x[1:] = coordinate_channels(abc_stored, config)
    lattice = np.array([*abc_stored, 90.0, 90.0, 90.0], dtype=np.float32)
    return VoxelSample(x=x, species=species, occupancy=(species > 0).astype(np.float32), lattice=lattice)


def featurize_many(
    structures: Sequence,
    config: VoxelConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> dict[str, np.ndarray]:
    """Featurise several structures and stack the arrays.

    Args:
        structures: pymatgen ``Structure`` objects.
        config: Grid settings; defaults to ``VoxelConfig()``.
        progress: Called as ``progress(done, total)`` after each structure.
        on_error: ``"raise"`` re-raises the first `DataError`; ``"skip"`` logs one warning with the
            number of rejected structures and leaves them out.

    Returns:
        ``x``, ``species``, ``occupancy``, ``lattice`` stacked along a new first axis, and ``index``:
        the positions in ``structures`` of the rows (all of them unless some were skipped).

    Shapes:
        x (N, 4, d, d, d) float32; species (N, d, d, d) int64; occupancy (N, d, d, d) float32;
        lattice (N, 6) float32; index (N,) int64.
    """
    config = config or VoxelConfig()
    total, d = len(structures), config.d
    out = {  # filled in place: one copy of each sample, no list of samples held alongside
        "x": np.empty((total, 4, d, d, d), np.float32),
        "species": np.empty((total, d, d, d), np.int64),
        "occupancy": np.empty((total, d, d, d), np.float32),
        "lattice": np.empty((total, 6), np.float32),
    }
    index: list[int] = []
    rejected: list[str] = []
    for i, structure in enumerate(structures):
        try:
            sample = featurize(structure, config)
        except DataError as exc:
            if on_error == "raise":
                raise
            rejected.append(str(exc))
        else:
            row = len(index)
            for name, arr in sample.as_dict().items():
                out[name][row] = arr
            index.append(i)
        if progress is not None:
            progress(i + 1, total)
    if rejected:
        logger.warning("voxel featurisation skipped %d of %d structures (first: %s)", len(rejected), total,
                       rejected[0])
        out = {name: arr[: len(index)].copy() for name, arr in out.items()}
    out["index"] = np.asarray(index, dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- augmentation


def random_rotation_axes(rng: np.random.Generator, n: int = 3) -> tuple[tuple[int, int], ...]:
    """``n`` random ordered axis pairs for `rotate90` (pair and sense of rotation both random)."""
    out = []
    for _ in range(n):
        p, q = _AXIS_PAIRS[int(rng.integers(len(_AXIS_PAIRS)))]
        out.append((p, q) if rng.integers(2) == 0 else (q, p))
    return tuple(out)


def rotate90(
    sample: VoxelSample | Mapping[str, np.ndarray],
    rng: np.random.Generator | None = None,
    axes: Sequence[tuple[int, int]] | None = None,
) -> VoxelSample | dict[str, np.ndarray]:
    """Three successive 90-degree rotations of one sample, each about a random grid-axis pair.

    Density, species and occupancy are rotated with ``np.rot90(k=1)``; the lattice lengths are
    permuted like the grid axes; the coordinate channels are permuted with them, so channel ``k``
    keeps running along grid axis ``k`` (see the module docstring for why they are not rotated with
    the rest). Species counts are unchanged.

    Args:
        sample: A `VoxelSample`, or a mapping with its four arrays (one sample, no batch axis).
        rng: Source of the random axes (required unless ``axes`` is given).
        axes: Explicit ordered axis pairs (grid axes 0..2), applied in order; overrides ``rng``.

    Returns:
        The rotated sample, of the same kind as ``sample`` (a dict for a mapping input).

    Shapes:
        As `VoxelSample`; ``lattice`` (6,) with a, b, c permuted.
    """
    arrays = sample.as_dict() if isinstance(sample, VoxelSample) else dict(sample)
    if axes is None:
        if rng is None:
            raise ValueError("rotate90 needs rng or axes")
        axes = random_rotation_axes(rng)
    x_old = arrays["x"]
    ramps = [x_old[1][:, 0, 0], x_old[2][0, :, 0], x_old[3][0, 0, :]]  # channel k's profile along axis k
    density, species, occupancy = x_old[0], arrays["species"], arrays["occupancy"]
    order = [0, 1, 2]  # order[k]: the original axis that now lies along grid axis k
    for p, q in axes:
        density = np.rot90(density, 1, axes=(p, q))
        species = np.rot90(species, 1, axes=(p, q))
        occupancy = np.rot90(occupancy, 1, axes=(p, q))
        order[p], order[q] = order[q], order[p]
    lattice = np.asarray(arrays["lattice"]).copy()
    lattice[:3] = lattice[:3][order]
    lattice[3:] = lattice[3:][order]
    x = np.empty_like(x_old)
    x[0] = density
    for k in range(3):
        shape = [1, 1, 1]
        shape[k] = -1
        x[1 + k] = ramps[order[k]].reshape(shape)
    out = {
        "x": x,
        "species": np.ascontiguousarray(species),
        "occupancy": np.ascontiguousarray(occupancy),
        "lattice": lattice,
    }
    return VoxelSample(**out) if isinstance(sample, VoxelSample) else out
