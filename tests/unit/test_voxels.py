"""ICSG3D voxel featurisation, rotation, disk cache and structure recovery (watershed, lattice, EMD)."""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

import discovery.featurize.voxels as voxels
from discovery.errors import DataError
from discovery.featurize.voxel_cache import load_or_featurize
from discovery.featurize.voxels import (
    VoxelConfig,
    VoxelSample,
    coordinate_channels,
    featurize,
    featurize_many,
    prepare_structure,
    rotate90,
    site_radius,
    voxel_size,
)
from discovery.models.icsg3d.decode import (
    atoms_from_segments,
    decode_structure,
    is_valid,
    lattice_from_coords,
    segment_atoms,
    site_emd,
)

CFG = VoxelConfig()
PEROVSKITE_SITES = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def _perovskite(a: float = 3.905, b: float | None = None, c: float | None = None) -> Structure:
    lattice = Lattice.orthorhombic(a, b or a, c or a)
    return Structure(lattice, ["Sr", "Ti", "O", "O", "O"], PEROVSKITE_SITES)


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def sto_sample() -> VoxelSample:
    return featurize(_perovskite(), CFG)


def _decode_true(sample: VoxelSample):
    """Decode from the exact species matrix and the exact occupancy as probability 1."""
    return decode_structure(sample.x, sample.species, sample.occupancy, CFG)


def _species_sorted(structure: Structure) -> list[str]:
    return sorted(site.specie.symbol for site in structure)


# ----------------------------------------------------------------------------- featurisation


def test_config_is_strict_and_frozen():
    with pytest.raises(ValidationError):
        VoxelConfig(grid=16)
    with pytest.raises(ValidationError):
        CFG.d = 16  # type: ignore[misc]
    assert (CFG.d, CFG.eps_frac, CFG.sigma_frac, CFG.label_frac, CFG.default_radius_a, CFG.n_classes) == (
        32, 0.25, 1.0, 1.0, 1.2, 95)


def test_site_radius_means_ionic_radii_and_falls_back():
    assert site_radius("Ti") == pytest.approx((1.0 + 0.81 + 0.745) / 3)
    assert site_radius("O") == pytest.approx(1.26)
    assert site_radius("He") == pytest.approx(1.2)  # no tabulated ionic radius


def test_shapes_dtypes_and_channels(sto_sample):
    s = sto_sample
    d = CFG.d
    assert s.x.shape == (4, d, d, d) and s.x.dtype == np.float32
    assert s.species.shape == (d, d, d) and s.species.dtype == np.int64
    assert s.occupancy.shape == (d, d, d) and s.occupancy.dtype == np.float32
    assert s.lattice.shape == (6,) and s.lattice.dtype == np.float32
    np.testing.assert_allclose(s.lattice, [3.905, 3.905, 3.905, 90, 90, 90], rtol=1e-6)
    assert set(np.unique(s.species)) == {0, 8, 22, 38}
    np.testing.assert_array_equal(s.occupancy, (s.species > 0).astype(np.float32))
    assert s.x[0].min() >= 0.0
    # coordinate channel k is linspace(0, a (1 + 2 eps), d + 1)[:-1] along axis k, constant elsewhere
    ramp = np.linspace(0, 3.905 * 1.5, d + 1)[:-1]
    np.testing.assert_allclose(s.x[1][:, 7, 3], ramp, rtol=1e-6)
    np.testing.assert_allclose(s.x[2][5, :, 9], ramp, rtol=1e-6)
    np.testing.assert_allclose(s.x[3][0, 31, :], ramp, rtol=1e-6)
    assert np.ptp(s.x[1][4, :, :]) == 0.0


def test_density_integrates_to_atomic_number_and_peaks_at_the_site():
    cfg = VoxelConfig()
    single = Structure(Lattice.cubic(12.0), ["Cu"], [[0.3, 0.6, 0.9]])  # shifted to the origin
    sample = featurize(single, cfg)
    integral = sample.x[0].sum(dtype=np.float64) * np.prod(voxel_size([12.0] * 3, cfg))
    assert integral == pytest.approx(29.0, rel=0.02)
    # the origin lies between voxels 4 and 5 of each axis (centres -3 + (i + 0.5) * 0.5625 A)
    peak = np.unravel_index(np.argmax(sample.x[0]), sample.x[0].shape)
    assert peak == (5, 5, 5)
    # labelled ball: every labelled voxel is within sigma of the site
    idx = np.argwhere(sample.species == 29)
    centres = -3.0 + (idx + 0.5) * 0.5625
    assert np.linalg.norm(centres, axis=1).max() < site_radius("Cu")
    assert len(idx) > 0 and set(np.unique(sample.species)) == {0, 29}


