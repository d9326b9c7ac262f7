"""Crystal graphs for CGCNN: atom features, periodic neighbours, Gaussian edge features."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from discovery.errors import DataError
from discovery.featurize.graphs import (
    ATOM_FEATURE_BLOCKS,
    ATOM_FEATURE_DIM,
    atom_features,
    edge_feature_dim,
    gaussian_centres,
    gaussian_expand,
    periodic_neighbors,
    structure_to_graph,
)

torch.set_num_threads(1)


def _blocks(symbol: str) -> dict[str, np.ndarray]:
    vec = atom_features(symbol)
    out, start = {}, 0
    for name, n in ATOM_FEATURE_BLOCKS:
        out[name] = vec[start:start + n]
        start += n
    return out


def _hot(symbol: str, block: str) -> int | None:
    b = _blocks(symbol)[block]
    return int(np.argmax(b)) if b.sum() else None


def _rocksalt_nacl(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _brute_force_distances(structure: Structure, reach: int = 2) -> list[np.ndarray]:
    """Sorted distances from every site to every periodic image of every site (self excluded)."""
    frac = structure.frac_coords
    mat = structure.lattice.matrix
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=float)
    out = []
    for i in range(len(structure)):
        diff = frac[None, :, :] + shifts[:, None, :] - frac[i]  # (n_images, n_sites, 3)
        d = np.linalg.norm(diff @ mat, axis=-1).ravel()
        out.append(np.sort(d[d > 1e-8]))
    return out


# ----------------------------------------------------------------------------- atom features


def test_atom_features_have_92_values_and_one_hot_blocks():
    assert ATOM_FEATURE_DIM == 92 == sum(n for _, n in ATOM_FEATURE_BLOCKS)
    for symbol in ["H", "Li", "Na", "Cl", "Fe", "Zn", "Ga", "La", "Gd", "Lu", "U", "Xe"]:
        vec = atom_features(symbol)
        assert vec.shape == (92,) and vec.dtype == np.float32
        assert set(np.unique(vec)) <= {0.0, 1.0}
        for name, block in _blocks(symbol).items():
            assert block.sum() in (0.0, 1.0), (symbol, name)
    # every element with full data has all nine blocks set
    assert atom_features("Fe").sum() == 9
    assert atom_features("Na") is atom_features("Na")  # cached
    assert not atom_features("Na").flags.writeable


def test_atom_feature_values_follow_the_cgcnn_recipe():
    assert _hot("Na", "group") == 1 and _hot("Cl", "group") == 17 and _hot("Fe", "group") == 8
    assert _hot("Na", "period") == 2 and _hot("H", "period") == 0  # period 3 and 1
    assert _hot("Na", "block") == 0 and _hot("Cl", "block") == 1
    assert _hot("Fe", "block") == 2 and _hot("U", "block") == 3
    # valence electrons (bins 1..12): Na 1, Cl 7, Zn 12, Ga 3
    assert [_hot(s, "valence_electrons") for s in ["Na", "Cl", "Zn", "Ga"]] == [0, 6, 11, 2]
    # lanthanides share group bin 0, as in the released atom_init.json; Lu is group 3
    assert _hot("La", "group") == 0 and _hot("Gd", "group") == 0 and _hot("Lu", "group") == 3
    # Pauling 3.16 -> bin floor((3.16 - 0.5) / 0.35) = 7; Na 0.93 -> 1; ordering of the bins
    assert _hot("Cl", "electronegativity") == 7 and _hot("Na", "electronegativity") == 1
    assert _hot("F", "electronegativity") > _hot("Cl", "electronegativity")
    assert _hot("Cs", "covalent_radius") > _hot("Na", "covalent_radius") > _hot("H", "covalent_radius")
    assert _hot("He", "first_ionization_energy") == 9  # largest ionisation energy: top bin
    assert _hot("Cl", "electron_affinity") > _hot("Na", "electron_affinity")
    assert _hot("Cs", "atomic_volume") > _hot("Fe", "atomic_volume")


def test_missing_element_data_gives_an_empty_block():
    assert _hot("He", "electronegativity") is None  # pymatgen has no Pauling value for He
    assert _hot("Ne", "electronegativity") is None
    assert _hot("Md", "covalent_radius") is None and _hot("Md", "atomic_volume") is None
    assert atom_features("Md").sum() == 7


# ----------------------------------------------------------------------------- Gaussian expansion


def test_gaussian_expansion_peaks_at_the_right_centre():
    mu = gaussian_centres(8.0)
    assert len(mu) == 41 == edge_feature_dim(8.0)
    assert mu[0] == 0.0 and mu[-1] == pytest.approx(8.0)
    g = gaussian_expand(np.array([2.0, 2.1, 7.9]), 8.0)
    assert g.shape == (3, 41) and g.dtype == np.float32
    assert int(np.argmax(g[0])) == 10 and g[0, 10] == pytest.approx(1.0)
    assert g[0, 11] == pytest.approx(np.exp(-1.0), rel=1e-5)  # one step (= one width) away
    assert g[1, 10] == pytest.approx(g[1, 11]) and g[1, 10] == pytest.approx(np.exp(-0.25), rel=1e-5)
    assert int(np.argmax(g[2])) in (39, 40)


# ----------------------------------------------------------------------------- neighbours


def test_rocksalt_nacl_has_six_nearest_neighbours_at_half_the_lattice_constant():
    s = _rocksalt_nacl()
    centres, neighbours, dists, images = periodic_neighbors(s, 8.0, 12)
    assert len(s) == 8
    assert np.bincount(centres, minlength=8).tolist() == [12] * 8
    for i in range(8):
        d = dists[centres == i]
        assert np.all(np.diff(d) >= -1e-12)  # sorted per centre
        np.testing.assert_allclose(d[:6], 2.82, atol=1e-6)
        assert d[6] == pytest.approx(5.64 / np.sqrt(2), abs=1e-6)
        nbr_species = {s[int(j)].specie.symbol for j in neighbours[centres == i][:6]}
        assert nbr_species == ({"Cl"} if s[i].specie.symbol == "Na" else {"Na"})
    # the images reproduce the distances
    vec = s.frac_coords[neighbours] + images - s.frac_coords[centres]
    np.testing.assert_allclose(np.linalg.norm(vec @ s.lattice.matrix, axis=1), dists, atol=1e-8)


def test_twelve_nearest_match_a_brute_force_periodic_search():
    rng = np.random.default_rng(3)
    s = _rocksalt_nacl()  # distorted below, so the shells split and ties are rare
    lattice = Lattice(s.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))))
    s = Structure(lattice, s.species, s.frac_coords + rng.normal(0, 0.01, (len(s), 3)))
    centres, _, dists, _ = periodic_neighbors(s, 8.0, 12)
    brute = _brute_force_distances(s)
    for i in range(len(s)):
        np.testing.assert_allclose(dists[centres == i], brute[i][:12], atol=1e-8)


def test_graph_edges_point_from_neighbour_to_centre():
    s = _rocksalt_nacl()
    g = structure_to_graph(s, cutoff_a=8.0, max_neighbors=12, y=-2.1)
    assert g.x.shape == (8, 92) and g.x.dtype == torch.float32
    assert g.edge_index.shape == (2, 96) and g.edge_index.dtype == torch.long
    assert g.edge_attr.shape == (96, 41)
    assert torch.bincount(g.edge_index[1], minlength=8).tolist() == [12] * 8
    assert g.y.tolist() == [pytest.approx(-2.1)]
    # first edge of atom 0 is a nearest neighbour at 2.82 A -> peak between centres 14 (2.8) and 15
    first = g.edge_attr[(g.edge_index[1] == 0).nonzero()[0, 0]]
    assert int(torch.argmax(first)) == 14


def test_fewer_neighbours_than_requested_are_kept():
    s = _rocksalt_nacl()
    centres, _, dists, _ = periodic_neighbors(s, 3.0, 12)
    assert np.bincount(centres, minlength=8).tolist() == [6] * 8
    np.testing.assert_allclose(dists, 2.82, atol=1e-6)


def test_one_atom_cell_uses_its_periodic_images():
    a = 3.61
    cu = Structure(Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60), ["Cu"], [[0, 0, 0]])
    g = structure_to_graph(cu, cutoff_a=8.0, max_neighbors=12)
    assert g.x.shape == (1, 92)
    assert g.edge_index.shape == (2, 12) and bool((g.edge_index == 0).all())  # self-images
    _, _, dists, images = periodic_neighbors(cu, 8.0, 12)
    np.testing.assert_allclose(dists, a / 2**0.5, atol=1e-8)
    assert len({tuple(im) for im in images}) == 12


def test_isolated_atom_search_is_enlarged_then_refused(caplog):
    sparse = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])
    with caplog.at_level(logging.WARNING, logger="discovery.featurize.graphs"):
        centres, _, dists, _ = periodic_neighbors(sparse, 8.0, 12)
    assert "no neighbour within 8.0 A" in caplog.text
    assert "searching 16.0 A" in caplog.text
    assert len(centres) == 6  # the six face neighbours at 12 A; the next shell (17 A) is beyond 16 A
    np.testing.assert_allclose(dists, 12.0)
    with pytest.raises(DataError, match="no neighbour"):
        structure_to_graph(Structure(Lattice.cubic(40.0), ["Na"], [[0, 0, 0]]), 8.0, 12)
