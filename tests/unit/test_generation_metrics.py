"""CD-VAE's generation metrics (discovery.metrics) on small hand-made crystals."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from discovery.metrics.fingerprints import FingerprintCache
from discovery.metrics.generation import (
    best_of_runs,
    compositionally_valid,
    coverage,
    crystal_from_arrays,
    fingerprints,
    generation_metrics,
    optimization_success_rates,
    property_emds,
    reconstruction_metrics,
    structurally_valid,
)
from discovery.metrics.validity import _pauling_ok


def _perovskite(a_site: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [a_site, "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def crystals() -> dict[str, Structure]:
    return {
        "SrTiO3": _perovskite("Sr", 3.905),
        "BaTiO3": _perovskite("Ba", 4.00),
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                          [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure(),
        "Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]).get_primitive_structure(),
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]).get_primitive_structure(),
    }


def _pair(distance: float) -> Structure:
    return Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [distance / 6.0, 0, 0]])


def test_structural_validity_uses_the_half_angstrom_distance_and_the_volume():
    assert not structurally_valid(_pair(0.4))
    assert structurally_valid(_pair(0.6))
    assert not structurally_valid(None)  # a failed decode
    tiny = Structure(Lattice.cubic(0.45), ["H"], [[0, 0, 0]])  # 0.09 A^3
    assert not structurally_valid(tiny)
    assert crystal_from_arrays([[0, 0, 0]], [1], [-1.0, 3.0, 3.0], [90, 90, 90]) is None  # negative length
    built = crystal_from_arrays([[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17], [3.0, 3.0, 3.0], [90, 90, 90])
    assert built is not None and structurally_valid(built)


def test_compositional_validity_follows_cdvae_smact():
    assert compositionally_valid("NaCl")
    assert not compositionally_valid("NaCl2")
    assert compositionally_valid("Fe3Al")  # every element a metal: an alloy
    assert compositionally_valid("O")  # a single element
    assert compositionally_valid(_perovskite("Sr", 3.905))  # from a Structure
    assert not compositionally_valid(None)
    # SMACT 2014 oxidation states, as CD-VAE's smact 2.2.1 (B has no negative state there;
    # smact 4's ICSD-24 default would accept MgB2).
    assert not compositionally_valid("MgB2")


def test_pauling_test_passes_a_missing_electronegativity_as_smact_221_did():
    assert _pauling_ok([1, -1], [None, 3.0])
    assert not _pauling_ok([1, -1], [3.0, 1.0])
    assert _pauling_ok([1, -1], [1.0, 3.0])


def test_coverage_is_full_for_identical_sets_and_zero_for_disjoint_ones(crystals):
    ref = [crystals["SrTiO3"], crystals["BaTiO3"], crystals["NaCl"]]
    same = coverage(ref, ref, dataset="perov_5")
    assert same["cov_recall"] == 1.0 and same["cov_precision"] == 1.0
    assert same["amsd_recall"] == pytest.approx(0.0, abs=1e-9)
    disjoint = coverage([crystals["Cu"], crystals["Si"]], ref, dataset="perov_5")
    assert disjoint["cov_recall"] == 0.0 and disjoint["cov_precision"] == 0.0
    # A failed decode has no fingerprint but counts in COV-P's denominator.
    with_none = coverage([*ref, None], ref, dataset="perov_5")
    assert with_none["cov_recall"] == 1.0 and with_none["cov_precision"] == pytest.approx(0.75)


def test_reconstruction_matches_identical_and_rejects_distorted_and_missing(crystals):
    true = crystals["SrTiO3"]
    stretched = true.copy()
    stretched.lattice = Lattice.tetragonal(3.905, 3.905 * 1.6)  # beyond ltol = 0.3
    out = reconstruction_metrics([true.copy(), stretched, None], [true, true, true])
    assert out["n"] == 3 and out["n_matched"] == 1
    assert out["match_rate"] == pytest.approx(1 / 3)
    assert out["rmse"] == pytest.approx(0.0, abs=1e-8)
    assert reconstruction_metrics([None], [true])["rmse"] is None
    jiggled = true.copy()
    jiggled.translate_sites([1], [0.03, 0.0, 0.0], frac_coords=True)  # 0.12 A: within stol = 0.5
    near = reconstruction_metrics([jiggled], [true])
    assert near["match_rate"] == 1.0 and 0.0 < near["rmse"] < 0.1


def test_emds_of_identical_sets_are_zero(crystals):
    ref = [crystals["SrTiO3"], crystals["NaCl"], crystals["Cu"]]
    out = property_emds(ref, list(ref), property_fn=lambda ss: [s.volume for s in ss])
    assert out == {"emd_density": 0.0, "emd_n_elements": 0.0, "emd_property": 0.0}
    shifted = property_emds([crystals["Cu"]], [crystals["Si"]])
    assert shifted["emd_density"] == pytest.approx(abs(crystals["Cu"].density - crystals["Si"].density))


def test_generation_metrics_rates_over_all_samples_and_cov_over_the_generated(crystals):
    ref = [crystals["SrTiO3"], crystals["BaTiO3"], crystals["NaCl"]]
    generated = [*ref, _pair(0.4), None]
    out = generation_metrics(generated, ref, dataset="perov_5", n_valid_sample=2, seed=0)
    assert out["n"] == 5 and out["n_valid"] == 3 and out["n_eval"] == 2
    assert out["struct_validity"] == pytest.approx(3 / 5)
    assert out["comp_validity"] == pytest.approx(4 / 5)  # the squeezed NaCl is still NaCl
    assert out["validity"] == pytest.approx(3 / 5)
    assert out["cov_recall"] == 1.0
    assert out["cov_precision_valid"] == pytest.approx(3 / 5)
    assert out["struct_cutoff"] == 0.2 and out["comp_cutoff"] == 4.0


def test_success_rates_on_a_hand_made_case():
    train = np.arange(100.0)  # percentiles 4.95, 9.9, 14.85
    best = [0.0, 7.0, 12.0, 50.0, None]
    assert optimization_success_rates(best, train) == pytest.approx({"SR5": 0.2, "SR10": 0.4, "SR15": 0.6})
    assert optimization_success_rates([0.5], thresholds=(0.4, 0.6, 0.7)) == {"SR5": 0.0, "SR10": 1.0, "SR15": 1.0}
    # two runs, three steps, step-major as CD-VAE stores them; run 1 never valid
    best_runs = best_of_runs([3.0, 9.0, 1.0, 8.0, 2.0, 7.0], [True, False, True, False, False, False], n_runs=2)
    assert best_runs[0] == 1.0 and np.isinf(best_runs[1])


def test_fingerprints_are_cached_and_the_cache_round_trips(crystals, tmp_path, monkeypatch):
    import discovery.metrics.fingerprints as fpmod

    cache = FingerprintCache(tmp_path / "fp.npz")
    first = fingerprints([crystals["NaCl"], None], cache=cache)
    assert first.ok.tolist() == [True, False]
    assert first.struct.shape == (2, 61) and first.comp.shape == (2, 132)
    assert np.all(np.isfinite(first.comp[0]))  # NaN -> 0 after CD-VAE's scaler
    cache.save()

    def fail(_structures):
        raise AssertionError("recomputed a cached fingerprint")

    monkeypatch.setattr(fpmod, "_structure_fingerprints_chunk", fail)
    again = fingerprints([crystals["NaCl"]], cache=FingerprintCache(tmp_path / "fp.npz"))
    np.testing.assert_array_equal(again.struct[0], first.struct[0])
    np.testing.assert_array_equal(again.comp[0], first.comp[0])


@pytest.mark.slow
def test_worker_processes_give_the_same_fingerprints(crystals, monkeypatch):
    import discovery.metrics.fingerprints as fpmod

    monkeypatch.setattr(fpmod, "MIN_STRUCTURES_PER_WORKER", 1)
    structures = list(crystals.values())
    serial = fingerprints(structures, cache=FingerprintCache())
    parallel = fingerprints(structures, n_jobs=2, cache=FingerprintCache())
    np.testing.assert_allclose(parallel.struct, serial.struct)