def test_nearest_site_wins_the_label():
    # Na (sigma 1.16 A) and O (sigma 1.26 A) 1.8 A apart: their label balls overlap
    pair = Structure(Lattice.cubic(6.0), ["Na", "O"], [[0, 0, 0], [0.3, 0, 0]])
    sample = featurize(pair, CFG)
    centres = np.stack(np.meshgrid(*[-1.5 + (np.arange(32) + 0.5) * (9.0 / 32)] * 3, indexing="ij"), axis=-1)
    d_na = np.linalg.norm(centres, axis=-1)
    d_o = np.linalg.norm(centres - [1.8, 0, 0], axis=-1)
    in_na, in_o = d_na < site_radius("Na"), d_o < site_radius("O")
    assert (in_na & in_o).sum() > 10
    expected = np.where(in_na & (~in_o | (d_na < d_o)), 11, np.where(in_o, 8, 0))
    np.testing.assert_array_equal(sample.species, expected)


def test_structures_per_second_is_reported(capsys):
    structures = [_perovskite(3.9 + 0.01 * i) for i in range(40)]
    featurize(structures[0], CFG)
    start = time.perf_counter()
    out = featurize_many(structures, CFG)
    rate = len(structures) / (time.perf_counter() - start)
    with capsys.disabled():
        print(f"\n[voxels] featurize: {rate:.0f} structures/s (5-site perovskites, d=32)")
    assert out["x"].shape == (40, 4, 32, 32, 32)
    np.testing.assert_array_equal(out["index"], np.arange(40))
    assert rate > 20


# ----------------------------------------------------------------------------- rejection


def test_non_orthogonal_cell_is_rejected():
    hexagonal = Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]])
    with pytest.raises(DataError, match="not 90 degrees"):
        featurize(hexagonal, CFG)


def test_primitive_cell_is_replaced_by_its_orthogonal_conventional_cell():
    primitive = _rocksalt().get_primitive_structure()
    assert len(primitive) == 2 and primitive.lattice.angles[0] == pytest.approx(60.0)
    sample = featurize(primitive, CFG)
    np.testing.assert_allclose(sample.lattice[:3], [5.64] * 3, rtol=1e-5)
    assert len(prepare_structure(primitive)) == 8


def test_more_than_40_sites_is_rejected():
    big = _rocksalt()
    big.make_supercell([2, 2, 2])
    with pytest.raises(DataError, match="64 sites"):
        featurize(big, CFG)


def test_featurize_many_skips_bad_structures_when_asked(caplog):
    big = _rocksalt()
    big.make_supercell([3, 2, 1])  # 48 sites
    with pytest.raises(DataError):
        featurize_many([_perovskite(), big], CFG)
    with caplog.at_level(logging.WARNING, logger="discovery.featurize.voxels"):
        out = featurize_many([big, _perovskite()], CFG, on_error="skip")
    np.testing.assert_array_equal(out["index"], [1])
    assert out["x"].shape[0] == 1 and "skipped 1 of 2" in caplog.text


# ----------------------------------------------------------------------------- round trip


def test_lattice_from_coords_ignores_the_clipped_ramp_start_and_stray_voxels():
    # What a decoder gives: the ramp clipped to 0 near the origin (final ReLU), noise, and a few
    # wild voxels at the ends. The spread (the released read-out) follows the outliers.
    rng = np.random.default_rng(0)
    p = coordinate_channels([4.0, 5.0, 6.0], CFG)
    decoded = np.maximum(p - 0.6, 0.0) + np.where(p > 0.6, 0.6, 0.0) + rng.normal(0, 0.15, p.shape)
    decoded[:, -1, -1, -1] += 3.0
    decoded[:, 0, 0, 0] -= 1.0
    np.testing.assert_allclose(lattice_from_coords(decoded, CFG), [4.0, 5.0, 6.0], atol=0.02)
    spread = np.ptp(decoded.reshape(3, -1), axis=1) * 32 / (31 * 1.5)
    assert np.all(np.abs(spread - [4.0, 5.0, 6.0]) > 0.5)


