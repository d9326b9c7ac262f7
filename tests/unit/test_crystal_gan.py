"""Crystal GAN (Kim et al. 2020): representation, data checks, augmentation, losses and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from discovery.errors import DataError
from discovery.models.crystal_gan.config import CrystalGANConfig
from discovery.models.crystal_gan.data import augment, choose_holdout, load_matrices
from discovery.models.crystal_gan.representation import decode, encode
from discovery.models.crystal_gan.training import (build_networks, gradient_penalty, train_crystal_gan,
                                                   train_step)

from crystal_gan_helpers import BLOCKS, TINY, spinel_like


def test_encode_decode_round_trip_matches():
    s = spinel_like(np.random.default_rng(0))
    x = encode(s, BLOCKS)
    assert x.shape == (30, 3)
    assert np.all(x[10:14].sum(1) >= 0.5) and np.all(x[14:18] == 0)  # 4 Mn rows, then padding
    back = decode(x, BLOCKS)
    assert back.counts == (2, 4, 8) and back.row_counts == (2, 4, 8)
    assert StructureMatcher().fit(s, back.structure)


def test_decode_substitutes_roles_and_fills_an_empty_block():
    s = spinel_like(np.random.default_rng(1))
    x = encode(s, BLOCKS)
    sub = decode(x, BLOCKS, species={"A": "Ca", "B": "Ti"})
    assert sub.structure.composition.get_el_amt_dict() == {"Ca": 2, "Ti": 4, "O": 8}
    x[2:10] = 0.0  # no Mg row left: the original inserts one atom at u = 0.1667
    filled = decode(x, BLOCKS)
    assert filled.row_counts[0] == 0 and filled.counts[0] == 1
    mg = [site for site in filled.structure if site.specie.symbol == "Mg"]
    assert np.allclose(mg[0].frac_coords, (15 * 0.1667 - 2.5) / 10)
    # a row below the 0.4 threshold is padding; the Q-network decoder follows the occupancy instead
    x[26, :] = 0.1  # the first O padding row (8 O atoms: rows 18-25)
    assert decode(x, BLOCKS).counts[2] == 8
    occ = np.zeros(28, dtype=bool)
    occ[[0, 8, 16, 17]] = True
    assert decode(x, BLOCKS, occupancy=occ).counts == (1, 1, 2)


def test_encode_refuses_too_many_atoms():
    lattice = Lattice.cubic(9.0)
    many = Structure(lattice, ["Mg"] * 9 + ["Mn", "O"], [[i / 9, 0, 0] for i in range(9)] + [[0.5] * 3, [0, 0.5, 0]])
    with pytest.raises(ValueError, match="at most 8"):
        encode(many, BLOCKS)


def _write_matrices(tmp_path, n_per=(3, 2, 1)) -> tuple:
    rng = np.random.default_rng(3)
    comps = [(2, 4, 8), (1, 2, 4), (2, 2, 6)]
    mats = [encode(spinel_like(rng, c), BLOCKS) for c, k in zip(comps, n_per) for _ in range(k)]
    path = tmp_path / "m.npy"
    np.save(path, np.array(mats))
    return path, comps


def test_load_matrices_checks_shape_and_objects(tmp_path):
    path, _ = _write_matrices(tmp_path)
    data = load_matrices(path, BLOCKS)
    assert data.matrices.shape == (6, 30, 3)
    assert sorted(map(tuple, data.counts.tolist()))[0] == (1, 2, 4)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 29, 3)))
    with pytest.raises(DataError, match=r"shape \(4, 29, 3\), expected \(N, 30, 3\)") as err:
        load_matrices(wrong, BLOCKS)
    assert "\n" not in str(err.value) and str(wrong) in str(err.value)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([np.zeros((30, 3)), "x"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="object array") as err:
        load_matrices(objects, BLOCKS)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_matrices(tmp_path / "missing.npy", BLOCKS)


def test_augmentation_keeps_compositions_and_structures(tmp_path):
    path, comps = _write_matrices(tmp_path)
    data = load_matrices(path, BLOCKS)
    x, counts = augment(data.matrices, data.counts, BLOCKS, 12, np.random.default_rng(0))
    assert x.shape == (36, 30, 3)
    for comp in comps:
        assert (np.all(counts == comp, axis=1)).sum() == 12
    # every augmented matrix decodes to its composition, and translated copies are the same crystal
    # as one of the originals (axis permutations relabel the lattice vectors: also the same crystal)
    matcher = StructureMatcher()
    originals = [decode(m, BLOCKS).structure for m in data.matrices]
    for m, c in zip(x[::5], counts[::5]):
        dec = decode(m, BLOCKS)
        assert dec.counts == tuple(c)
        assert any(matcher.fit(dec.structure, o) for o in originals)


def test_holdout_default_includes_the_paper_composition(tmp_path):
    rng = np.random.default_rng(4)
    mats = [encode(spinel_like(rng, c), BLOCKS) for c in [(6, 3, 11), (1, 2, 4), (1, 2, 4), (2, 2, 6), (2, 2, 6)]]
    path = tmp_path / "h.npy"
    np.save(path, np.array(mats))
    data = load_matrices(path, BLOCKS)
    held = choose_holdout(data, BLOCKS, None, extra=1, seed=0)
    assert held[0] == (6, 3, 11) and len(held) == 2
    assert choose_holdout(data, BLOCKS, ("Mg2Mn2O6",), 0, 0) == [(2, 2, 6)]
    with pytest.raises(DataError, match="no structure"):
        choose_holdout(data, BLOCKS, ("Mg1Mn1O1",), 0, 0)


def test_gradient_penalty_matches_finite_differences():
    torch.manual_seed(0)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3).double()

        def forward(self, x):
            out = torch.tanh(self.lin(x.flatten(1))) ** 2
            return None, out  # (feature, outputs) like the critic

    critic = Toy()
    real = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    fake = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    alpha = torch.rand(4, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, alpha, weight=10.0).item()
    h = 1e-6
    norms = []
    for b in range(4):
        x = (alpha[b] * real[b] + (1 - alpha[b]) * fake[b]).flatten()
        grad = []
        for i in range(6):
            e = torch.zeros(6, dtype=torch.float64)
            e[i] = h
            f = lambda v: critic(v.view(1, 1, 2, 3))[1].sum().item()  # noqa: E731 - sum of the outputs
            grad.append((f(x + e) - f(x - e)) / (2 * h))
        norms.append(np.linalg.norm(grad))
    expected = 10.0 * np.mean((np.array(norms) - 1) ** 2)
    assert gp == pytest.approx(expected, rel=1e-6)


def _tiny_data():
    rng = np.random.default_rng(5)
    comps = [(2, 4, 8), (1, 2, 4), (2, 2, 6), (4, 2, 8)]
    mats = np.array([encode(spinel_like(rng, c), BLOCKS) for c in comps for _ in range(2)])
    counts = np.array([c for c in comps for _ in range(2)])
    return augment(mats, counts, BLOCKS, 16, np.random.default_rng(0))


@pytest.mark.slow
def test_cpu_preset_steps_lower_the_losses():
    config = CrystalGANConfig(preset="cpu", **TINY)
    assert config.lr_decay == 0.95 and config.n_critic == 5 and config.gp_lambda == 10 and config.lambda_count == 0.3
    x, counts = _tiny_data()
    nets = build_networks(config, seed=0)
    gen = torch.Generator().manual_seed(0)
    xt = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1)
    ct = torch.as_tensor(counts)
    history = []
    for j in range(120):
        idx = torch.randint(len(xt), (16,), generator=gen)
        history.append(train_step(nets, xt[idx], ct[idx], j, config, gen))

    def mean(key, part):
        return np.mean([h[key] for h in part if key in h])

    q_first = mean("q_row_real", history[:10]) + mean("q_count_real", history[:10])
    q_last = mean("q_row_real", history[-10:]) + mean("q_count_real", history[-10:])
    assert q_last < q_first - 0.15  # the Q-network learns rows and counts of real cells
    assert mean("gp", history[-10:]) < 0.5 * mean("gp", history[:10])  # the critic meets its Lipschitz penalty


def test_lr_schedule_and_history():
    config = CrystalGANConfig(preset="cpu", epochs=3, lr_decay_every=1, **TINY)
    x, counts = _tiny_data()
    nets = train_crystal_gan(x, counts, config, seed=1)
    assert len(nets.history) == 3
    assert nets.opt_g.param_groups[0]["lr"] == pytest.approx(config.lr_g * 0.95 ** 3)


def test_presets_fill_sizes():
    faithful = CrystalGANConfig(preset="faithful")
    assert (faithful.latent_dim, faithful.g_channels, faithful.d_channels, faithful.d_fc) == (
        512, (256, 512, 256), (512, 512, 256), (1000, 200))
    assert (faithful.epochs, faithful.samples_per_composition, faithful.lr_q, faithful.bn_eps) == (501, 100, 2.5e-5, 0.8)
    assert faithful.double_softmax and faithful.n_rows == 30
    cpu = CrystalGANConfig(preset="cpu", epochs=3)
    assert cpu.epochs == 3 and cpu.latent_dim == 512
