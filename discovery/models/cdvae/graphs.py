"""Periodic graphs for CD-VAE: canonical cells, the decoder's radius graph, the encoder's CrystalNN
graph and DimeNet triplets, in pure torch/numpy (no torch-cluster / torch-sparse here).

Conventions (CD-VAE's, MODELS.md 4.1):

- a lattice matrix has the lattice vectors as rows; Cartesian = fractional @ lattice;
- an edge ``e`` of ``edge_index = (source j, target i)`` with integer image offset ``images[e]``
  points from atom ``i`` to the periodic image of atom ``j``:
  ``vec[e] = pos[j] + images[e] @ lattice - pos[i]``;
- the lattice is rebuilt from its six parameters (`lattice_params_to_matrix`, pymatgen's
  ``Lattice.from_parameters`` convention: c along z), so a cell's frame is canonical.

Deviations from CD-VAE's code, on purpose:

- `radius_graph_pbc` searches as many periodic images as the radius needs (per crystal, from the
  cell's plane spacings, capped at `MAX_IMAGES_PER_AXIS`), where CD-VAE's ``radius_graph_pbc``
  only looks at the 27 cells -1..1; on thin cells CD-VAE misses neighbours within 7 A. It also
  keeps coincident distinct atoms out (distance below 1e-6 A, as pymatgen's ``get_neighbor_list``
  with ``exclude_self``), where CD-VAE drops pairs closer than 0.01 A.
- `triplets` removes only the true back-edge (k is the same periodic image of i), where CD-VAE
  (and PyG) drop every triplet with k == i, including k = a *different* image of i, which is a
  real third atom in small cells.
- The CrystalNN graph is cached on disk keyed by a hash of the canonical structure (species,
  fractional coordinates, lattice parameters), not by a data-set id: two files may hold the same
  crystal in different settings, whose graphs differ.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from discovery.fileio import atomic_write

if TYPE_CHECKING:
    import torch
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

#: Images searched per lattice direction at most (a predicted cell can be degenerate: a plane
#: spacing near zero would ask for thousands of images).
MAX_IMAGES_PER_AXIS = 8
#: Pairs closer than this are not edges (self pairs, coincident atoms). Units: A.
MIN_EDGE_LENGTH_A = 1e-6
#: CrystalNN settings of CD-VAE's ``build_crystal_graph``.
CRYSTALNN_KWARGS = dict(distance_cutoffs=None, x_diff_weight=-1, porous_adjustment=False)
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- cells


def canonical_structure(structure: Structure, niggli: bool = True) -> Structure:
    """CD-VAE's ``build_crystal``: the Niggli-reduced cell, with the lattice rebuilt from its
    parameters and fractional coordinates wrapped into [0, 1).

    Oxidation states and site properties are dropped.
    """
    from pymatgen.core import Lattice, Structure

    crystal = structure.get_reduced_structure() if niggli else structure
    frac = np.mod(np.asarray(crystal.frac_coords, dtype=np.float64), 1.0)
    frac[frac >= 1.0 - 1e-12] = 0.0
    species = [site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie) for site in crystal]
    return Structure(Lattice.from_parameters(*crystal.lattice.parameters), species, frac,
                     coords_are_cartesian=False)


def structure_key(structure: Structure) -> str:
    """A content hash of a (canonical) structure: species, fractional coordinates (1e-6) and
    lattice parameters (1e-6); the key of the CrystalNN cache."""
    h = hashlib.sha256()
    h.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(structure.frac_coords, dtype=np.float64), 6).tobytes())
    h.update(np.round(np.asarray(structure.lattice.parameters, dtype=np.float64), 6).tobytes())
    return h.hexdigest()[:32]


def lattice_params_to_matrix(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Batched lattice matrices from lengths and angles (pymatgen's ``from_parameters`` frame).

    Shapes: lengths, angles (B, 3) -> (B, 3, 3), rows are the lattice vectors.
    Units: lengths in A, angles in degrees.
    """
    import torch

    rad = torch.deg2rad(angles)
    cos, sin = torch.cos(rad), torch.sin(rad)
    val = (cos[:, 0] * cos[:, 1] - cos[:, 2]) / (sin[:, 0] * sin[:, 1])
    gamma_star = torch.arccos(torch.clamp(val, -1.0, 1.0))
    zero = torch.zeros_like(lengths[:, 0])
    a = torch.stack([lengths[:, 0] * sin[:, 1], zero, lengths[:, 0] * cos[:, 1]], dim=1)
    b = torch.stack([-lengths[:, 1] * sin[:, 0] * torch.cos(gamma_star),
                     lengths[:, 1] * sin[:, 0] * torch.sin(gamma_star), lengths[:, 1] * cos[:, 0]], dim=1)
    c = torch.stack([zero, zero, lengths[:, 2]], dim=1)
    return torch.stack([a, b, c], dim=1)


