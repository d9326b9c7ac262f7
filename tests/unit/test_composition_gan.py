"""Composition CondGAN / CondVAE (Sawada et al.): data checks, features, MH valence correction, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discovery.errors import DataError
from discovery.models.composition_gan.config import CompositionGANConfig, CompositionVAEConfig
from discovery.models.composition_gan.data import read_composition_table
from discovery.models.composition_gan.features import MAGPIE_PROPERTIES, Featurizer
from discovery.models.composition_gan.training import build_gan, build_vae, gradient_penalty, train_loop
from discovery.models.composition_gan.valence import (clean_fractions, correct, correct_many, integer_formula,
                                                      smact_problem, valence_matrix)

from composition_gan_helpers import synthetic_table, write_table


def test_mh_makes_a_charged_composition_neutral():
    fixed = correct({"Na": 0.6, "Cl": 0.4}, np.random.default_rng(0))
    assert fixed.status == "neutral" and fixed.neutral
    assert fixed.fractions == {"Na": 0.5, "Cl": 0.5}
    assert fixed.iterations > 0
    fe = correct({"Fe": 0.47, "O": 0.53}, np.random.default_rng(1))
    assert fe.neutral and abs(fe.fractions["Fe"] * 3 - fe.fractions["O"] * 2) < 1e-9 or abs(
        fe.fractions["Fe"] * 2 - fe.fractions["O"] * 2) < 1e-9


def test_mh_leaves_a_neutral_composition_unchanged():
    for comp in ({"Fe": 0.4, "O": 0.6}, {"Na": 0.5, "Cl": 0.5}, {"Al": 0.4, "O": 0.6}):
        fixed = correct(comp, np.random.default_rng(0))
        assert fixed.neutral and fixed.iterations == 0 and fixed.fractions == comp


def test_mh_batch_agrees_and_flags_unusable_valences():
    rng = np.random.default_rng(2)
    out = correct_many([{"Na": 0.7, "Cl": 0.3}, {"Mg": 0.5, "O": 0.5}, {"Cu": 1.0},
                        {"Li": 0.25, "Fe": 0.25, "Mn": 0.5}], rng)
    assert [o.status for o in out[:3]] == ["neutral", "neutral", "single_element"]
    # Fe has 2 common states and Mn 4: the original returns such compositions unchanged (flagged)
    assert out[3].status == "mixed_state_counts"
    v, reason = valence_matrix(["Na", "Fe", "O"])  # single-state elements repeat across the columns
    assert reason == "" and v.shape == (3, 2) and v[0].tolist() == [1.0, 1.0] and v[2].tolist() == [-2.0, -2.0]
    # our "product" option: every combination of states is a column, so mixed counts are corrected too
    v, _ = valence_matrix(["Li", "Fe", "Mn"], "product")
    assert v.shape == (3, 2 * len(valence_matrix(["Mn"])[0][0]))
    fixed = correct({"Li": 0.25, "Fe": 0.25, "O": 0.3, "Mn": 0.2}, np.random.default_rng(3), assignments="product")
    assert fixed.neutral


def test_mh_signed_stop_reproduces_the_original_rule():
    # the original stops when the best candidate's *signed* charge is below 1e-6, so a chain can stop
    # on a negatively charged composition; the |charge| rule goes on to neutrality
    signed = correct({"Na": 0.2, "Cl": 0.8}, np.random.default_rng(0), signed_stop=True)
    assert signed.status == "not_converged" and signed.fractions["Cl"] > signed.fractions["Na"]
    assert correct({"Na": 0.2, "Cl": 0.8}, np.random.default_rng(0)).neutral


def test_threshold_and_integer_formula():
    cleaned = clean_fractions(np.array([[0.5, 0.02, 0.48]]))
    assert cleaned[0, 1] == 0 and cleaned.sum() == pytest.approx(1.0)
    assert integer_formula({"Fe": 0.4, "O": 0.6}) == {"Fe": 2, "O": 3}
    assert integer_formula({"Mg": 0.33, "F": 0.67}) == {"Mg": 1, "F": 2}
    assert integer_formula({"Ba": 0.02, "Ti": 0.32, "O": 0.66}, max_atoms=20) is None
    assert smact_problem({"Fe": 2, "O": 3}) is None
    assert smact_problem({"Na": 2, "Cl": 1}) is not None


def test_read_table_counts_and_skips_bad_rows(tmp_path):
    path = write_table(tmp_path / "t.csv", [("NaCl", -2.1), ("Xx2O", -1.0), ("MgO", "abc"), ("KCl", "nan"),
                                           ("Na1Cl1", -2.0), ("CaO", -3.1)])
    table = read_composition_table(path)
    assert table.formulas == ["NaCl", "CaO"]
    assert table.skipped == {"unknown element": 1, "non-numeric energy": 2, "duplicate composition": 1}
    assert table.elements() == ["O", "Na", "Cl", "Ca"]


def test_read_table_bad_throughout_is_one_line(tmp_path):
    bad = write_table(tmp_path / "bad.csv", [("Qq", 1.0), ("NaCl", "x")])
    with pytest.raises(DataError, match="no usable row") as err:
        read_composition_table(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    cols = tmp_path / "cols.csv"
    cols.write_text("formula,energy\nNaCl,-2\n")
    with pytest.raises(DataError, match="missing column"):
        read_composition_table(cols)
    with pytest.raises(DataError, match="not found"):
        read_composition_table(tmp_path / "none.csv")


def test_features_scale_and_invert(tmp_path):
    table = read_composition_table(synthetic_table(tmp_path))
    els = table.elements()
    probe = Featurizer(tuple(els), np.zeros((len(els), 0)), np.zeros(0), np.zeros(0), 0.0, 1.0)
    fr = probe.fractions_of(table.compositions)
    feat = Featurizer.fit(fr, els, table.y)
    x = feat.transform(fr)
    assert x.shape == (len(table), len(els) + len(MAGPIE_PROPERTIES)) and len(MAGPIE_PROPERTIES) == 58
    assert x.min() >= 0 and x.max() <= 1
    assert np.allclose(feat.inverse_fractions(x), fr, atol=1e-5)
    assert np.allclose(feat.unscale_y(feat.scale_y(table.y)), table.y)
    # the descriptors are composition-weighted averages: NaCl's electronegativity is the mean of Na's and Cl's
    j = len(els) + MAGPIE_PROPERTIES.index("Electronegativity")
    raw = feat.raw(fr)
    i_nacl = table.formulas.index("NaCl")
    assert raw[i_nacl, j] == pytest.approx(0.5 * (0.93 + 3.16), abs=0.02)


def test_gradient_penalty_matches_finite_differences():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 1).double()
    critic = lambda x: torch.tanh(lin(x)).squeeze(-1) ** 3  # noqa: E731
    real, fake = torch.rand(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    eps = torch.rand(3, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, eps, weight=10.0).item()
    h, norms = 1e-6, []
    for b in range(3):
        x = eps[b] * real[b] + (1 - eps[b]) * fake[b]
        g = [(critic((x + h * e).view(1, 5)).item() - critic((x - h * e).view(1, 5)).item()) / (2 * h)
             for e in torch.eye(5, dtype=torch.float64)]
        norms.append(np.linalg.norm(g))
    assert gp == pytest.approx(10.0 * np.mean((np.array(norms) - 1) ** 2), rel=1e-6)


def _xy(tmp_path):
    table = read_composition_table(synthetic_table(tmp_path))
    els = table.elements()
    probe = Featurizer(tuple(els), np.zeros((len(els), 0)), np.zeros(0), np.zeros(0), 0.0, 1.0)
    fr = probe.fractions_of(table.compositions)
    feat = Featurizer.fit(fr, els, table.y)
    return feat.transform(fr), feat.scale_y(table.y)


@pytest.mark.slow
def test_cpu_presets_lower_the_losses(tmp_path):
    x, y = _xy(tmp_path)
    gan_cfg = CompositionGANConfig(preset="cpu", epochs=40, batch_size=16)
    assert (gan_cfg.n_critic, gan_cfg.lr, gan_cfg.betas, gan_cfg.gp_lambda, gan_cfg.noise_dim) == (
        5, 1e-4, (0.0, 0.9), 10.0, 10)
    gan = train_loop(build_gan(x.shape[1], gan_cfg, 0), x, y, gan_cfg, seed=0)
    assert gan.history[-1]["d_regression"] < 0.5 * gan.history[0]["d_regression"]
    assert gan.history[-1]["w_distance"] != gan.history[0]["w_distance"]
    vae_cfg = CompositionVAEConfig(preset="cpu", epochs=200, batch_size=16)
    vae = train_loop(build_vae(x.shape[1], vae_cfg, 0), x, y, vae_cfg, seed=0)
    assert vae.history[-1]["loss"] < 0.9 * vae.history[0]["loss"]


def test_presets():
    assert CompositionGANConfig(preset="faithful").epochs == 50_000
    assert CompositionGANConfig(preset="cpu").batch_size == 256
    assert CompositionVAEConfig(preset="faithful").epochs == 50_000
    with pytest.raises(ValueError):
        CompositionGANConfig(preset="cpu", unknown=1)
