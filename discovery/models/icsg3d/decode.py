"""Structure recovery for ICSG3D: voxel grids back to a crystal (MODELS.md 1.5 steps 3, 5-7, and 1.6).

The VAE decodes four channels ``[M, p_x, p_y, p_z]`` (`discovery.featurize.voxels`); the UNet turns
them into per-voxel species logits and an atom-vs-background probability. This module does the rest:

1. `lattice_from_coords`: cell lengths from the slope of each coordinate channel.
2. `segment_atoms`: connected components of the thresholded occupancy, split recursively with a
   marker watershed where a component is not convex enough to be one atom.
3. `atoms_from_segments`: one atom per segment, species by majority vote, position at the centroid;
   `drop_periodic_images` removes an atom decoded twice across the cell boundary.
4. `decode_structure`, `is_valid`: an orthogonal pymatgen ``Structure`` and the 0.5 A validity check.
5. `site_emd`: the paper's atom-position error between a decoded and a true structure.

Deliberate deviations from the released code (by256/icsg3d, MODELS.md 0.3 finding 3 and 1.5):

- **Lattice.** The released ``to_lattice_params`` takes the spread (max - min) of each coordinate
  channel, divides by (1 - 1/d) and then subtracts a further a/d, applying the 1/d correction twice;
  a perfect grid comes back 3 % short (4.000 A -> 3.875 A for d = 32). Here the lattice is the
  slope of the channel along its own axis: the channel ``linspace(0, L, d + 1)[:-1]`` with
  ``L = a (1 + 2 eps)`` is ``p(i) = i L / d``, so ``a = slope d / (1 + 2 eps)``. The slope is a
  least-squares fit through the origin to the median of each slice, over the central half of the
  slices (``d/4 <= i < 3d/4``). On a perfect grid this is exact, like the spread. On decoded maps
  the spread is set by the two noisiest voxels and the decoder's final ReLU clips the ramp near
  zero. Measured on 300 *training* structures of perov_5 reconstructed by a cpu-preset model
  (batch-norm statistics recalibrated, see `discovery.models.icsg3d.training`): lattice MAE 0.23 A
  from the spread, 0.078 A from the channel median, 0.061 A from this fit; the choice was made on
  training structures only.
- **Periodic images** (`drop_periodic_images`). The grid shows a quarter cell of margin on each side
  and the featurisation places each site once, so a decoded atom near one face and an atom of the
  same species near the opposite face, closer than 0.5 A across the boundary, are one atom and its
  image; the smaller segment is dropped (the released code keeps both and the structure then fails
  its validity check). Pairs that close inside the cell, or of different species, are kept and
  still fail it. Measured on 1,000 random samples (z ~ N(0, I), seed 1, 100 per decile) of the
  cpu-preset Perov-5 model: 79.0 % valid without this step, 83.6 % with it.
- **Species-aware components (optional, off by default).** With ``split_species=True`` the
  connected components are taken per species label, so two touching atoms of different species (Ti
  and O in a perovskite) are separated before any watershed. It is off by default, as in the
  released code, because a few stray labels inside one atom of a noisy UNet output would become
  extra atoms; with exact labels it is the most reliable split.
- **Watershed.** The released code floods the flat binary mask from markers made by one erosion
  with ``ball(1)``, and its recursion re-erodes the same shapes, so a neck wider than two voxels is
  never cut. Here the markers come from repeated ``ball(1)`` erosions (up to ``max_iters``) until
  the component falls apart into at least two cores, and the flooding runs on the negative
  Euclidean distance transform, so pieces meet at the necks. Each piece is tested and split again
  (recursion depth at most ``max_iters``) while it is non-convex and holds at least
  ``2 * voxels_per_atom`` voxels (the released "nonzero / wmin > segments" rule, applied per piece).
- **EMD.** `site_emd` uses minimum-image distances in the true lattice by default, because decoded
  sites are wrapped into the cell; ``periodic=False`` is the released plain Euclidean metric. The two
  agree whenever every matched pair is closer than half a cell length.

Note on the convexity rule: the union of two equal spheres always has a volume of at least 0.8 of its
convex hull (exactly 0.8 when they touch), so with ``min_convexity = 0.8`` two overlapping atoms of
the same species are split only when voxelisation pushes the ratio below 0.8; chains and clusters
of three or more atoms are split reliably.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from discovery.featurize.voxels import VoxelConfig, voxel_size

logger = logging.getLogger(__name__)

#: Same-species atoms closer than this across the cell boundary are one atom and its image. Units: A.
IMAGE_TOL_A = 0.5


# ----------------------------------------------------------------------------- lattice


def lattice_from_coords(p: np.ndarray, config: VoxelConfig | None = None) -> np.ndarray:
    """Cell lengths from the three coordinate channels (robust inverse of `coordinate_channels`).

    Channel ``k`` is reduced to the median of each slice along axis ``k``; its slope is fitted
    through the origin over the central half of the slices (see the module docstring).

    Args:
        p: The coordinate channels ``[p_x, p_y, p_z]`` (a decoded tensor or a featurised one).
        config: The grid settings the channels were made with.

    Returns:
        ``(a, b, c)``. Units: A. Shapes: (3,) float64.

    Shapes:
        p: (3, d, d, d).

    Example:
        >>> from discovery.featurize.voxels import coordinate_channels
        >>> cfg = VoxelConfig()
        >>> lattice_from_coords(coordinate_channels([4.0, 5.0, 6.0], cfg), cfg).round(6).tolist()
        [4.0, 5.0, 6.0]
    """
    config = config or VoxelConfig()
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 4 or p.shape[0] != 3 or not (p.shape[1] == p.shape[2] == p.shape[3] == config.d):
        raise ValueError(f"coordinate channels must have shape (3, {config.d}, {config.d}, {config.d}), "
                         f"got {p.shape}")
    d = config.d
    lo, hi = d // 4, max(d // 4 + 1, (3 * d) // 4)
    index = np.arange(lo, hi, dtype=np.float64)
    slopes = np.empty(3)
    for k in range(3):
        profile = np.median(np.moveaxis(p[k], k, 0).reshape(d, -1), axis=1)[lo:hi]
        slopes[k] = float(profile @ index) / float(index @ index)
    return slopes * d / (1.0 + 2.0 * config.eps_frac)


# ----------------------------------------------------------------------------- segmentation


def _labels(species: np.ndarray) -> np.ndarray:
    """Integer labels from labels (d, d, d) or logits (n_classes, d, d, d)."""
    species = np.asarray(species)
    if species.ndim == 4:
        return species.argmax(axis=0).astype(np.int64)
    if species.ndim != 3:
        raise ValueError(f"species must be labels (d, d, d) or logits (C, d, d, d), got {species.shape}")
    return species.astype(np.int64)


#: Voxel-edge midpoints added around each hull vertex (skimage's ``offset_coordinates``).
_DIAMOND = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, -0.5, 0], [0, 0.5, 0], [0, 0, -0.5], [0, 0, 0.5]])


def _convexity(mask: np.ndarray) -> float:
    """Voxels of ``mask`` over voxels of its convex hull (1.0 for degenerate hulls).

    The same hull as ``skimage.morphology.convex_hull_image`` (vertices offset to the voxel-edge
    midpoints, voxel centres within 1e-10 of the hull count as inside), but the membership test is
    counted column by column (`_points_in_hull`) instead of testing every voxel against every facet
    in a Python loop; decoded atoms spent most of their watershed time there. A unit test compares
    the two.
    """
    from scipy.spatial import ConvexHull, QhullError

    coords = np.argwhere(mask).astype(np.float64)
    try:
        first = ConvexHull(coords)
        corners = np.unique((first.points[first.vertices][:, None, :] + _DIAMOND).reshape(-1, 3), axis=0)
        equations = ConvexHull(corners).equations
    except (QhullError, ValueError):  # flat or tiny shapes: nothing to split there
        return 1.0
    n_hull = _points_in_hull(equations, mask.shape)
    return float(np.count_nonzero(mask)) / n_hull if n_hull else 1.0


def _points_in_hull(equations: np.ndarray, shape: tuple[int, ...], tol: float = 1e-10) -> int:
    """Integer points ``i`` of the box ``shape`` with ``n . i + c < tol`` for every facet ``(n, c)``.

    Each column along the first axis meets the hull in one interval, whose bounds follow from the
    facets' inequalities solved for the first coordinate; only the number of points is needed.
    """
    n0 = equations[:, 0:1]
    j, k = np.indices(shape[1:], dtype=np.float64).reshape(2, 1, -1)
    rest = tol - (equations[:, 1:2] * j + equations[:, 2:3] * k + equations[:, 3:4])  # n0 * i < rest
    blocked = np.any(rest[np.abs(n0[:, 0]) < 1e-12] <= 0.0, axis=0)  # facets parallel to the columns
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rest / n0
    up, down = n0[:, 0] >= 1e-12, n0[:, 0] <= -1e-12
    hi = np.min(bound[up], axis=0, initial=np.inf)  # i < hi
    lo = np.max(bound[down], axis=0, initial=-np.inf)  # i > lo
    first = np.maximum(np.floor(lo) + 1, 0)
    last = np.minimum(np.ceil(hi) - 1, shape[0] - 1)
    return int(np.where(blocked, 0, np.clip(last - first + 1, 0, None)).sum())


def _split(mask: np.ndarray, depth: int, *, max_iters: int, min_convexity: float, min_voxels: int,
           voxels_per_atom: int) -> list[np.ndarray]:
    """Recursively split one padded component; returns boolean masks of the same shape."""
    from scipy import ndimage
    from skimage.measure import label
    from skimage.morphology import ball
    from skimage.segmentation import watershed

    count = int(np.count_nonzero(mask))
    if depth >= max_iters or count < 2 * voxels_per_atom or _convexity(mask) >= min_convexity:
        return [mask]
    markers, n = None, 0
    eroded = mask
    footprint = ball(1)
    for _ in range(max_iters):
        eroded = ndimage.binary_erosion(eroded, structure=footprint)
        lab, n = label(eroded, connectivity=1, return_num=True)
        if n >= 2:
            markers = lab
            break
        if n == 0:
            break
    if markers is None:
        return [mask]
    flooded = watershed(-ndimage.distance_transform_edt(mask), markers, mask=mask)
    out: list[np.ndarray] = []
    for k in range(1, n + 1):
        piece = flooded == k
        if np.count_nonzero(piece) < min_voxels:
            continue
        out.extend(_split(piece, depth + 1, max_iters=max_iters, min_convexity=min_convexity,
                          min_voxels=min_voxels, voxels_per_atom=voxels_per_atom))
    return out


def segment_atoms(
    occupancy_prob: np.ndarray,
    species: np.ndarray | None = None,
    config: VoxelConfig | None = None,
    threshold: float = 0.8,
    max_iters: int = 5,
    min_convexity: float = 0.8,
    min_voxels: int = 4,
    voxels_per_atom: int = 8,
    split_species: bool = False,
) -> list[np.ndarray]:
    """Voxel sets of the individual atoms: components of the occupancy, split by recursive watershed.

    Args:
        occupancy_prob: Atom-vs-background probability (the UNet's sigmoid head, or a 0/1 mask).
        species: Species labels or logits, used only with ``split_species``.
        config: Grid settings (only ``d`` is checked).
        threshold: Voxels with ``occupancy_prob >= threshold`` are atom voxels.
        max_iters: Deepest recursion, and most ``ball(1)`` erosions when looking for markers.
        min_convexity: A component with voxels / convex-hull voxels at least this is one atom.
        min_voxels: Components and pieces with fewer voxels are dropped (the released code drops
            components of 3 voxels or fewer).
        voxels_per_atom: A piece needs ``2 * voxels_per_atom`` voxels to be split again.
        split_species: Take connected components per species label, so touching atoms of
            different species never merge (see the module docstring).

    Returns:
        One int64 array of voxel indices per segment, in raster order of first voxel.

    Shapes:
        occupancy_prob: (d, d, d); species: (d, d, d) labels or (C, d, d, d) logits;
        each segment: (n_voxels, 3).
    """
    from skimage.measure import label, regionprops

    occ = np.asarray(occupancy_prob)
    if occ.ndim != 3:
        raise ValueError(f"occupancy_prob must have shape (d, d, d), got {occ.shape}")
    if config is not None and occ.shape != (config.d,) * 3:
        raise ValueError(f"occupancy_prob has shape {occ.shape}, config expects d={config.d}")
    mask = occ >= threshold
    if species is not None and split_species:
        labs = _labels(species)
        if labs.shape != mask.shape:
            raise ValueError(f"species labels {labs.shape} and occupancy {mask.shape} differ in shape")
        base = np.where(mask, labs + 1, 0)  # +1 keeps mask voxels labelled background as foreground
    else:
        base = mask.astype(np.int64)
    components = label(base, background=0, connectivity=1)
    segments: list[np.ndarray] = []
    for region in regionprops(components):
        if region.area < min_voxels:
            continue
        local = np.pad(region.image, 1)
        offset = np.array([s.start for s in region.slice], dtype=np.int64) - 1
        for piece in _split(local, 0, max_iters=max_iters, min_convexity=min_convexity,
                            min_voxels=min_voxels, voxels_per_atom=voxels_per_atom):
            segments.append(np.argwhere(piece).astype(np.int64) + offset)
    logger.debug("segment_atoms: %d components -> %d segments", components.max(), len(segments))
    return segments


# ----------------------------------------------------------------------------- atoms and structures


def atoms_from_segments(
    segments: Sequence[np.ndarray],
    species_labels: np.ndarray,
    lattice_abc: Sequence[float],
    config: VoxelConfig | None = None,
    return_sizes: bool = False,
) -> tuple[np.ndarray, ...]:
    """One atom per segment: majority species and centroid position.

    A segment whose voxels are all labelled background gives no atom.

    Args:
        segments: Voxel index arrays from `segment_atoms`.
        species_labels: Species labels (d, d, d) or logits (C, d, d, d).
        lattice_abc: Cell lengths. Units: A.
        config: Grid settings.
        return_sizes: Also return each atom's segment size in voxels.

    Returns:
        ``(numbers, cart)`` (and ``sizes`` when asked): atomic numbers and Cartesian positions
        ``x = idx * delta - eps * a + delta / 2`` with ``delta = a (1 + 2 eps) / d``.

    Units:
        cart in A.

    Shapes:
        numbers (n_atoms,) int64; cart (n_atoms, 3) float64.
    """
    config = config or VoxelConfig()
    labels = _labels(species_labels)
    abc = np.asarray(lattice_abc, dtype=np.float64)
    delta = voxel_size(abc, config)
    numbers, cart, sizes = [], [], []
    for seg in segments:
        seg = np.asarray(seg, dtype=np.int64)
        votes = labels[seg[:, 0], seg[:, 1], seg[:, 2]]
        votes = votes[votes > 0]
        if votes.size == 0:
            continue
        numbers.append(int(np.bincount(votes).argmax()))
        cart.append(seg.mean(axis=0) * delta - config.eps_frac * abc + delta / 2.0)
        sizes.append(len(seg))
    out = (np.asarray(numbers, dtype=np.int64), np.asarray(cart, dtype=np.float64).reshape(-1, 3))
    return (*out, np.asarray(sizes, dtype=np.int64)) if return_sizes else out


def drop_periodic_images(numbers: np.ndarray, cart: np.ndarray, sizes: np.ndarray, lattice_abc: Sequence[float],
                         tol_a: float = IMAGE_TOL_A) -> tuple[np.ndarray, np.ndarray]:
    """Remove atoms that are another atom's periodic image (see the module docstring).

    Two atoms of the same species are one atom seen twice when they are closer than ``tol_a`` only
    across the cell boundary (minimum-image distance below ``tol_a``, direct distance not); the
    atom of the larger segment stays. Atoms that close *inside* the cell, or of different species,
    are left alone.

    Shapes: numbers (n,), cart (n, 3) in A, sizes (n,) -> (m,), (m, 3).
    """
    abc = np.asarray(lattice_abc, dtype=np.float64)
    frac = cart / abc
    kept: list[int] = []
    for i in np.argsort(-np.asarray(sizes), kind="stable"):
        diff = frac[kept] - frac[i]
        same = numbers[kept] == numbers[i]
        direct = np.linalg.norm(diff * abc, axis=1)
        wrapped = np.linalg.norm((diff - np.round(diff)) * abc, axis=1)
        if not np.any(same & (wrapped < tol_a) & (direct >= tol_a)):
            kept.append(int(i))
    kept.sort()
    return numbers[kept], cart[kept]


def decode_structure(
    x_channels: np.ndarray,
    species_labels: np.ndarray,
    occupancy_prob: np.ndarray,
    config: VoxelConfig | None = None,
    lattice_abc: Sequence[float] | None = None,
    **segment_kwargs,
):
    """A crystal from decoded channels and UNet outputs.

    Args:
        x_channels: ``[M, p_x, p_y, p_z]`` (4, d, d, d) or just ``p`` (3, d, d, d).
        species_labels: Species labels (d, d, d) or logits (C, d, d, d).
        occupancy_prob: Atom probability (d, d, d).
        config: Grid settings.
        lattice_abc: The cell lengths when already read from ``x_channels`` (`lattice_from_coords`).
        **segment_kwargs: Passed to `segment_atoms` (``threshold``, ``min_convexity``, ...).

    Returns:
        A pymatgen ``Structure`` on an orthogonal (a, b, c, 90, 90, 90) lattice with sites wrapped
        into the cell, or ``None`` when no atom was found or the lattice is degenerate.
    """
    from pymatgen.core import Lattice, Structure

    config = config or VoxelConfig()
    x_channels = np.asarray(x_channels)
    p = x_channels[1:] if x_channels.shape[0] == 4 else x_channels
    abc = lattice_from_coords(p, config) if lattice_abc is None else np.asarray(lattice_abc, dtype=np.float64)
    if not np.all(np.isfinite(abc)) or np.any(abc <= 0.0):
        logger.debug("decode_structure: degenerate lattice %s", abc)
        return None
    segments = segment_atoms(occupancy_prob, species_labels, config, **segment_kwargs)
    numbers, cart, sizes = atoms_from_segments(segments, species_labels, abc, config, return_sizes=True)
    numbers, cart = drop_periodic_images(numbers, cart, sizes, abc)
    if len(numbers) == 0:
        return None
    return Structure(Lattice.orthorhombic(*abc), numbers.tolist(), cart, coords_are_cartesian=True,
                     to_unit_cell=True)


def is_valid(structure) -> bool:
    """At least one site and no two sites closer than 0.5 A
    (`discovery.structures.structural_problem`)."""
    from discovery.structures import structural_problem

    return structure is not None and structural_problem(structure, 0.5) is None


# ----------------------------------------------------------------------------- evaluation


def site_emd(pred_structure, true_structure, periodic: bool = True) -> float:
    """Mean distance of optimally matched sites (the ICSG3D atom-position "EMD", MODELS.md 1.6).

    Sites are matched one to one by ``scipy.optimize.linear_sum_assignment`` on the distance matrix,
    species ignored; the sum of matched distances is divided by min(n_pred, n_true).

    Args:
        pred_structure: Decoded structure.
        true_structure: Reference structure, in the same frame (for featurised data: the output of
            `discovery.featurize.voxels.prepare_structure`, possibly rotated).
        periodic: Minimum-image distances in the true lattice (default); ``False`` is the plain
            Euclidean distance between Cartesian coordinates of the released code.

    Returns:
        The mean matched distance, NaN when either structure has no site. Units: A.
    """
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred_structure.cart_coords, dtype=np.float64)
    true = np.asarray(true_structure.cart_coords, dtype=np.float64)
    if len(pred) == 0 or len(true) == 0:
        return math.nan
    diff = pred[:, None, :] - true[None, :, :]
    if periodic:
        matrix = true_structure.lattice.matrix
        frac = diff @ np.linalg.inv(matrix)
        diff = (frac - np.round(frac)) @ matrix
    cost = np.linalg.norm(diff, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum() / min(len(pred), len(true)))