def test_an_atom_decoded_on_both_faces_of_the_cell_is_kept_once():
    from discovery.models.icsg3d.decode import drop_periodic_images

    abc = [4.0, 4.0, 4.0]
    # Sr at the origin and again 0.2 A short of the opposite face (its image); O pairs that must stay:
    # an O-Sr pair across the boundary (other species) and two O atoms 0.3 A apart inside the cell.
    numbers = np.array([38, 38, 8, 8, 8])
    cart = np.array([[0.0, 0.0, 0.0], [3.8, 0.0, 0.0], [0.0, 3.85, 0.0], [2.0, 2.0, 2.0], [2.3, 2.0, 2.0]])
    sizes = np.array([30, 12, 10, 10, 9])
    kept_numbers, kept_cart = drop_periodic_images(numbers, cart, sizes, abc)
    assert kept_numbers.tolist() == [38, 8, 8, 8]
    np.testing.assert_allclose(kept_cart, cart[[0, 2, 3, 4]])
    # the larger segment wins wherever it is
    kept_numbers, kept_cart = drop_periodic_images(numbers[:2], cart[:2], np.array([5, 40]), abc)
    np.testing.assert_allclose(kept_cart, cart[[1]])


def test_convexity_matches_skimage_convex_hull_image():
    from skimage.morphology import ball, convex_hull_image

    from discovery.models.icsg3d.decode import _convexity

    rng = np.random.default_rng(1)
    for _ in range(40):
        mask = np.zeros((16, 16, 16), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            r = int(rng.integers(1, 4))
            c = rng.integers(r, 16 - r, size=3)
            mask[tuple(slice(x - r, x + r + 1) for x in c)] |= ball(r).astype(bool)
        expected = np.count_nonzero(mask) / np.count_nonzero(convex_hull_image(mask))
        assert _convexity(mask) == pytest.approx(expected, abs=1e-12)
    flat = np.zeros((5, 5, 5), dtype=bool)
    flat[2, 1:4, 1:4] = True  # a plane has no volume: one atom, never split
    assert _convexity(flat) == 1.0


def test_lattice_from_coords_is_exact_inverse():
    p = coordinate_channels([4.0, 5.5, 7.25], CFG)
    np.testing.assert_allclose(lattice_from_coords(p, CFG), [4.0, 5.5, 7.25], rtol=1e-6)
    # the released formula (1/d applied twice) would give 3 % less
    spread = float(np.ptp(p[0]))
    released = spread / 1.5 / (1 - 1 / 32)
    released -= released / 32
    assert released == pytest.approx(4.0 * 31 / 32, rel=1e-6)


@pytest.mark.parametrize("structure", [_perovskite(), _rocksalt()], ids=["SrTiO3", "NaCl"])
def test_round_trip_from_true_species_and_occupancy(structure):
    sample = featurize(structure, CFG)
    reference = prepare_structure(structure)
    decoded = _decode_true(sample)
    delta = voxel_size(reference.lattice.abc, CFG)
    assert decoded is not None and is_valid(decoded)
    assert len(decoded) == len(reference)
    assert _species_sorted(decoded) == _species_sorted(reference)
    assert np.all(np.abs(np.array(decoded.lattice.abc) - np.array(reference.lattice.abc)) < delta)
    assert decoded.lattice.angles == pytest.approx((90.0, 90.0, 90.0))
    assert site_emd(decoded, reference) < delta.min()


@pytest.mark.parametrize("split_species", [False, True])
def test_perovskite_blob_is_cut_by_watershed_or_species(sto_sample, split_species):
    # Ti and its three O touch: one connected blob, cut into four atoms by the watershed (default)
    # or by the species labels
    components = segment_atoms(sto_sample.occupancy, min_convexity=0.0)
    assert len(components) == 2  # the Sr ball and the Ti-O3 blob
    decoded = decode_structure(sto_sample.x, sto_sample.species, sto_sample.occupancy, CFG,
                               split_species=split_species)
    reference = prepare_structure(_perovskite())
    assert _species_sorted(decoded) == _species_sorted(reference)
    assert site_emd(decoded, reference) < voxel_size(reference.lattice.abc, CFG).min()


def _rotate_reference(structure: Structure, axes) -> Structure:
    """Apply the grid rotations of `rotate90` to Cartesian sites: rot90 over (p, q) maps
    (x_p, x_q) -> (L_q - x_q, x_p) and swaps L_p, L_q."""
    lengths = np.array(structure.lattice.abc, dtype=float)
    cart = structure.cart_coords.copy()
    for p, q in axes:
        new = cart.copy()
        new[:, p] = lengths[q] - cart[:, q]
        new[:, q] = cart[:, p]
        cart = new
        lengths[[p, q]] = lengths[[q, p]]
    return Structure(Lattice.orthorhombic(*lengths), structure.species, cart, coords_are_cartesian=True,
                     to_unit_cell=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_permutes_lattice_and_decodes_to_the_rotated_crystal(seed):
    structure = _perovskite(3.8, 3.95, 4.1)
    sample = featurize(structure, CFG)
    axes = voxels.random_rotation_axes(np.random.default_rng(seed))
    rotated = rotate90(sample, axes=axes)
    assert isinstance(rotated, VoxelSample)
    assert Counter(rotated.species.ravel().tolist()) == Counter(sample.species.ravel().tolist())
    assert rotated.x[0].sum() == pytest.approx(sample.x[0].sum(), rel=1e-6)
    expected = _rotate_reference(prepare_structure(structure), axes)
    np.testing.assert_allclose(rotated.lattice[:3], expected.lattice.abc, rtol=1e-6)
    assert sorted(rotated.lattice[:3].tolist()) == pytest.approx([3.8, 3.95, 4.1])
    np.testing.assert_allclose(lattice_from_coords(rotated.x[1:], CFG), expected.lattice.abc, rtol=1e-5)
    decoded = _decode_true(rotated)
    assert len(decoded) == 5 and _species_sorted(decoded) == _species_sorted(expected)
    assert site_emd(decoded, expected) < voxel_size(expected.lattice.abc, CFG).min()


def test_rotation_with_rng_and_mapping_input(sto_sample):
    rng = np.random.default_rng(7)
    out = rotate90(sto_sample.as_dict(), rng)
    assert isinstance(out, dict) and set(out) == {"x", "species", "occupancy", "lattice"}
    np.testing.assert_array_equal(out["occupancy"], (out["species"] > 0).astype(np.float32))
    assert out["x"].dtype == np.float32 and out["x"].flags.c_contiguous
    with pytest.raises(ValueError):
        rotate90(sto_sample)


# ----------------------------------------------------------------------------- watershed


_GRID = np.indices((32, 32, 32)).astype(float)


def _ball(centre, radius) -> np.ndarray:
    return ((_GRID - np.asarray(centre, float)[:, None, None, None]) ** 2).sum(axis=0) <= radius**2


def _centroids(segments) -> np.ndarray:
    return np.array(sorted((seg.mean(axis=0) for seg in segments), key=lambda c: tuple(np.round(c))))


def test_three_separate_spheres_give_three_segments():
    centres = [(8, 8, 8), (20, 10, 16), (12, 24, 22)]
    mask = _ball(centres[0], 4) | _ball(centres[1], 3.5) | _ball(centres[2], 5)
    mask[30, 30, 30] = mask[0, 31, 0] = True  # specks of one voxel are dropped
    segments = segment_atoms(mask.astype(np.float32))
    assert len(segments) == 3
    np.testing.assert_allclose(_centroids(segments), sorted(map(list, centres)), atol=0.05)


def test_two_overlapping_spheres_are_split():
    a, b = (16, 12, 16), (16, 20.5, 16)  # radius 5, 8.5 voxels apart: overlapping
    mask = _ball(a, 5) | _ball(b, 5)
    prob = np.where(mask, 0.95, 0.1)
    assert len(segment_atoms(prob, min_convexity=0.0)) == 1  # one connected component
    segments = segment_atoms(prob, min_convexity=0.9)
    assert len(segments) == 2
    assert sum(len(s) for s in segments) == mask.sum()
    np.testing.assert_allclose(_centroids(segments), [a, b], atol=0.5)


def test_chain_of_three_overlapping_spheres_splits_with_default_convexity():
    centres = [(16, 8, 16), (16, 16, 16), (16, 24, 16)]
    mask = _ball(centres[0], 4.5) | _ball(centres[1], 4.5) | _ball(centres[2], 4.5)
    segments = segment_atoms(mask.astype(np.float32))
    assert len(segments) == 3
    np.testing.assert_allclose(_centroids(segments), sorted(centres), atol=0.5)


def test_single_sphere_is_never_split_and_species_split_touching_atoms():
    sphere = _ball((16, 16, 16), 6)
    assert len(segment_atoms(sphere.astype(np.float32), min_convexity=0.99)) == 1
    # two touching spheres of different species separate by label alone
    left, right = _ball((16, 11, 16), 5), _ball((16, 20, 16), 5)
    species = np.zeros((32, 32, 32), np.int64)
    species[left] = 8
    species[right & ~left] = 22
    mask = (left | right).astype(np.float32)
    assert len(segment_atoms(mask, species, min_convexity=0.0, split_species=True)) == 2
    assert len(segment_atoms(mask, species, min_convexity=0.0)) == 1


def test_atoms_from_segments_majority_vote_and_position():
    species = np.zeros((32, 32, 32), np.int64)
    seg_a = np.argwhere(_ball((10, 10, 10), 2))
    species[tuple(seg_a.T)] = 8
    species[10, 10, 10] = 22  # outvoted
    seg_bg = np.argwhere(_ball((25, 25, 25), 2))  # all background: no atom
    numbers, cart = atoms_from_segments([seg_a, seg_bg], species, [4.0, 4.0, 4.0], CFG)
    assert numbers.tolist() == [8]
    delta = 4.0 * 1.5 / 32
    np.testing.assert_allclose(cart[0], [10 * delta - 1.0 + delta / 2] * 3)


def test_site_emd_and_validity():
    true = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    pred = Structure(Lattice.cubic(4.0), ["Cl", "Na"], [[0.5, 0.5, 0.55], [0.98, 0, 0]])
    # matched distances 0.2 A and 0.08 A (across the boundary with minimum image)
    assert site_emd(pred, true) == pytest.approx((0.2 + 0.08) / 2)
    assert site_emd(pred, true, periodic=False) == pytest.approx((0.2 + 3.92) / 2)
    extra = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    assert site_emd(extra, true) == pytest.approx(0.0)
    assert is_valid(true)
    assert not is_valid(Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]]))
    assert not is_valid(None)
    empty = decode_structure(np.zeros((4, 32, 32, 32)) + coordinate_channels([4, 4, 4], CFG)[[0, 0, 1, 2]],
                             np.zeros((32, 32, 32), np.int64), np.zeros((32, 32, 32)), CFG)
    assert empty is None