def frac_to_cart(frac: torch.Tensor, lattice: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """Shapes: frac (N, 3), lattice (B, 3, 3), num_atoms (B,) -> (N, 3). Units: A."""
    import torch

    return torch.einsum("ni,nij->nj", frac, lattice.repeat_interleave(num_atoms, dim=0))


def cart_to_frac(cart: torch.Tensor, lattice: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates wrapped into [0, 1) (pseudo-inverse, as CD-VAE: a predicted lattice
    may be singular). Shapes: cart (N, 3), lattice (B, 3, 3), num_atoms (B,) -> (N, 3)."""
    import torch

    inv = torch.linalg.pinv(lattice)
    return torch.einsum("ni,nij->nj", cart, inv.repeat_interleave(num_atoms, dim=0)) % 1.0


def edge_vectors(pos: torch.Tensor, lattice: torch.Tensor, edge_index: torch.Tensor, images: torch.Tensor,
                 num_edges: torch.Tensor) -> torch.Tensor:
    """Vectors from each edge's target to the image of its source (differentiable in pos and lattice).

    Shapes: pos (N, 3), lattice (B, 3, 3), edge_index (2, E), images (E, 3), num_edges (B,)
    edges per crystal, in crystal order -> (E, 3). Units: A.
    """
    import torch

    offsets = torch.einsum("ei,eij->ej", images.to(pos.dtype), lattice.repeat_interleave(num_edges, dim=0))
    return pos[edge_index[0]] + offsets - pos[edge_index[1]]


# ----------------------------------------------------------------------------- decoder radius graph


def image_ranges(lattice: torch.Tensor, radius: torch.Tensor | float, max_images: int = MAX_IMAGES_PER_AXIS
                 ) -> torch.Tensor:
    """Images needed per lattice direction so that every pair within ``radius`` is found, for
    positions inside the cell: ceil(radius / plane spacing). Shapes: (B, 3, 3), radius scalar or
    (B,) -> (B, 3) long."""
    import torch

    inv = torch.linalg.pinv(lattice.detach().double())
    recip = torch.linalg.norm(inv, dim=1)  # column k of inv(L) is the gradient of frac_k: |.| = 1/spacing
    r = torch.as_tensor(radius, dtype=recip.dtype, device=recip.device).reshape(-1, 1)
    n = torch.ceil(r * recip - 1e-9)
    n = torch.nan_to_num(n, nan=float(max_images), posinf=float(max_images))
    return n.clamp(0, max_images).long()


def _pairs_within(wrapped: torch.Tensor, lat: torch.Tensor, num_atoms: torch.Tensor, radii: torch.Tensor,
                  max_images: int, chunk_candidates: int):
    """Every (i, j, image) with |pos_j + image @ L - pos_i| <= radius of the crystal, for
    positions inside their cells. Returns i, j, image row (into the returned grid), d^2, grid."""
    import torch

    device = wrapped.device
    n_crystals = num_atoms.numel()
    n_img = image_ranges(lat, radii, max_images)  # (B, 3)
    top = n_img.max(dim=0).values if n_crystals else torch.zeros(3, dtype=torch.long, device=device)
    grid = torch.cartesian_prod(*[torch.arange(-int(t), int(t) + 1, device=device) for t in top]).reshape(-1, 3)
    usable = (grid.abs()[None, :, :] <= n_img[:, None, :]).all(dim=-1)  # (B, M)
    img_vec = torch.einsum("mi,bij->bmj", grid.to(wrapped.dtype), lat)
    img_vec = torch.where(usable[..., None], img_vec, torch.full_like(img_vec, 1e6))  # unused: far away

    n_pairs = num_atoms * num_atoms
    pair_crystal = torch.repeat_interleave(torch.arange(n_crystals, device=device), n_pairs)
    local = torch.arange(int(n_pairs.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(n_pairs, 0) - n_pairs, n_pairs)
    atom_start = (torch.cumsum(num_atoms, 0) - num_atoms)[pair_crystal]
    pi = atom_start + local // num_atoms[pair_crystal]
    pj = atom_start + local % num_atoms[pair_crystal]
    pair_vec = wrapped[pj] - wrapped[pi]  # (P, 3)
    r2 = (radii.to(wrapped.dtype) ** 2)[pair_crystal]

    step = max(1, chunk_candidates // max(grid.shape[0], 1))
    keep_pair, keep_img, keep_d2 = [], [], []
    for a in range(0, pair_vec.shape[0], step):
        vec = pair_vec[a:a + step, None, :] + img_vec[pair_crystal[a:a + step]]  # (p, M, 3)
        d2 = (vec * vec).sum(dim=-1)
        ok = (d2 <= r2[a:a + step, None]) & (d2 > MIN_EDGE_LENGTH_A ** 2)
        p, m = ok.nonzero(as_tuple=True)
        keep_pair.append(p + a)
        keep_img.append(m)
        keep_d2.append(d2[p, m])
    empty = torch.zeros(0, dtype=torch.long, device=device)
    pair = torch.cat(keep_pair) if keep_pair else empty
    m = torch.cat(keep_img) if keep_img else empty
    d2 = torch.cat(keep_d2) if keep_d2 else torch.zeros(0, dtype=wrapped.dtype, device=device)
    return pi[pair], pj[pair], grid[m], d2


def radius_graph_pbc(pos: torch.Tensor, lattice: torch.Tensor, num_atoms: torch.Tensor, radius: float,
                     max_neighbors: int | None = None, max_images: int = MAX_IMAGES_PER_AXIS,
                     chunk_candidates: int = 4_000_000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Periodic radius graph: every (i, image of j) within ``radius`` of atom i, then, per atom i,
    only the ``max_neighbors`` nearest (CD-VAE's ``radius_graph_pbc`` semantics, with as many
    images as needed; see the module docstring).

    With ``max_neighbors``, each crystal is first searched within a smaller radius that should
    hold about twice that many neighbours at its mean density; crystals where some atom finds
    fewer are searched again at the full radius. An atom with at least ``max_neighbors``
    neighbours within the smaller radius has the same nearest ones within the full radius, so the
    result is the same, several times faster.

    Args:
        pos: Cartesian positions (anywhere; wrapped internally, offsets refer to ``pos`` as given).
        lattice: lattice matrices, rows are vectors.
        num_atoms: atoms per crystal (crystals are consecutive blocks of ``pos``).
        radius: cutoff. Units: A.
        max_neighbors: keep this many nearest neighbours per atom (None: all within radius).
        chunk_candidates: (pair, image) candidates examined at once (bounds memory).

    Returns:
        ``edge_index`` (2, E) as (source j, target i), ``images`` (E, 3) integer offsets,
        ``num_edges`` (B,) edges per crystal. Edges are grouped by target atom, nearest first.

    Shapes: pos (N, 3), lattice (B, 3, 3), num_atoms (B,).
    """
    import torch

    device = pos.device
    with torch.no_grad():
        pos = pos.detach()
        lat = lattice.detach().to(pos.dtype)
        num_atoms = num_atoms.long()
        n_crystals = num_atoms.numel()
        atom_crystal = torch.repeat_interleave(torch.arange(n_crystals, device=device), num_atoms)
        # wrap into the cell; shift[a] = floor(frac): wrapped = pos - shift @ L
        inv = torch.linalg.pinv(lat)
        frac = torch.einsum("ni,nij->nj", pos, inv[atom_crystal])
        shift = torch.floor(torch.nan_to_num(frac, nan=0.0, posinf=0.0, neginf=0.0))
        wrapped = pos - torch.einsum("ni,nij->nj", shift, lat[atom_crystal])

        full = torch.full((n_crystals,), float(radius), dtype=torch.float64, device=device)
        if max_neighbors is None:
            i, j, img, d2 = _pairs_within(wrapped, lat, num_atoms, full, max_images, chunk_candidates)
        else:
            volume = torch.linalg.det(lat.double()).abs()
            per_atom_volume = volume / num_atoms.clamp_min(1).double()
            small = (2 * max_neighbors * 3 * per_atom_volume / (4 * torch.pi)) ** (1 / 3)
            small = torch.nan_to_num(small, nan=float(radius)).clamp(max=float(radius))
            i, j, img, d2 = _pairs_within(wrapped, lat, num_atoms, small, max_images, chunk_candidates)
            found = torch.bincount(i, minlength=pos.shape[0])
            short = (found < max_neighbors) & (small[atom_crystal] < radius)
            redo = torch.zeros(n_crystals, dtype=torch.bool, device=device)
            redo[atom_crystal[short]] = True
            if bool(redo.any()):
                keep = ~redo[atom_crystal[i]]
                i2, j2, img2, d22 = _pairs_within(wrapped, lat, num_atoms, torch.where(redo, full, 0.0),
                                                  max_images, chunk_candidates)
                i, j = torch.cat([i[keep], i2]), torch.cat([j[keep], j2])
                img, d2 = torch.cat([img[keep], img2]), torch.cat([d2[keep], d22])

        # one sort by (target atom, distance)
        key = i.double() * (4.0 * float(radius) ** 2 + 1.0) + d2.double()
        order = torch.argsort(key)
        i, j, img = i[order], j[order], img[order]
        if max_neighbors is not None and i.numel():
            per_atom = torch.bincount(i, minlength=pos.shape[0])
            start = torch.cumsum(per_atom, 0) - per_atom
            rank = torch.arange(i.numel(), device=device) - start[i]
            sel = rank < max_neighbors
            i, j, img = i[sel], j[sel], img[sel]
        # offsets for the positions as given: o = o' - shift_j + shift_i
        images = img + shift[i].long() - shift[j].long()
        num_edges = torch.bincount(atom_crystal[i], minlength=n_crystals)
    return torch.stack([j, i]), images, num_edges


def min_image_vectors(target: torch.Tensor, noisy: torch.Tensor, lattice: torch.Tensor,
                      num_atoms: torch.Tensor) -> torch.Tensor:
    """CD-VAE's ``min_distance_sqr_pbc`` vector: from each noisy position to the nearest of the 27
    images (-1..1) of its true position. Shapes: (N, 3), (N, 3), (B, 3, 3), (B,) -> (N, 3). Units: A."""
    import torch

    cells = torch.cartesian_prod(*[torch.arange(-1, 2, device=target.device)] * 3).to(target.dtype)  # (27, 3)
    offsets = torch.einsum("ki,bij->bkj", cells, lattice).repeat_interleave(num_atoms, dim=0)  # (N, 27, 3)
    vec = target[:, None, :] - (noisy[:, None, :] + offsets)
    best = (vec * vec).sum(dim=-1).argmin(dim=1)
    return vec[torch.arange(vec.shape[0], device=vec.device), best]


# ----------------------------------------------------------------------------- triplets


def triplets(edge_index: torch.Tensor, images: torch.Tensor, num_nodes: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DimeNet triplets k -> j -> i over a periodic multigraph (pure torch).

    For every edge ji (j -> i) and every edge kj (k -> j) into its source, one triplet, except
    the back-edge: k the very same periodic image as i (k == i and images[kj] + images[ji] == 0).

    Returns:
        ``idx_i, idx_j, idx_k`` (atom indices) and ``idx_kj, idx_ji`` (edge indices), each (T,).

    Shapes: edge_index (2, E) as (source, target), images (E, 3).
    """
    import torch

    src, tgt = edge_index[0], edge_index[1]
    n_edges = src.numel()
    device = src.device
    order = torch.argsort(tgt, stable=True)
    indeg = torch.bincount(tgt, minlength=num_nodes)
    start = torch.cumsum(indeg, 0) - indeg
    per_edge = indeg[src]  # edges kj into j = source of ji
    idx_ji = torch.repeat_interleave(torch.arange(n_edges, device=device), per_edge)
    local = torch.arange(idx_ji.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(per_edge, 0) - per_edge, per_edge)
    idx_kj = order[start[src[idx_ji]] + local]
    idx_i, idx_j, idx_k = tgt[idx_ji], src[idx_ji], src[idx_kj]
    back = (idx_k == idx_i) & ((images[idx_kj] + images[idx_ji]) == 0).all(dim=1)
    keep = ~back
    return idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]


# ----------------------------------------------------------------------------- CrystalNN graph


def crystalnn_graph(structure: Structure) -> tuple[np.ndarray, np.ndarray]:
    """CD-VAE's encoder graph: a pymatgen StructureGraph with CrystalNN(distance_cutoffs=None,
    x_diff_weight=-1, porous_adjustment=False), every bond in both directions.

    Returns:
        ``edge_index`` (2, E) int64 as (source, target) and ``images`` (E, 3) int64, in the
        conventions of the module docstring (the structure's own fractional coordinates).
    """
    from pymatgen.analysis.graphs import StructureGraph
    from pymatgen.analysis.local_env import CrystalNN

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = StructureGraph.from_local_env_strategy(structure, CrystalNN(**CRYSTALNN_KWARGS))
    src, tgt, img = [], [], []
    for u, v, to_jimage in graph.graph.edges(data="to_jimage"):
        jimage = tuple(int(x) for x in to_jimage)
        src += [v, u]
        tgt += [u, v]
        img += [jimage, tuple(-x for x in jimage)]
    edge_index = np.array([src, tgt], dtype=np.int64).reshape(2, -1)
    images = np.array(img, dtype=np.int64).reshape(-1, 3)
    return edge_index, images


class CrystalNNCache:
    """CrystalNN graphs by `structure_key`, kept in one ``.npz`` file (written atomically).

    Args:
        path: the cache file (None: memory only).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.graphs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.failures = 0
        self._dirty = False
        if self.path is not None and self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as f:
                if int(f["version"]) != CACHE_VERSION:
                    return
                keys, counts, edges, images = f["keys"], f["counts"], f["edges"], f["images"]
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("%s: unreadable CrystalNN cache ignored (%s)", self.path, exc)
            return
        ends = np.cumsum(counts)
        starts = ends - counts
        for key, a, b in zip(keys.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self.graphs[str(key)] = (edges[:, a:b].copy(), images[a:b].copy())

    def save(self) -> None:
        """Write the cache file (when something was added)."""
        if self.path is None or not self._dirty:
            return
        keys = sorted(self.graphs)
        counts = np.array([self.graphs[k][0].shape[1] for k in keys], dtype=np.int64)
        edges = np.concatenate([self.graphs[k][0] for k in keys], axis=1) if keys else np.zeros((2, 0), np.int64)
        images = np.concatenate([self.graphs[k][1] for k in keys], axis=0) if keys else np.zeros((0, 3), np.int64)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "wb") as fh:
            np.savez(fh, version=np.array(CACHE_VERSION), keys=np.array(keys, dtype="U64"), counts=counts,
                     edges=edges, images=images)
        self._dirty = False

    def get(self, structure: Structure) -> tuple[np.ndarray, np.ndarray]:
        """The CrystalNN graph of a canonical structure (computed and remembered when new; a
        structure on which CrystalNN fails gets no bonds, counted in ``failures``)."""
        key = structure_key(structure)
        if key not in self.graphs:
            try:
                self.graphs[key] = crystalnn_graph(structure)
            except Exception as exc:  # CrystalNN raises several types on pathological cells
                logger.warning("CrystalNN failed on %s (%s: %s); encoding it without bonds",
                               structure.composition.reduced_formula, type(exc).__name__, exc)
                self.failures += 1
                self.graphs[key] = (np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64))
            self._dirty = True
        return self.graphs[key]
