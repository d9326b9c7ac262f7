"""Crystal descriptors and the recalibrated forest surrogate (on generated cubic perovskites)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Element, Lattice, Structure

import discovery.featurize.descriptors as desc_mod
from discovery.surrogates.forest import ForestSurrogateConfig
from discovery.errors import DataError, NotFittedError
from discovery.featurize.descriptors import (
    DESCRIPTOR_DIM,
    DescriptorCache,
    descriptor_names,
    descriptors_for,
    structure_descriptors,
)
from discovery.protocols import Surrogate
from discovery.records import Candidate, Prediction
from discovery.surrogates.calibration import coverage
from discovery.surrogates.forest import ForestEnsembleSurrogate

A_SITES = ["Li", "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "La", "Y", "Pb", "Ag"]
B_SITES = ["Ti", "Zr", "Hf", "V", "Nb", "Ta", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Al", "Ga", "Sn", "Mg"]
X_SITES = ["O", "F", "Cl", "Br", "S"]
N_TRAIN = 150
PEROVSKITE_COORDS = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def perovskite(a: str, b: str, x: str, lattice_a: float) -> Structure:
    """Cubic ABX3 (Pm-3m): A at the corner, B at the body centre, X at the face centres.

    Built site by site: the same cell as ``Structure.from_spacegroup("Pm-3m", ...)`` (checked in
    `test_perovskite_cations_land_in_the_coordination_features`), 40 times faster.
    """
    return Structure(Lattice.cubic(lattice_a), [a, b, x, x, x], PEROVSKITE_COORDS)


def _candidate(structure: Structure, cid: str) -> Candidate:
    return Candidate(id=cid, structure=structure.as_dict(), formula=structure.composition.reduced_formula,
                     generator="test")


def perovskites(n: int, seed: int, noise_ev: float = 0.02) -> tuple[list[Candidate], np.ndarray]:
    """``n`` distinct ABX3 with strained lattices and a smooth synthetic target.

    Target (eV/atom): an electronegativity term, a Goldschmidt tolerance-factor penalty from ionic
    radii, a strain penalty and Gaussian noise of ``noise_ev``.
    """
    rng = np.random.default_rng(seed)
    triples = list(itertools.product(A_SITES, B_SITES, X_SITES))
    cands, ys = [], []
    for k in rng.choice(len(triples), size=n, replace=False):
        a, b, x = (Element(e) for e in triples[k])
        ra, rb, rx = a.average_ionic_radius, b.average_ionic_radius, x.average_ionic_radius
        strain = rng.uniform(0.96, 1.04)
        tolerance = (ra + rx) / (np.sqrt(2) * (rb + rx))
        ys.append(-0.8 * (x.X - 0.5 * (a.X + b.X)) + 3.0 * (tolerance - 1) ** 2 + 2.0 * (strain - 1) ** 2
                  + noise_ev * rng.normal())
        s = perovskite(a.symbol, b.symbol, x.symbol, 2 * (rb + rx) * strain)
        cands.append(_candidate(s, f"{s.composition.reduced_formula}-{k}-{strain:.5f}"))
    return cands, np.array(ys)


def _config(**kw) -> ForestSurrogateConfig:
    return ForestSurrogateConfig(**{"n_estimators": 100, **kw})


def _means(preds: list[Prediction]) -> np.ndarray:
    return np.array([p.mean for p in preds])


def _stds(preds: list[Prediction]) -> np.ndarray:
    return np.array([p.std for p in preds])


@pytest.fixture(scope="module")
def data():
    cands, y = perovskites(400, seed=0)
    return cands[:N_TRAIN], y[:N_TRAIN], cands[N_TRAIN:], y[N_TRAIN:]


@pytest.fixture(scope="module")
def fitted(data):
    train, y_train, _, _ = data
    surrogate = ForestEnsembleSurrogate(_config(), seed=0)
    report = surrogate.fit(train, y_train)
    return surrogate, report


# ----------------------------------------------------------------------------- descriptors


def _named(vector: np.ndarray) -> dict[str, float]:
    return dict(zip(descriptor_names(), vector, strict=True))


def test_descriptor_names_match_the_vector_and_are_unique():
    names = descriptor_names()
    assert len(names) == len(set(names)) == DESCRIPTOR_DIM
    s = perovskite("Sr", "Ti", "O", 3.905)
    assert structure_descriptors(s).shape == (DESCRIPTOR_DIM,)


@pytest.mark.parametrize("structure, cn", [
    (Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 14),  # bcc: 8 + 6
    (Structure(Lattice.from_parameters(2.55, 2.55, 2.55, 60, 60, 60), ["Cu"], [[0, 0, 0]]), 12),  # fcc
    (Structure(Lattice.cubic(12.0), ["N", "N"], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5917]]), 1),  # N2 in a box
    (Structure(Lattice.cubic(20.0), ["Ar"], [[0, 0, 0]]), 6),  # a lone atom: its own images
    (Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
               [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]), 6),  # rocksalt
])
def test_descriptors_are_finite_for_metals_molecules_in_boxes_and_salts(structure, cn):
    d = _named(structure_descriptors(structure))
    assert np.all(np.isfinite(list(d.values())))
    assert d["mean_coordination_number"] == cn
    assert d["n_elements"] == len(structure.composition.elements)
    assert d["volume_per_atom_a3"] == pytest.approx(structure.volume / len(structure))
    assert d["density_g_cm3"] == pytest.approx(float(structure.density), rel=1e-4)


def test_descriptors_ignore_site_order_and_follow_the_cell():
    s = perovskite("Ba", "Zr", "S", 5.0)
    shuffled = Structure(s.lattice, [s[i].specie for i in (4, 2, 0, 3, 1)], s.frac_coords[[4, 2, 0, 3, 1]])
    np.testing.assert_allclose(structure_descriptors(shuffled), structure_descriptors(s))
    stretched = _named(structure_descriptors(perovskite("Ba", "Zr", "S", 5.5)))
    assert stretched["mean_neighbor_distance_a"] == pytest.approx(_named(structure_descriptors(s))[
        "mean_neighbor_distance_a"] * 1.1)


def test_perovskite_cations_land_in_the_coordination_features():
    for a, b, x, lattice_a in [("Sr", "Ti", "O", 3.905), ("Cs", "Pb", "Br", 5.87), ("K", "Mg", "F", 3.99)]:
        s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(lattice_a), [a, b, x],
                                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])
        vector = structure_descriptors(s)
        np.testing.assert_allclose(vector, structure_descriptors(perovskite(a, b, x, lattice_a)))
        d = _named(vector)
        z_a, z_b, z_x = (Element(e).Z for e in (a, b, x))
        # over all sites: A (12 X + 8 B within 1.25 nn) has the most neighbours, X (2 B) the fewest
        assert (d["maxcn_Z"], d["maxcn_coordination_number"]) == (z_a, 20)
        assert (d["mincn_Z"], d["mincn_coordination_number"]) == (z_x, 2)
        # among cation-like sites (neighbours more electronegative): A has the most, B the fewest
        assert (d["cation_maxcn_Z"], d["cation_maxcn_coordination_number"]) == (z_a, 20)
        assert (d["cation_mincn_Z"], d["cation_mincn_coordination_number"]) == (z_b, 6)
        assert d["cation_mincn_atomic_radius_a"] == pytest.approx(float(Element(b).atomic_radius))
        assert d["cation_mincn_neighbor_distance_a"] == pytest.approx(lattice_a / 2)
        assert d["cation_mincn_neighbor_delta_electronegativity"] == pytest.approx(
            Element(x).X - Element(b).X)
        assert d["mean_electronegativity"] == pytest.approx(
            (Element(a).X + Element(b).X + 3 * Element(x).X) / 5)


def test_missing_elemental_data_is_filled():
    d = _named(structure_descriptors(Structure(Lattice.cubic(4.0), ["Ne"], [[0, 0, 0]])))
    assert d["mean_electronegativity"] == desc_mod.ELECTRONEGATIVITY_FILL
    assert d["mean_oxidation_max"] == 0 and d["mean_atomic_radius_a"] > 0


def test_bad_structures_raise_data_error():
    with pytest.raises(DataError, match="no sites"):
        structure_descriptors(Structure(Lattice.cubic(3.0), [], []))
    with pytest.raises(DataError, match="disordered"):
        structure_descriptors(Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]))
    bad = Candidate(id="bad", structure=Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}],
                                                  [[0, 0, 0]]).as_dict(), formula="FeCo", generator="t")
    with pytest.raises(DataError, match="candidate bad"):
        descriptors_for([bad])


def test_descriptor_cache_computes_each_candidate_once(data, monkeypatch):
    train = data[0][:6]
    calls = []

    def counting(structure):
        calls.append(1)
        return structure_descriptors(structure)

    monkeypatch.setattr(desc_mod, "structure_descriptors", counting)
    cache = DescriptorCache()
    first = cache.descriptors_for(train)
    assert first.shape == (6, DESCRIPTOR_DIM) and len(cache) == 6 and train[0].id in cache
    np.testing.assert_array_equal(cache.descriptors_for(train[::-1]), first[::-1])
    assert cache.descriptors_for([]).shape == (0, DESCRIPTOR_DIM)
    # one cache shared by two surrogates featurises the labels once
    y = np.arange(6, dtype=float)
    for seed in (0, 1):
        ForestEnsembleSurrogate(_config(n_estimators=5), seed=seed, descriptor_cache=cache).fit(train, y)
    assert len(calls) == 6


# ----------------------------------------------------------------------------- forest


def test_forest_learns_a_perovskite_target(data, fitted):
    _, y_train, test, y_test = data
    surrogate, report = fitted
    assert isinstance(surrogate, Surrogate) and surrogate.is_fitted
    assert surrogate.property == "formation_energy_per_atom"
    assert (report.n_train, report.n_val) == (N_TRAIN, 30)
    assert report.val_mae is not None and report.train_mae < report.val_mae and report.wall_s > 0
    assert report.epochs == () and report.checkpoint is None
    preds = surrogate.predict(test)
    assert [p.candidate_id for p in preds] == [c.id for c in test]
    assert {p.model for p in preds} == {"forest-ensemble"}
    test_mae = np.mean(np.abs(_means(preds) - y_test))
    # data and surrogate seeds 0..6 give 0.08-0.13 of the target std
    assert test_mae < 0.25 * y_test.std(), (test_mae, y_test.std())
    assert surrogate.predict([]) == []


def test_std_is_small_at_the_labels_and_larger_far_from_them(data, fitted):
    train, _, test, _ = data
    surrogate = fitted[0]
    at_labels = _stds(surrogate.predict(train))
    near = _stds(surrogate.predict(test))
    far_cells = [("Tl", "W", "I", 5.5), ("Eu", "Re", "N", 3.6), ("Cd", "Ru", "Se", 5.0),
                 ("Hg", "Os", "Te", 6.0), ("U", "Pt", "H", 3.0), ("Fr", "Au", "At", 7.0)]
    far = _stds(surrogate.predict([_candidate(perovskite(*c), f"far-{i}") for i, c in enumerate(far_cells)]))
    assert np.all(near > 0)
    # data and surrogate seeds 0..6: far/near mean std 2.6-3.6; ExtraTrees interpolate the labels
    assert at_labels.mean() < 0.2 * near.mean() and far.mean() > 1.5 * near.mean(), (
        at_labels.mean(), near.mean(), far.mean())


def test_recalibrated_std_covers_held_out_labels(data, fitted):
    _, _, test, y_test = data
    surrogate = fitted[0]
    calibration = surrogate.last_calibration
    assert calibration is not None and calibration["variance_scale"] == surrogate.variance_scale
    assert calibration["before"]["n"] == calibration["after"]["n"] == 30
    preds = surrogate.predict(test)
    held_out = coverage(y_test, _means(preds), _stds(preds))
    # data and surrogate seeds 0..6: 0.81-0.99 within 2 sigma, 0.60-0.94 within 1 sigma (30 labels
    # held back make a noisy scale)
    assert 0.8 <= held_out["within_2sigma"] <= 1.0, held_out
    assert 0.45 <= held_out["within_1sigma"] <= 0.95, held_out
    raw = ForestEnsembleSurrogate(_config(recalibrate=False), seed=0)
    report = raw.fit(*data[:2])
    assert (raw.variance_scale, raw.last_calibration, report.n_val, report.val_mae) == (1.0, None, 0, None)


def test_members_agree_with_predict(data, fitted):
    _, _, test, _ = data
    surrogate = fitted[0]
    members = surrogate.predict_members(test)
    assert members.shape == (100, len(test))
    preds = surrogate.predict(test)
    np.testing.assert_allclose(members.mean(axis=0), _means(preds), atol=1e-12)
    np.testing.assert_allclose(members.std(axis=0), _stds(preds), rtol=1e-9, atol=1e-12)
    assert surrogate.predict_members([]).shape == (100, 0)


def test_embedding_weights_standardised_descriptors_by_importance(data, fitted):
    train, _, test, _ = data
    surrogate = fitted[0]
    emb = surrogate.embed(test)
    assert emb.shape == (len(test), DESCRIPTOR_DIM) and np.isfinite(emb).all()
    unused = surrogate._forest.feature_importances_ == 0  # e.g. n_elements, 3 for every ABX3
    assert unused.any() and np.all(emb[:, unused] == 0)
    assert not np.allclose(emb[0], emb[1])
    np.testing.assert_allclose(surrogate.embed(train).mean(axis=0), 0, atol=1e-9)


def test_same_seed_same_predictions_other_seed_different(data, fitted):
    train, y_train, test, _ = data
    again = ForestEnsembleSurrogate(_config(), seed=0)
    again.fit(train, y_train)
    assert again.predict(test) == fitted[0].predict(test)
    assert again.variance_scale == fitted[0].variance_scale
    np.testing.assert_array_equal(again.predict_members(test[:5]), fitted[0].predict_members(test[:5]))
    other = ForestEnsembleSurrogate(_config(), seed=np.random.SeedSequence(1))
    other.fit(train, y_train)
    assert not np.allclose(_means(other.predict(test)), _means(fitted[0].predict(test)))


def test_small_fits_and_random_forest(data):
    train, y_train, test, _ = data
    tiny = ForestEnsembleSurrogate(_config(n_estimators=10), seed=3)
    report = tiny.fit(train[:2], y_train[:2])
    assert (report.n_train, report.n_val, tiny.variance_scale, tiny.last_calibration) == (2, 0, 1.0, None)
    assert len(tiny.predict(test[:3])) == 3
    assert tiny.fit(train[:9], y_train[:9]).n_val == 0
    assert tiny.fit(train[:10], y_train[:10]).n_val == 3  # at least 3 held back from 10 labels
    forest = ForestEnsembleSurrogate(_config(algorithm="random_forest", n_estimators=30), seed=0)
    forest.fit(train, y_train)
    assert np.mean(np.abs(_means(forest.predict(test)) - data[3])) < 0.4 * data[3].std()


def test_fit_rejects_bad_input(data):
    train, y_train, _, _ = data
    surrogate = ForestEnsembleSurrogate(_config(), seed=0)
    with pytest.raises(ValueError, match="candidates but"):
        surrogate.fit(train[:3], y_train[:2])
    with pytest.raises(ValueError, match="at least 2"):
        surrogate.fit(train[:1], y_train[:1])
    with pytest.raises(ValueError, match="finite"):
        surrogate.fit(train[:3], [0.0, float("inf"), 1.0])
    assert not surrogate.is_fitted


def test_predict_before_fit_raises(data):
    surrogate = ForestEnsembleSurrogate(_config(), seed=0)
    for call in (surrogate.predict, surrogate.predict_members, surrogate.embed):
        with pytest.raises(NotFittedError, match="before fit"):
            call(data[0][:2])


def test_config_defaults_and_validation():
    cfg = ForestSurrogateConfig()
    assert (cfg.kind, cfg.algorithm, cfg.n_estimators, cfg.max_features, cfg.calibration_fraction,
            cfg.recalibrate, cfg.n_jobs) == ("forest", "extra_trees", 200, 0.5, 0.2, True, 1)
    assert ForestSurrogateConfig(property="band_gap").property == "band_gap"
    for bad in ({"n_jobs": 0}, {"max_features": 0.0}, {"calibration_fraction": 0.95},
                {"algorithm": "xgboost"}, {"trees": 10}):
        with pytest.raises(ValidationError):
            ForestSurrogateConfig(**bad)
