"""Crystal graphs for CGCNN (Xie & Grossman, PRL 120, 145301, 2018).

A crystal becomes a directed multigraph: one node per site of the cell, one edge from each of the
``max_neighbors`` nearest periodic images within ``cutoff_a`` to the centre atom. Node features are
the CGCNN one-hot element vector, rebuilt from pymatgen's element data; edge features are a Gaussian
expansion of the interatomic distance.

Atom features follow the layout of the released ``atom_init.json`` (92 values), which differs from
Table S2 of the paper (93): lanthanides La-Yb and actinides Ac-No share an extra group bin 0 instead
of having their own periods 8 and 9 (txie-93/cgcnn issue #2). Blocks, in order:

=====================  ======  ===========================================  ==================
property               bins    range                                        source (pymatgen)
=====================  ======  ===========================================  ==================
group number           19      0 (f-block), 1..18                           ``Element.group``
period                 7       1..7                                         ``Element.row``
electronegativity      10      0.5..4.0 (Pauling)                           ``Element.X``
covalent radius        10      25..250 pm                                   Cordero 2008 table
valence electrons      12      1..12                                        see `_valence_electrons`
first ionisation       10      ln(E/eV) in 1.3..3.3                         ``ionization_energy``
electron affinity      10      -3..3.7 eV                                   ``electron_affinity``
block                  4       s, p, d, f                                   ``Element.block``
atomic volume          10      ln(V/(cm^3/mol)) in 1.5..4.3                 ``Molar volume``
=====================  ======  ===========================================  ==================

Continuous properties are cut into equal-width bins over the range and clipped at its ends; a
property pymatgen has no value for (noble-gas electronegativity, heavy-actinide radii) leaves its
block all zeros.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from functools import lru_cache

import numpy as np
import torch
from pymatgen.core import Structure
from pymatgen.core.periodic_table import Element
from torch_geometric.data import Data

from discovery.errors import DataError

logger = logging.getLogger(__name__)

#: (name, number of bins) of each one-hot block, in the order they appear in the vector.
ATOM_FEATURE_BLOCKS: tuple[tuple[str, int], ...] = (
    ("group", 19),
    ("period", 7),
    ("electronegativity", 10),
    ("covalent_radius", 10),
    ("valence_electrons", 12),
    ("first_ionization_energy", 10),
    ("electron_affinity", 10),
    ("block", 4),
    ("atomic_volume", 10),
)
ATOM_FEATURE_DIM: int = sum(n for _, n in ATOM_FEATURE_BLOCKS)  # 92

#: Width and spacing of the Gaussian distance expansion (the CGCNN defaults). Units: A.
GAUSSIAN_STEP_A: float = 0.2
GAUSSIAN_WIDTH_A: float = 0.2

#: An atom with no neighbour within the cutoff is searched again up to this multiple of it.
MAX_RADIUS_FACTOR: float = 4.0

_BLOCKS = ("s", "p", "d", "f")


def _one_hot_bin(value: float | None, lo: float, hi: float, n: int) -> np.ndarray:
    """Equal-width bins over [lo, hi], clipped at both ends; ``None``/NaN gives all zeros."""
    out = np.zeros(n, dtype=np.float32)
    if value is None or not math.isfinite(value):
        return out
    idx = int(math.floor((value - lo) / (hi - lo) * n))
    out[min(max(idx, 0), n - 1)] = 1.0
    return out


def _one_hot_index(index: int | None, n: int, offset: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    if index is not None and 0 <= index - offset < n:
        out[index - offset] = 1.0
    return out


def _quiet(getter):
    """Call ``getter()``; pymatgen warns or raises for missing data, both mean 'no value'."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = getter()
        except (KeyError, ValueError, TypeError, AttributeError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _valence_electrons(el: Element) -> int:
    """Valence electron count on the CGCNN 1..12 scale.

    s- and d-block: the group number (H 1, Zn 12); p-block: group - 10 (He 2, Cl 7, Ne 8);
    f-block (La-Yb, Ac-No): electrons outside the noble-gas core, clipped to 12 by the binning.
    """
    if el.symbol == "He":
        return 2
    if el.block in ("s", "d"):
        return int(el.group)
    if el.block == "p":
        return int(el.group) - 10
    # f-block: "[Xe].4f7.5d1.6s2" -> 7 + 1 + 2
    tokens = el.electronic_structure.split(".")
    return sum(int(m.group(1)) for t in tokens if (m := re.fullmatch(r"\d+[spdfg](\d+)", t)))


@lru_cache(maxsize=None)
def _covalent_radii_a() -> dict[str, float]:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return dict(CovalentRadius.radius)


@lru_cache(maxsize=None)
def atom_features(symbol: str) -> np.ndarray:
    """The 92-value CGCNN one-hot vector of one element (cached per element).

    Args:
        symbol: element symbol, e.g. ``"Na"``.

    Returns:
        A read-only float32 array. Shapes: (92,).
    """
    el = Element(symbol)
    group_bin = 0 if el.block == "f" else int(el.group)
    radius_a = _covalent_radii_a().get(el.symbol)
    ie = _quiet(lambda: el.ionization_energy)
    volume = _quiet(lambda: el.data["Molar volume"])
    parts = [
        _one_hot_index(group_bin, 19),
        _one_hot_index(int(el.row), 7, offset=1),
        _one_hot_bin(_quiet(lambda: el.X), 0.5, 4.0, 10),
        _one_hot_bin(None if radius_a is None else 100.0 * radius_a, 25.0, 250.0, 10),
        _one_hot_index(min(max(_valence_electrons(el), 1), 12), 12, offset=1),
        _one_hot_bin(math.log(ie) if ie and ie > 0 else None, 1.3, 3.3, 10),
        _one_hot_bin(_quiet(lambda: el.electron_affinity), -3.0, 3.7, 10),
        _one_hot_index(_BLOCKS.index(el.block) if el.block in _BLOCKS else None, 4),
        _one_hot_bin(math.log(volume) if volume and volume > 0 else None, 1.5, 4.3, 10),
    ]
    vec = np.concatenate(parts)
    assert vec.shape == (ATOM_FEATURE_DIM,)
    vec.setflags(write=False)
    return vec


def gaussian_centres(cutoff_a: float, step_a: float = GAUSSIAN_STEP_A) -> np.ndarray:
    """Centres of the distance expansion: 0, step, ..., cutoff. Units: A. Shapes: (n_gauss,)."""
    n = int(round(cutoff_a / step_a)) + 1
    return np.arange(n, dtype=np.float64) * step_a


def edge_feature_dim(cutoff_a: float) -> int:
    """Number of Gaussian centres for ``cutoff_a`` (41 for 8 A)."""
    return len(gaussian_centres(cutoff_a))


def gaussian_expand(distances_a: np.ndarray, cutoff_a: float,
                    width_a: float = GAUSSIAN_WIDTH_A) -> np.ndarray:
    """exp(-(d - mu_k)^2 / width^2) for every distance and centre.

    Args:
        distances_a: interatomic distances. Units: A. Shapes: (n_edges,).
        cutoff_a: last centre. Units: A.
        width_a: Gaussian width. Units: A.

    Returns:
        float32 array. Shapes: (n_edges, n_gauss).
    """
    mu = gaussian_centres(cutoff_a)
    d = np.asarray(distances_a, dtype=np.float64)[:, None]
    return np.exp(-((d - mu[None, :]) ** 2) / width_a**2).astype(np.float32)


def _nearest(centres: np.ndarray, points: np.ndarray, images: np.ndarray, dists: np.ndarray,
             max_neighbors: int) -> np.ndarray:
    """Indices of the ``max_neighbors`` nearest entries per centre, ties broken deterministically."""
    order = np.lexsort((images[:, 2], images[:, 1], images[:, 0], points, np.round(dists, 8), centres))
    sorted_centres = centres[order]
    first = np.searchsorted(sorted_centres, sorted_centres, side="left")
    rank = np.arange(len(order)) - first
    return order[rank < max_neighbors]


def periodic_neighbors(structure: Structure, cutoff_a: float, max_neighbors: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``max_neighbors`` nearest periodic neighbours of every site within ``cutoff_a``.

    An atom with fewer neighbours in range keeps what is there. An atom with none is searched again
    with the radius doubled (up to ``MAX_RADIUS_FACTOR * cutoff_a``), so every node gets messages.

    Args:
        structure: the periodic crystal.
        cutoff_a: search radius. Units: A.
        max_neighbors: neighbours kept per atom.

    Returns:
        ``(centres, neighbours, distances, images)`` sorted by centre, then distance.
        Shapes: (n_edges,), (n_edges,), (n_edges,), (n_edges, 3). Units: distances in A,
        images in lattice vectors.

    Raises:
        DataError: an atom has no neighbour even within ``MAX_RADIUS_FACTOR * cutoff_a``.
    """
    n_sites = len(structure)
    centres, points, images, dists = structure.get_neighbor_list(cutoff_a)
    keep = _nearest(centres, points, images, dists, max_neighbors)
    found = [(centres[keep], points[keep], dists[keep], images[keep])]

    lonely = np.setdiff1d(np.arange(n_sites), centres)
    radius = cutoff_a
    while lonely.size and radius < MAX_RADIUS_FACTOR * cutoff_a:
        radius = min(2.0 * radius, MAX_RADIUS_FACTOR * cutoff_a)
        logger.warning("%s: %d atom(s) have no neighbour within %.1f A; searching %.1f A",
                       structure.composition.reduced_formula, lonely.size, cutoff_a, radius)
        c, p, im, d = structure.get_neighbor_list(radius, sites=[structure[int(i)] for i in lonely])
        c = lonely[c]
        k = _nearest(c, p, im, d, max_neighbors)
        found.append((c[k], p[k], d[k], im[k]))
        lonely = np.setdiff1d(lonely, c)
    if lonely.size:
        raise DataError(
            f"{structure.composition.reduced_formula}: site(s) {lonely.tolist()} have no neighbour "
            f"within {MAX_RADIUS_FACTOR * cutoff_a:.1f} A; expected a condensed crystal"
        )

    c, p, d, im = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((np.round(d, 8), c))
    return c[order].astype(np.int64), p[order].astype(np.int64), d[order], im[order].astype(np.int64)


def structure_to_graph(structure: Structure, cutoff_a: float = 8.0, max_neighbors: int = 12,
                       y: float | None = None) -> Data:
    """The CGCNN crystal graph of one structure.

    Edges point from neighbour to centre (PyG's source-to-target flow), so a convolution
    aggregates each atom's neighbours into it. Periodic images of an atom appear as repeated
    (or, in a one-atom cell, self-loop) edges with their own distances.

    Args:
        structure: the periodic crystal.
        cutoff_a: neighbour search radius and last Gaussian centre. Units: A.
        max_neighbors: neighbours kept per atom.
        y: optional regression target stored as ``data.y``.

    Returns:
        ``Data(x, edge_index, edge_attr[, y])``.
        Shapes: x (n_atoms, 92), edge_index (2, n_edges), edge_attr (n_edges, n_gauss), y (1,).
    """
    if len(structure) == 0:
        raise DataError("structure_to_graph: the structure has no sites")
    if not structure.is_ordered:
        raise DataError(f"{structure.composition.formula}: disordered structures are not supported")
    x = np.stack([atom_features(site.specie.symbol) for site in structure])
    centres, neighbours, dists, _ = periodic_neighbors(structure, cutoff_a, max_neighbors)
    data = Data(
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(np.stack([neighbours, centres])),
        edge_attr=torch.from_numpy(gaussian_expand(dists, cutoff_a)),
    )
    if y is not None:
        data.y = torch.tensor([float(y)], dtype=torch.float32)
    return data
