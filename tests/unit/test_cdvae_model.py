"""CD-VAE's networks: encoder invariance, decoder equivariance, presets, one faithful training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from discovery.errors import ConfigError
from discovery.lifecycle import training_config
from discovery.models.cdvae.decoder import DirectForceDecoder
from discovery.models.cdvae.encoder import DimeNetPPEncoder
from discovery.models.cdvae.graphs import crystalnn_graph
from discovery.models.cdvae.presets import CDVAEConfig


pytestmark = pytest.mark.usefixtures("torch_one_thread")


TINY_ENCODER = dict(hidden=16, num_blocks=2, int_emb=8, basis_emb=4, out_emb=16)


def fresh(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (DimeNet++ zero-initialises its output layers, which would make
    any invariance test pass trivially)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.double().eval()


@pytest.fixture(scope="module")
def encoder():
    return fresh(DimeNetPPEncoder(out_dim=8, **TINY_ENCODER), 0)


@pytest.fixture(scope="module", params=[0, 6], ids=["distances", "angles"])
def decoder(request):
    return fresh(DirectForceDecoder(latent_dim=4, hidden=16, num_blocks=2, num_radial=16,
                                    angle_neighbors=request.param), 1)


def crystal() -> Structure:
    return Structure(Lattice.from_parameters(4.1, 4.6, 5.2, 82, 97, 104), ["Sr", "Ti", "O", "O", "N"],
                     [[0.02, 0.05, 0.01], [0.48, 0.52, 0.47], [0.51, 0.49, 0.03], [0.47, 0.02, 0.55],
                      [0.03, 0.51, 0.49]])


def encode(encoder, structure: Structure, lattice: np.ndarray | None = None) -> np.ndarray:
    edge_index, images = crystalnn_graph(structure)
    lat = torch.tensor(structure.lattice.matrix if lattice is None else lattice)[None]
    with torch.no_grad():
        out = encoder(torch.tensor(structure.atomic_numbers), torch.tensor(structure.frac_coords), lat,
                      torch.tensor([len(structure)]), torch.tensor(edge_index), torch.tensor(images),
                      torch.tensor([edge_index.shape[1]]))
    return out[0].numpy()


def test_encoder_is_invariant(encoder):
    s = crystal()
    ref = encode(encoder, s)
    assert np.abs(ref).max() > 1e-3  # not trivially zero
    rot = Rotation.random(random_state=3).as_matrix()
    np.testing.assert_allclose(encode(encoder, s, s.lattice.matrix @ rot.T), ref, atol=1e-8)  # rotation
    moved = Structure(s.lattice, s.species, s.frac_coords + [0.37, -0.21, 0.66])  # translation
    np.testing.assert_allclose(encode(encoder, moved), ref, atol=1e-8)
    frac = s.frac_coords.copy()
    frac[2] += [1, -1, 2]  # one site moved to another periodic image
    np.testing.assert_allclose(encode(encoder, Structure(s.lattice, s.species, frac)), ref, atol=1e-8)
    perm = [3, 0, 4, 1, 2]
    permuted = Structure(s.lattice, [s.species[k] for k in perm], s.frac_coords[perm])
    np.testing.assert_allclose(encode(encoder, permuted), ref, atol=1e-8)
    other = Structure(s.lattice, ["Ba", "Ti", "O", "O", "N"], s.frac_coords)
    assert np.abs(encode(encoder, other) - ref).max() > 1e-4  # it does see the species


def decode(decoder, structure: Structure, lattice: np.ndarray | None = None):
    z = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=torch.float64)
    lat = torch.tensor(structure.lattice.matrix if lattice is None else lattice)[None]
    with torch.no_grad():
        diff, logits = decoder(z, torch.tensor(structure.frac_coords), torch.tensor(structure.atomic_numbers),
                               torch.tensor([len(structure)]), lat)
    return diff.numpy(), logits.numpy()


def test_decoder_scores_rotate_with_the_crystal(decoder):
    s = crystal()
    diff, logits = decode(decoder, s)
    assert np.abs(diff).max() > 1e-3
    rot = Rotation.random(random_state=5).as_matrix()
    diff_r, logits_r = decode(decoder, s, s.lattice.matrix @ rot.T)
    np.testing.assert_allclose(diff_r, diff @ rot.T, atol=1e-8)
    np.testing.assert_allclose(logits_r, logits, atol=1e-8)
    moved = Structure(s.lattice, s.species, (s.frac_coords + [0.25, 0.6, -0.3]) % 1.0)
    np.testing.assert_allclose(decode(decoder, moved)[0], diff, atol=1e-8)  # translation
    perm = [4, 2, 0, 3, 1]
    permuted = Structure(s.lattice, [s.species[k] for k in perm], s.frac_coords[perm])
    np.testing.assert_allclose(decode(decoder, permuted)[0], diff[perm], atol=1e-8)


def test_presets_fill_and_user_keys_win():
    cpu = CDVAEConfig(preset="cpu")
    faithful = CDVAEConfig(preset="faithful", dataset="perov_5")
    assert (cpu.latent_dim, cpu.encoder.hidden, cpu.langevin.n_step_each) == (128, 64, 10)
    assert (faithful.latent_dim, faithful.encoder.num_blocks, faithful.decoder.num_blocks) == (256, 4, 3)
    assert (faithful.epochs, faithful.teacher_forcing_max_epoch, faithful.batch_size) == (3000, 1500, 512)
    assert (faithful.cost_lattice, faithful.cost_coord, faithful.beta, faithful.sigma_begin) == (10, 10, 0.01, 10)
    mine = CDVAEConfig(preset="cpu", encoder={"hidden": 32}, epochs=7)
    assert mine.encoder.hidden == 32 and mine.encoder.num_blocks == 2 and mine.epochs == 7
    with pytest.raises(ConfigError, match="preset 'gpu'"):
        training_config(CDVAEConfig, "gpu", {}, "train")
    with pytest.raises(ConfigError, match="bogus"):
        training_config(CDVAEConfig, "cpu", ["bogus=1"], "--set")
    with pytest.raises(ConfigError, match="decoder.kind"):
        training_config(CDVAEConfig, "cpu", ["decoder.kind=gemnet"], "--set")


def test_faithful_preset_shapes_and_one_training_step():
    from torch_geometric.loader import DataLoader

    from discovery.models.cdvae.data import fit_scalers, to_graph_data
    from discovery.models.cdvae.graphs import canonical_structure
    from discovery.models.cdvae.model import CDVAE

    config = CDVAEConfig(preset="faithful")
    structures = [canonical_structure(crystal()), canonical_structure(Structure(
        Lattice.cubic(3.9), ["Ba", "Zr", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]))]
    props = np.array([0.3, -0.1])
    torch.manual_seed(0)
    model = CDVAE(config.model_dump(), max_atoms=20, predict_property=True)
    model.set_scalers(**fit_scalers(structures, props))
    batch = next(iter(DataLoader(to_graph_data(structures, props), batch_size=2)))
    gen = torch.Generator().manual_seed(0)
    out = model(batch, teacher_forcing=True, generator=gen)
    assert out["z"].shape == (2, 256) and out["natom_logits"].shape == (2, 21)
    assert out["type_logits"].shape == (10, 100) and out["scaled_lattice"].shape == (2, 6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out["loss"].backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("encoder.") for n in changed) and any(n.startswith("decoder.") for n in changed)
    assert any(n.startswith("fc_property") for n in changed)
    assert torch.isfinite(out["loss"])


@pytest.mark.slow
def test_numeric_spherical_basis_equals_pyg_sympy_layer():
    from torch_geometric.nn.models.dimenet import SphericalBasisLayer

    from discovery.models.cdvae.encoder import NumericSphericalBasisLayer

    ours, pyg = NumericSphericalBasisLayer(7, 6, 7.0, 5), SphericalBasisLayer(7, 6, 7.0, 5)
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(50, generator=gen, dtype=torch.float64) * 6.5 + 0.8
    angle = torch.rand(200, generator=gen, dtype=torch.float64) * np.pi
    idx_kj = torch.randint(0, 50, (200,), generator=gen)
    np.testing.assert_allclose(ours(dist, angle, idx_kj).numpy(), pyg(dist, angle, idx_kj).numpy(),
                               rtol=1e-6, atol=1e-8)
