"""CD-VAE's periodic graphs: radius graph against pymatgen, triplets against brute force, the
CrystalNN encoder graph and its cache, canonical cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from discovery.models.cdvae.graphs import (
    CrystalNNCache,
    canonical_structure,
    crystalnn_graph,
    edge_vectors,
    lattice_params_to_matrix,
    min_image_vectors,
    radius_graph_pbc,
    structure_key,
    triplets,
)


def random_cells(seed: int, count: int, max_atoms: int = 8):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        params = [*rng.uniform(2.0, 7.0, 3), *rng.uniform(60, 120, 3)]
        try:
            lattice = Lattice.from_parameters(*params)
        except ValueError:
            continue
        if not np.isfinite(lattice.volume) or lattice.volume < 4.0:
            continue
        n = int(rng.integers(1, max_atoms + 1))
        # coordinates outside [0, 1) on purpose: image offsets must refer to the positions as given
        out.append(Structure(lattice, ["C"] * n, rng.uniform(-0.7, 1.7, (n, 3))))
    return out


def our_graph(structure: Structure, radius: float, max_neighbors: int | None):
    pos = torch.tensor(structure.cart_coords)
    lat = torch.tensor(structure.lattice.matrix)[None]
    edge_index, images, num_edges = radius_graph_pbc(pos, lat, torch.tensor([len(structure)]), radius, max_neighbors)
    vec = edge_vectors(pos, lat, edge_index, images, num_edges)
    return edge_index.numpy(), images.numpy(), vec.norm(dim=1).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_radius_graph_equals_pymatgen_neighbor_list(seed):
    for structure in random_cells(seed, 6):
        centers, points, images, dists = structure.get_neighbor_list(7.0)
        want = set(zip(centers.tolist(), points.tolist(), map(tuple, images.astype(int).tolist()), strict=True))
        edge_index, ours_images, ours_d = our_graph(structure, 7.0, None)
        got = set(zip(edge_index[1].tolist(), edge_index[0].tolist(), map(tuple, ours_images.tolist()), strict=True))
        assert got == want
        # the edge vectors computed from the offsets have pymatgen's lengths
        lookup = {k: d for k, d in zip(zip(centers.tolist(), points.tolist(), map(tuple, images.astype(int).tolist()),
                                           strict=True), dists.tolist(), strict=True)}
        for key, d in zip(zip(edge_index[1].tolist(), edge_index[0].tolist(), map(tuple, ours_images.tolist()),
                              strict=True), ours_d.tolist(), strict=True):
            assert d == pytest.approx(lookup[key], abs=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_nearest_neighbours_are_pymatgen_nearest(seed):
    """With max_neighbors, each atom keeps exactly the 20 nearest of pymatgen's list (as distances:
    a site's +a and -a images tie)."""
    for structure in random_cells(seed, 8, max_atoms=12):
        centers, _, _, dists = structure.get_neighbor_list(7.0)
        edge_index, _, ours_d = our_graph(structure, 7.0, 20)
        for atom in range(len(structure)):
            want = np.sort(dists[centers == atom])[:20]
            got = np.sort(ours_d[edge_index[1] == atom])
            np.testing.assert_allclose(got, want, atol=1e-9)


def test_batched_graph_equals_per_crystal_graphs():
    cells = random_cells(5, 5)
    pos = torch.tensor(np.concatenate([s.cart_coords for s in cells]))
    lat = torch.tensor(np.stack([s.lattice.matrix for s in cells]))
    num_atoms = torch.tensor([len(s) for s in cells])
    edge_index, images, num_edges = radius_graph_pbc(pos, lat, num_atoms, 6.0, 20)
    start = 0
    offset = 0
    for b, s in enumerate(cells):
        single, single_img, _ = our_graph(s, 6.0, 20)
        e = int(num_edges[b])
        part = edge_index[:, start:start + e].numpy() - offset
        got = {(int(j), int(i), tuple(o)) for j, i, o in zip(part[0], part[1], images[start:start + e].tolist(),
                                                             strict=True)}
        want = {(int(j), int(i), tuple(o)) for j, i, o in zip(single[0], single[1], single_img.tolist(), strict=True)}
        assert len(got) == len(want) and len(got) == e
        start += e
        offset += len(s)


