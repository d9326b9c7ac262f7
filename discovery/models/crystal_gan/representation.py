"""The crystal GAN's matrix representation (MODELS.md 2.1): encode a structure, decode a matrix.

Shapes: a structure is a float matrix ``(rows, 3)`` with ``rows = 2 + sum(max_count)`` (30 for
Mg 8 / Mn 8 / O 12):

- row 0: lattice lengths a, b, c divided by 30 A; row 1: angles alpha, beta, gamma divided by 180 deg;
- then one block of ``max_count`` rows per role, in `Blocks` order: the fractional coordinates f of
  that role's atoms in the "15 A box" scaling ``u = (10 f + 2.5) / 15`` (so an atom row lies in
  [1/6, 5/6]^3 and sums to at least 0.5), occupied rows first, unused rows exactly zero.

Decoding: lengths = row 0 x 30, angles = row 1 x 180; in each block a row is an atom when its sum
exceeds ``threshold`` (0.4) or, for the Q-network decoder, when the Q-network's per-row occupancy
says so; ``f = (15 u - 2.5) / 10``. A block left without atoms gets one atom at u = (0.1667, 0.1667,
0.1667), as the authors' ``remove_zero_padding`` does (so every role is present).

Units: lengths in A, angles in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

LENGTH_SCALE_A = 30.0
ANGLE_SCALE_DEG = 180.0
BOX_INNER_A = 10.0
BOX_OUTER_A = 15.0
BOX_SHIFT_A = 2.5
#: Coordinate of the atom inserted into an empty block (the original's 0.1667).
EMPTY_BLOCK_U = 0.1667


@dataclass(frozen=True)
class Blocks:
    """The element blocks of a representation.

    Attributes:
        roles: role labels (``A``, ``B``, ``X``).
        elements: the training element of each role.
        max_counts: rows of each block.
        signs: ``cation`` or ``anion`` per role.
    """

    roles: tuple[str, ...]
    elements: tuple[str, ...]
    max_counts: tuple[int, ...]
    signs: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, blocks: Sequence) -> Blocks:
        """From `~discovery.models.crystal_gan.config.ElementBlock` objects or mappings."""
        get = (lambda b, k: b[k]) if blocks and isinstance(blocks[0], Mapping) else getattr
        return cls(tuple(get(b, "role") for b in blocks), tuple(get(b, "element") for b in blocks),
                   tuple(int(get(b, "max_count")) for b in blocks), tuple(get(b, "sign") for b in blocks))

    @property
    def n_rows(self) -> int:
        return 2 + sum(self.max_counts)

    @property
    def slices(self) -> tuple[slice, ...]:
        """Row slices of each block in the full matrix."""
        out, start = [], 2
        for m in self.max_counts:
            out.append(slice(start, start + m))
            start += m
        return tuple(out)

    def counts_of(self, composition: Mapping[str, float], species: Mapping[str, str] | None = None) -> tuple[int, ...]:
        """Per-role atom counts of a cell composition (element -> amount).

        ``species`` maps role -> element when the composition uses other elements than the
        training ones (substitution).

        Raises:
            ValueError: an element with no role, a non-integer amount, or too many atoms of a role.
        """
        role_element = dict(zip(self.roles, self.elements, strict=True))
        if species:
            role_element.update(species)
        by_element = {el: role for role, el in role_element.items()}
        counts = dict.fromkeys(self.roles, 0)
        for el, amount in composition.items():
            el = str(el)
            if el not in by_element:
                raise ValueError(f"element {el} has no role (roles: {role_element})")
            if abs(amount - round(amount)) > 1e-6:
                raise ValueError(f"{el}: {amount} atoms is not an integer count")
            counts[by_element[el]] += int(round(amount))
        for role, m in zip(self.roles, self.max_counts, strict=True):
            if counts[role] > m:
                raise ValueError(f"{counts[role]} atoms of role {role} ({role_element[role]}), at most {m}")
        return tuple(counts[r] for r in self.roles)


def to_box(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates in [0, 1) -> the 15 A box scaling u in [1/6, 5/6)."""
    return (BOX_INNER_A * np.asarray(frac, dtype=float) + BOX_SHIFT_A) / BOX_OUTER_A


def from_box(u: np.ndarray) -> np.ndarray:
    """The 15 A box scaling u -> fractional coordinates."""
    return (BOX_OUTER_A * np.asarray(u, dtype=float) - BOX_SHIFT_A) / BOX_INNER_A


def encode(structure: Structure, blocks: Blocks, species: Mapping[str, str] | None = None) -> np.ndarray:
    """The matrix of a structure.

    Args:
        structure: a pymatgen Structure whose elements all have a role.
        blocks: the representation's blocks.
        species: role -> element when the structure uses other elements than the training ones.

    Returns:
        Shapes: ``(blocks.n_rows, 3)``, float64.

    Raises:
        ValueError: an element with no role or more atoms of a role than its block has rows.
    """
    role_element = dict(zip(blocks.roles, blocks.elements, strict=True))
    if species:
        role_element.update(species)
    blocks.counts_of(structure.composition.element_composition.get_el_amt_dict(), species)  # checks
    out = np.zeros((blocks.n_rows, 3))
    lat = structure.lattice
    out[0] = np.array(lat.abc) / LENGTH_SCALE_A
    out[1] = np.array(lat.angles) / ANGLE_SCALE_DEG
    frac = np.mod(structure.frac_coords, 1.0)
    frac[frac >= 1.0 - 1e-12] = 0.0
    symbols = [site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie)
               for site in structure]
    for role, rows in zip(blocks.roles, blocks.slices, strict=True):
        idx = [i for i, s in enumerate(symbols) if s == role_element[role]]
        out[rows.start:rows.start + len(idx)] = to_box(frac[idx])
    return out


