"""Training data of the crystal GAN: the ``.npy`` file, hold-out compositions, augmentation.

Reading (`load_matrices`): ``numpy.load(path, allow_pickle=False)``; the array must be a finite
float array of shape ``(N, rows, 3)`` with ``rows = 2 + sum(max_count)`` of the configured blocks;
anything else is one `DataError` line naming the file.

Hold-out (`choose_holdout`): the configured compositions, or by default the paper's test
composition (Mg6Mn3O11, written with the training elements) plus ``holdout_extra`` compositions
drawn with ``holdout_seed`` among those with 2 to 10 known structures and at most 20 atoms (a
best-known structure among several, cheap to relax for the benchmark).

Augmentation (`augment`, MODELS.md 2.2, the authors' ``6.data_augmentation_mgmno.py``), per
composition with c structures, to N samples:

- axis permutations act as rotations: 3 extra copies (x<->y, x<->z, y<->z) when c <= N/4, 1 extra
  (x<->z) when c <= N/2, none otherwise; a permutation swaps the columns of every row, cell rows
  included, i.e. it relabels the lattice vectors;
- every (rotated) structure is kept and gets ``n_t = int(N / (c (n_r + 1)) - 1)`` translated copies;
  the rest up to N are translated copies of randomly chosen originals;
- a translated copy shifts all fractional coordinates by one uniform random vector in [0, 1)^3
  (modulo 1; the original adds a Cartesian vector of random fractions of the cell-vector lengths and
  re-featurises, the same rigid translation up to its distribution) and then permutes the rows
  within each block at random.

Deviation: a composition with c >= N structures is *skipped* by the original script (its
``continue``), which at N = 100 would drop 8 of the 106 Mg-Mn-O compositions and 1,611 of 2,556
structures; here it is subsampled to N structures instead (seeded).

Randomness: only the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discovery.errors import DataError
from discovery.models.crystal_gan.representation import Blocks, counts_from_occupancy, from_box, occupied_rows, to_box

logger = logging.getLogger(__name__)

#: Default hold-out rule: known structures per composition, and atoms per cell.
HOLDOUT_MIN_STRUCTURES = 2
HOLDOUT_MAX_STRUCTURES = 10
HOLDOUT_MAX_ATOMS = 20
#: The paper's test composition Mg6Mn3O11 as (A, B, X) counts.
PAPER_TEST_COUNTS = (6, 3, 11)
_AXIS_SWAPS = ((1, 0, 2), (2, 1, 0), (0, 2, 1))  # x<->y, x<->z, y<->z


@dataclass
class CrystalGANData:
    """Matrices read from a file, with their per-role counts.

    Attributes:
        path: the file.
        matrices: Shapes: ``(N, rows, 3)`` float64.
        counts: Shapes: ``(N, n_roles)`` int, atoms per role (row sums above the threshold).
    """

    path: Path
    matrices: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.matrices)

    def compositions(self) -> dict[tuple[int, ...], np.ndarray]:
        """Count tuple -> indices of its structures, sorted by counts."""
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, c in enumerate(map(tuple, self.counts.tolist())):
            groups[c].append(i)
        return {k: np.array(groups[k]) for k in sorted(groups)}


def load_matrices(path: str | Path, blocks: Blocks, threshold: float = 0.4) -> CrystalGANData:
    """Read and check a ``.npy`` file of matrices.

    Raises:
        DataError: one line naming the file: missing, unreadable, an object array, wrong shape,
            non-finite values, or a structure with an empty block.
    """
    path = Path(path)
    rows = blocks.n_rows
    if not path.is_file():
        raise DataError(f"{path}: crystal GAN data file not found (expected a .npy array (N, {rows}, 3))")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path}: an object array (pickled Python objects); expected a float array "
                            f"(N, {rows}, 3)") from None
        raise DataError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())[:160]})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({type(exc).__name__})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: holds several arrays (an .npz?); expected one float array (N, {rows}, 3)")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: dtype {arr.dtype} is not numeric; expected a float array (N, {rows}, 3)")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (rows, 3) or arr.shape[0] == 0:
        raise DataError(f"{path}: shape {arr.shape}, expected (N, {rows}, 3) for blocks "
                        f"{'/'.join(f'{e}{m}' for e, m in zip(blocks.elements, blocks.max_counts, strict=True))}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).all(axis=(1, 2))
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} matrices have NaN or infinite entries (first: {int(np.argmax(bad))})")
    counts = counts_from_occupancy(occupied_rows(arr, blocks, threshold), blocks)
    empty = (counts == 0).any(axis=1)
    if empty.all():
        raise DataError(f"{path}: no matrix has an atom in every block; not in this representation")
    if empty.any():
        logger.warning("%s: %d matrices with an empty block skipped", path, int(empty.sum()))
        arr, counts = arr[~empty], counts[~empty]
    return CrystalGANData(path, arr, counts.astype(int))


def composition_key(formula: str, blocks: Blocks) -> tuple[int, ...]:
    """Per-role counts of a cell formula such as ``Mg6Mn3O11`` (not reduced).

    Raises:
        ValueError: unparsable formula or an element without a role.
    """
    from pymatgen.core import Composition

    return blocks.counts_of(Composition(formula).get_el_amt_dict())


def composition_formula(counts: tuple[int, ...] | np.ndarray, blocks: Blocks) -> str:
    """``Mg6Mn3O11`` from per-role counts (training elements, block order, not reduced)."""
    return "".join(f"{el}{int(n)}" for el, n in zip(blocks.elements, counts, strict=True) if int(n))


def choose_holdout(data: CrystalGANData, blocks: Blocks, holdout: tuple[str, ...] | None, extra: int,
                   seed: int, paper_test: tuple[int, ...] | None = PAPER_TEST_COUNTS) -> list[tuple[int, ...]]:
    """The held-out compositions as per-role counts (see the module docstring).

    Raises:
        DataError: a configured composition that is not in the data.
    """
    groups = data.compositions()
    if holdout is not None:
        out = []
        for formula in holdout:
            try:
                key = composition_key(formula, blocks)
            except ValueError as exc:
                raise DataError(f"{data.path}: hold-out composition {formula!r}: {exc}") from None
            if key not in groups:
                raise DataError(f"{data.path}: hold-out composition {formula} has no structure in the data")
            out.append(key)
        return out
    chosen: list[tuple[int, ...]] = []
    if paper_test is not None and tuple(paper_test) in groups:
        chosen.append(tuple(paper_test))
    pool = [k for k, idx in groups.items() if HOLDOUT_MIN_STRUCTURES <= len(idx) <= HOLDOUT_MAX_STRUCTURES
            and sum(k) <= HOLDOUT_MAX_ATOMS and k not in chosen]
    rng = np.random.default_rng(seed)
    if pool and extra:
        picks = rng.choice(len(pool), size=min(extra, len(pool)), replace=False)
        chosen += [pool[i] for i in sorted(picks)]
    return chosen


def augment(matrices: np.ndarray, counts: np.ndarray, blocks: Blocks, n_per_composition: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augment every composition to ``n_per_composition`` samples (see the module docstring).

    Returns:
        ``(matrices, counts)``; Shapes: ``(n_compositions * N, rows, 3)``, ``(n_compositions * N, n_roles)``.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, c in enumerate(map(tuple, counts.tolist())):
        groups[c].append(i)
    n = n_per_composition
    out, out_counts = [], []
    for key in sorted(groups):
        idx = np.array(groups[key])
        c = len(idx)
        if c >= n:
            images = matrices[rng.choice(idx, size=n, replace=False)]
        else:
            n_r = 3 if c <= n / 4 else (1 if c <= n / 2 else 0)
            rotated = [matrices[idx]]
            swaps = _AXIS_SWAPS if n_r == 3 else ((_AXIS_SWAPS[1],) if n_r == 1 else ())
            rotated += [matrices[idx][:, :, list(p)] for p in swaps]
            base = np.concatenate(rotated)
            n_t = int(n / len(base) - 1)
            parts = [base]
            for _ in range(n_t):
                parts.append(translate(base, blocks, rng))
            rest = n - len(base) * (n_t + 1)
            if rest > 0:
                parts.append(translate(matrices[rng.choice(idx, size=rest)], blocks, rng))
            images = np.concatenate(parts)
        out.append(images)
        out_counts.append(np.tile(np.array(key), (len(images), 1)))
    return np.concatenate(out), np.concatenate(out_counts)


def translate(matrices: np.ndarray, blocks: Blocks, rng: np.random.Generator) -> np.ndarray:
    """Random rigid translation of each structure, then a random row permutation per block."""
    x = np.array(matrices, dtype=float, copy=True)
    occ = occupied_rows(x, blocks)
    shift = rng.random((len(x), 1, 3))
    atoms = x[:, 2:]
    moved = to_box(np.mod(from_box(atoms) + shift, 1.0))
    x[:, 2:] = np.where(occ[..., None], moved, 0.0)
    for s in blocks.slices:
        perm = np.argsort(rng.random((len(x), s.stop - s.start)), axis=1)
        x[:, s] = np.take_along_axis(x[:, s], perm[..., None], axis=1)
    return x