def test_triplets_equal_brute_force_with_periodic_images():
    # a small cell: k is often another periodic image of i, which must stay a triplet
    structure = Structure(Lattice.from_parameters(2.6, 3.1, 3.4, 80, 95, 100), ["C"] * 3,
                          [[0.1, 0.2, 0.3], [0.6, 0.5, 0.1], [0.3, 0.8, 0.7]])
    edge_index, images, _ = our_graph(structure, 3.5, None)
    ei, img = torch.tensor(edge_index), torch.tensor(images)
    idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(ei, img, len(structure))
    brute = set()
    for ji in range(ei.shape[1]):
        for kj in range(ei.shape[1]):
            if ei[1, kj] != ei[0, ji]:
                continue
            if ei[0, kj] == ei[1, ji] and bool((img[kj] + img[ji] == 0).all()):
                continue  # the back-edge: k is the very image of i
            brute.add((kj, ji))
    got = set(zip(idx_kj.tolist(), idx_ji.tolist(), strict=True))
    assert got == brute
    assert len(got) == len(idx_kj)  # no duplicates
    assert torch.equal(idx_i, ei[1, idx_ji]) and torch.equal(idx_j, ei[0, idx_ji]) and torch.equal(idx_k, ei[0, idx_kj])
    # some triplet closes on another image of its own end atom (dropped by CD-VAE / PyG)
    assert bool((idx_k == idx_i).any())


def test_crystalnn_graph_both_directions_with_consistent_images():
    structure = Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"],
                          [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    edge_index, images = crystalnn_graph(structure)
    assert edge_index.shape[1] == images.shape[0] > 0 and edge_index.shape[1] % 2 == 0
    pos = torch.tensor(structure.cart_coords)
    lat = torch.tensor(structure.lattice.matrix)[None]
    vec = edge_vectors(pos, lat, torch.tensor(edge_index), torch.tensor(images), torch.tensor([edge_index.shape[1]]))
    d = vec.norm(dim=1).numpy()
    # Ti-O bonds are 2 A, every edge has its reverse with the opposite offset
    ti = edge_index[1] == 1
    assert np.allclose(d[ti & (edge_index[0] >= 2)], 2.0)
    pairs = {(int(a), int(b), tuple(o)) for a, b, o in zip(edge_index[0], edge_index[1], images.tolist(), strict=True)}
    assert all((b, a, tuple(-x for x in o)) in pairs for a, b, o in pairs)


def test_crystalnn_cache_round_trip(tmp_path):
    structure = canonical_structure(Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    cache = CrystalNNCache(tmp_path / "cache.npz")
    edges, images = cache.get(structure)
    cache.save()
    again = CrystalNNCache(tmp_path / "cache.npz")
    assert structure_key(structure) in again.graphs
    e2, i2 = again.graphs[structure_key(structure)]
    assert np.array_equal(edges, e2) and np.array_equal(images, i2)


def test_canonical_structure_is_niggli_cell_in_the_parameter_frame():
    skewed = Structure(Lattice([[4, 0, 0], [4, 4, 0], [0, 0, 5]]), ["Si", "C"], [[0.1, 0.2, 0.3], [0.6, 0.7, 0.8]])
    canonical = canonical_structure(skewed)
    a, b, c = canonical.lattice.abc
    assert a <= b <= c and max(abs(x - 90) for x in canonical.lattice.angles) < 1e-6  # the reduced cell is 4x4x5
    assert np.allclose(canonical.lattice.matrix, Lattice.from_parameters(*canonical.lattice.parameters).matrix)
    assert np.all((canonical.frac_coords >= 0) & (canonical.frac_coords < 1))
    assert canonical.matches(skewed)
    torch_matrix = lattice_params_to_matrix(torch.tensor([canonical.lattice.abc], dtype=torch.float64),
                                          torch.tensor([canonical.lattice.angles], dtype=torch.float64))
    np.testing.assert_allclose(torch_matrix[0].numpy(), canonical.lattice.matrix, atol=1e-9)


def test_min_image_vector_points_from_noisy_to_nearest_true_image():
    lat = torch.tensor([[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]]])
    true = torch.tensor([[0.1, 0.1, 0.1]])
    noisy = torch.tensor([[2.9, 0.2, 0.1]])  # across the boundary along x
    vec = min_image_vectors(true, noisy, lat, torch.tensor([1]))
    np.testing.assert_allclose(vec.numpy(), [[0.2, -0.1, 0.0]], atol=1e-6)