def occupied_rows(matrix: np.ndarray, blocks: Blocks, threshold: float = 0.4) -> np.ndarray:
    """Boolean per atom row (``rows - 2``): the row sum exceeds ``threshold`` (the 0.4 rule)."""
    return np.asarray(matrix, dtype=float)[..., 2:, :].sum(-1) > threshold


def forced_occupancy(matrix: np.ndarray, blocks: Blocks, counts: Sequence[int]) -> np.ndarray:
    """Per atom row, True for the ``counts[k]`` rows of block ``k`` with the largest row sums: the
    decoded cell has exactly the requested composition (our count-forced decoding; the paper reads
    the counts from the matrix with the 0.4 rule or the Q-network).

    Shapes: matrix ``(rows, 3)``, counts ``(n_roles,)`` -> ``(rows - 2,)`` bool.
    """
    x = np.asarray(matrix, dtype=float).reshape(blocks.n_rows, 3)
    occ = np.zeros(blocks.n_rows - 2, dtype=bool)
    for k, rows in zip(counts, blocks.slices, strict=True):
        top = np.argsort(-x[rows].sum(axis=1), kind="stable")[: int(k)]
        occ[rows.start - 2 + top] = True
    return occ


def counts_from_occupancy(occupancy: np.ndarray, blocks: Blocks) -> np.ndarray:
    """Per-role counts of occupancy masks; shapes ``(..., rows - 2)`` -> ``(..., n_roles)``."""
    occ = np.asarray(occupancy, dtype=bool)
    return np.stack([occ[..., s.start - 2:s.stop - 2].sum(-1) for s in blocks.slices], axis=-1)


@dataclass
class Decoded:
    """One decoded matrix.

    Attributes:
        structure: the pymatgen Structure, or None when the cell parameters describe no lattice.
        counts: per-role atom counts of the structure (after filling empty blocks).
        row_counts: per-role occupied rows before filling empty blocks.
        problem: why there is no structure.
    """

    structure: Structure | None
    counts: tuple[int, ...]
    row_counts: tuple[int, ...]
    problem: str | None = None


def decode(matrix: np.ndarray, blocks: Blocks, species: Mapping[str, str] | None = None,
           occupancy: np.ndarray | None = None, threshold: float = 0.4) -> Decoded:
    """A matrix back to a structure (see the module docstring).

    Args:
        matrix: Shapes: ``(rows, 3)`` (a leading channel axis of size 1 is accepted).
        blocks: the representation's blocks.
        species: role -> element to place on each role (default: the training elements).
        occupancy: per atom row, True for an atom (the Q-network decoder); default: the 0.4 rule.
        threshold: the row-sum rule's threshold.
    """
    from pymatgen.core import Lattice, Structure

    x = np.asarray(matrix, dtype=float).reshape(blocks.n_rows, 3)
    role_element = dict(zip(blocks.roles, blocks.elements, strict=True))
    if species:
        role_element.update(species)
    occ = occupied_rows(x, blocks, threshold) if occupancy is None else np.asarray(occupancy, dtype=bool)
    lengths = x[0] * LENGTH_SCALE_A
    angles = x[1] * ANGLE_SCALE_DEG
    symbols: list[str] = []
    coords: list[np.ndarray] = []
    counts, row_counts = [], []
    for role, rows in zip(blocks.roles, blocks.slices, strict=True):
        mask = occ[rows.start - 2:rows.stop - 2]
        u = x[rows][mask]
        row_counts.append(int(mask.sum()))
        if len(u) == 0:
            u = np.full((1, 3), EMPTY_BLOCK_U)
        counts.append(len(u))
        symbols += [role_element[role]] * len(u)
        coords.append(from_box(u))
    result = Decoded(None, tuple(counts), tuple(row_counts))
    if not (np.all(np.isfinite(lengths)) and np.all(lengths > 1e-3) and np.all(np.isfinite(angles))):
        result.problem = f"lengths {np.round(lengths, 3).tolist()} A are not a cell"
        return result
    if not _angles_ok(angles):
        result.problem = f"angles {np.round(angles, 1).tolist()} deg are not a cell"
        return result
    try:
        lattice = Lattice.from_parameters(*lengths, *angles)
        result.structure = Structure(lattice, symbols, np.vstack(coords))
    except Exception as exc:  # pymatgen raises several types for degenerate cells
        result.problem = f"cell: {type(exc).__name__}: {exc}"
    return result


def _angles_ok(angles_deg: np.ndarray) -> bool:
    """The three angles describe a cell of positive volume."""
    a, b, g = np.radians(angles_deg)
    if min(a, b, g) <= 0 or max(a, b, g) >= math.pi:
        return False
    ca, cb, cg = math.cos(a), math.cos(b), math.cos(g)
    return 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 1e-8