# ----------------------------------------------------------------------------- cache


def test_cache_round_trip_reorders_and_skips_featurize(tmp_path, monkeypatch):
    structures = [_perovskite(), _rocksalt(), _perovskite(4.0)]
    ids = ["sto", "nacl", "sto-4"]
    first = load_or_featurize(structures, ids, CFG, tmp_path)
    assert first["ids"].tolist() == ids and first["x"].shape == (3, 4, 32, 32, 32)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def _boom(*args, **kwargs):
        raise AssertionError("featurize must not run on a cache hit")

    monkeypatch.setattr(voxels, "featurize", _boom)
    second = load_or_featurize(structures, ids, CFG, tmp_path)
    for name in ("x", "species", "occupancy", "lattice"):
        np.testing.assert_array_equal(second[name], first[name])
        assert second[name].dtype == first[name].dtype
    order = [2, 0, 1]
    shuffled = load_or_featurize([structures[i] for i in order], [ids[i] for i in order], CFG, tmp_path)
    assert shuffled["ids"].tolist() == [ids[i] for i in order]
    np.testing.assert_array_equal(shuffled["species"], first["species"][order])
    # another config is another key: featurize is needed (and patched to fail)
    with pytest.raises(AssertionError):
        load_or_featurize(structures, ids, VoxelConfig(d=16), tmp_path)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    structures, ids = [_rocksalt()], ["nacl"]
    first = load_or_featurize(structures, ids, CFG, tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a zip file")
    calls = []
    real = voxels.featurize
    monkeypatch.setattr(voxels, "featurize", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="discovery.featurize.voxels"):
        again = load_or_featurize(structures, ids, CFG, tmp_path)
    assert calls == [1] and "unreadable" in caplog.text
    np.testing.assert_array_equal(again["x"], first["x"])
    assert np.load(path)["ids"].tolist() == ids  # rewritten and readable


def test_cache_ids_default_to_cif_hash_and_must_be_unique(tmp_path):
    out = load_or_featurize([_rocksalt()], None, CFG, tmp_path)
    assert len(out["ids"][0]) == 64
    with pytest.raises(DataError):
        load_or_featurize([_rocksalt(), _rocksalt()], ["a", "a"], CFG, tmp_path)
