"""ICSG3D torch models: UNet3D, Cond-DFC-VAE, their losses, presets, training loops and checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from discovery.errors import DataError
from discovery.models.icsg3d.cond_dfc_vae import CondDFCVAE, kl_divergence, vae_loss
from discovery.models.icsg3d.presets import ICSG3DConfig
from discovery.models.icsg3d.training import (
    CHECKPOINT_FORMAT,
    freeze_,
    load_checkpoint,
    save_checkpoint,
    split_indices,
    train_unet,
    train_vae,
    unet_architecture,
    vae_architecture,
)
from discovery.models.icsg3d.unet3d import UNet3D, inverse_frequency_weights, unet_loss

CPU_WIDTHS = ((8, 16), (16, 32), (32, 64))
TINY_WIDTHS = ((4, 8), (8, 8), (8, 16))
ELEMENTS = (3, 8, 26)  # Li, O, Fe


def _seeded(seed, fn, *args, **kwargs):
    """Call ``fn`` with torch's global RNG seeded inside a fork (the global state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _synthetic(n: int, d: int, seed: int, n_deciles: int = 10) -> dict[str, np.ndarray]:
    """Voxel maps of two Gaussian 'atoms' each, in the agreed featuriser format.

    Density is a sum of Gaussians (sigma 1.5 voxels) scaled by the class; species/occupancy label the
    voxels within 2 voxels of a site; the coordinate channels are a regular grid in 0..1.
    """
    rng = np.random.default_rng(seed)
    axis = np.arange(d, dtype=np.float32)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    coords = np.stack([zz, yy, xx]) / d
    x = np.zeros((n, 4, d, d, d), np.float32)
    species = np.zeros((n, d, d, d), np.int64)
    for i in range(n):
        dist_best = np.full((d, d, d), np.inf, np.float32)
        for _ in range(2):
            centre = rng.uniform(3, d - 3, size=3)
            z = int(rng.choice(ELEMENTS))
            r2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
            x[i, 0] += z / 26 * np.exp(-r2 / (2 * 1.5**2))
            inside = (r2 < 4.0) & (r2 < dist_best)
            species[i][inside] = z
            dist_best = np.minimum(dist_best, np.where(r2 < 4.0, r2, np.inf))
        x[i, 1:] = coords
    cond = np.eye(n_deciles, dtype=np.float32)[rng.integers(0, n_deciles, size=n)]
    return {"x": x, "species": species, "occupancy": (species > 0).astype(np.float32), "cond": cond}


def _tiny_config(**overrides) -> ICSG3DConfig:
    raw = {
        "preset": "cpu", "grid": 16,
        "unet": {"widths": TINY_WIDTHS, "bottom": 16, "batch_size": 2, "epochs": 2, "lr": 1e-3},
        "vae": {"filters": (4, 4, 8, 8), "latent": 8, "dense": 16, "batch_size": 2, "epochs": 2},
    }
    raw.update(overrides)
    return ICSG3DConfig(**raw)


def _assert_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("d", [16, 32])
def test_unet_output_and_feature_shapes(d):
    model = _seeded(0, UNet3D, widths=CPU_WIDTHS, bottom=128).eval()
    x = torch.rand(2, 4, d, d, d)
    with torch.no_grad():
        species_logits, occ_logits = model(x)
        feats = model.features(x)
    assert species_logits.shape == (2, 95, d, d, d)
    assert occ_logits.shape == (2, 1, d, d, d)
    assert [tuple(f.shape) for f in feats] == [
        (2, 16, d, d, d), (2, 32, d // 2, d // 2, d // 2), (2, 64, d // 4, d // 4, d // 4),
        (2, 128, d // 8, d // 8, d // 8)]
    assert all((f >= 0).all() for f in feats)  # ReLU outputs, read before BN


def test_unet_faithful_layout_and_bad_grid():
    model = UNet3D()
    # up path of MODELS.md 1.3: [c6, up] 768 -> 512 -> 256; [c4, up] 384 -> 256 -> 128;
    # [c2, up] 192 -> 128 -> 128
    widths = [(first.conv.in_channels, first.conv.out_channels, second.conv.out_channels)
              for first, second in model.up]
    assert widths == [(768, 512, 256), (384, 256, 128), (192, 128, 128)]
    assert model.species_head.out_channels == 95 and model.occupancy_head.out_channels == 1
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.zeros(1, 4, 12, 12, 12))


@pytest.mark.parametrize("d", [16, 32])
def test_vae_shapes(d):
    model = _seeded(0, CondDFCVAE, filters=(8, 16, 32, 64), latent=64, grid=d).eval()
    x, cond = torch.rand(2, 4, d, d, d), torch.eye(10)[[1, 7]]
    with torch.no_grad():
        x_hat, mu, logvar = model(x, cond)
        assert model.decode(mu, cond).shape == (2, 4, d, d, d)
    assert x_hat.shape == (2, 4, d, d, d) and (x_hat >= 0).all()
    assert mu.shape == logvar.shape == (2, 64)
    assert model.encoder_conv[0].in_channels == 14  # 4 map channels + 10 tiled condition channels
    assert model.decoder_dense.out_features == 4 * (d // 8) ** 3
    with pytest.raises(ValueError, match="multiple of 16"):
        CondDFCVAE(grid=24)


# ----------------------------------------------------------------------------- gradients


def test_unet_gradients_reach_every_parameter():
    data = _synthetic(2, 16, seed=1)
    model = _seeded(0, UNet3D, widths=TINY_WIDTHS, bottom=16)
    weights = inverse_frequency_weights(data["species"])
    s_logits, o_logits = model(torch.from_numpy(data["x"]))
    loss = unet_loss(s_logits, o_logits, torch.from_numpy(data["species"]),
                     torch.from_numpy(data["occupancy"]), weights)["total"]
    loss.backward()
    _assert_grads(model)


def test_vae_gradients_reach_every_parameter_and_not_the_frozen_unet():
    data = _synthetic(2, 16, seed=2)
    unet = freeze_(_seeded(0, UNet3D, widths=TINY_WIDTHS, bottom=16))
    vae = _seeded(1, CondDFCVAE, filters=(4, 4, 8, 8), latent=8, grid=16, dense=16)
    x, cond = torch.from_numpy(data["x"]), torch.from_numpy(data["cond"])
    x_hat, mu, logvar = vae(x, cond, rng_generator=torch.Generator().manual_seed(0))
    losses = vae_loss(x, x_hat, mu, logvar, unet.features, alpha=1.0, beta=5e-4)
    assert losses["perceptual"].item() > 0
    losses["total"].backward()
    _assert_grads(vae)
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    assert not unet.training


# ----------------------------------------------------------------------------- optimisation


def test_adam_steps_lower_the_unet_loss():
    data = _synthetic(2, 16, seed=3)
    x, species = torch.from_numpy(data["x"]), torch.from_numpy(data["species"])
    occupancy = torch.from_numpy(data["occupancy"])
    weights = inverse_frequency_weights(data["species"])
    model = _seeded(0, UNet3D, widths=TINY_WIDTHS, bottom=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = unet_loss(*model(x), species, occupancy, weights)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_adam_steps_lower_the_vae_loss():
    data = _synthetic(2, 16, seed=4)
    x, cond = torch.from_numpy(data["x"]), torch.from_numpy(data["cond"])
    unet = freeze_(_seeded(0, UNet3D, widths=TINY_WIDTHS, bottom=16))
    vae = _seeded(1, CondDFCVAE, filters=(4, 4, 8, 8), latent=8, grid=16, dense=16)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(25):
        out = vae_loss(x, *vae(x, cond, rng_generator=gen), unet.features, alpha=0.5, beta=3e-4)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(out["total"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_condition_changes_the_decoder_output():
    vae = _seeded(0, CondDFCVAE, filters=(4, 4, 8, 8), latent=8, grid=16, dense=16).eval()
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = vae.decode(z, torch.eye(10)[[0]])
        b = vae.decode(z, torch.eye(10)[[9]])
        again = vae.decode(z, torch.eye(10)[[0]])
    assert not torch.allclose(a, b)
    assert torch.equal(a, again)


# ----------------------------------------------------------------------------- losses


def test_inverse_frequency_weights_by_hand():
    # counts: background 5, class 1 four times, class 3 once; classes 2 and 4 unseen.
    # raw 1/4 and 1/1, mean 5/8 -> weights 0.4 and 1.6
    a = np.array([[0, 0, 0, 1], [1, 1, 3, 0]])
    b = np.array([0, 1])
    w = inverse_frequency_weights([a, b], n_classes=5)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([0.0, 0.4, 0.0, 1.6, 0.0])
    # a stacked array is counted in chunks: class 1 six times, class 3 twice -> 1/6, 1/2 -> 0.5, 1.5
    stacked = inverse_frequency_weights(np.stack([a, a, np.zeros_like(a)]), n_classes=5)
    assert stacked.tolist() == pytest.approx([0.0, 0.5, 0.0, 1.5, 0.0])
    with pytest.raises(ValueError, match="0..4"):
        inverse_frequency_weights(np.array([0, 5]), n_classes=5)
    with pytest.raises(ValueError, match="no non-background"):
        inverse_frequency_weights(np.zeros((2, 3), np.int64), n_classes=5)


def test_unet_loss_is_keras_weighted_mean_and_ignores_background():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 2, 2, 2, generator=g)
    occ = torch.randn(1, 1, 2, 2, 2, generator=g)
    species = torch.tensor([0, 0, 1, 3, 0, 1, 0, 0]).view(1, 2, 2, 2)
    occupancy = (species > 0).float()
    w = torch.tensor([0.0, 0.5, 0.0, 1.5])
    out = unet_loss(logits, occ, species, occupancy, w)
    ce_voxel = F.cross_entropy(logits, species, reduction="none")
    assert out["ce"].item() == pytest.approx((w[species] * ce_voxel).mean().item())
    assert out["bce"].item() == pytest.approx(F.binary_cross_entropy_with_logits(occ[:, 0], occupancy).item())
    assert out["total"].item() == pytest.approx(out["ce"].item() + out["bce"].item())
    background = unet_loss(logits, occ, torch.zeros_like(species), torch.zeros_like(occupancy), w)
    assert background["ce"].item() == 0.0 and math.isfinite(background["total"].item())


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zeros = torch.zeros(3, 16)
    assert kl_divergence(zeros, zeros).item() == 0.0
    # one latent dim with mu = 1: KL = 0.5 per sample, summed over dims, averaged over the batch
    mu = torch.zeros(2, 16)
    mu[:, 0] = 1.0
    assert kl_divergence(mu, torch.zeros(2, 16)).item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- presets


def test_faithful_preset_has_the_paper_values():
    cfg = ICSG3DConfig(preset="faithful")
    assert cfg.grid == 32 and cfg.n_deciles == 10 and cfg.n_rotations == 10 and cfg.max_structures is None
    assert cfg.condition_property == "formation_energy_per_atom"
    u, v, c = cfg.unet, cfg.vae, cfg.cgcnn
    assert (u.widths, u.bottom, u.lr, u.batch_size, u.epochs) == (((32, 64), (64, 128), (128, 256)), 512,
                                                                   3e-6, 10, 50)
    assert u.class_weights == "inverse_frequency"
    assert (v.filters, v.latent, v.dense, v.alpha, v.beta, v.lr, v.batch_size, v.epochs) == (
        (16, 32, 64, 128), 256, 256, 1.0, 5e-4, 1e-4, 20, 50)
    assert (c.n_conv, c.atom_fea_len, c.h_fea_len, c.lr, c.batch_size, c.epochs) == (
        1, 64, 128, 1e-3, 256, 60)


def test_cpu_preset_is_the_default_and_matches_models_md():
    cfg = ICSG3DConfig()
    # MODELS.md 1.7 cut to the 60-minute budget on 2 cores (see the icsg3d_presets docstring)
    assert cfg.preset == "cpu" and cfg.grid == 32 and cfg.n_rotations == 1 and cfg.max_structures == 1000
    assert (cfg.unet.widths, cfg.unet.bottom, cfg.unet.batch_size, cfg.unet.epochs, cfg.unet.lr) == (
        ((4, 8), (8, 16), (16, 32)), 64, 4, 8, 1e-3)
    v = cfg.vae
    assert (v.filters, v.latent, v.batch_size, v.epochs, v.alpha, v.beta, v.lr) == (
        (8, 16, 32, 64), 64, 8, 40, 0.5, 3e-4, 2e-3)
    assert cfg.unet.bn_recalibration_maps == v.bn_recalibration_maps == 256
    assert (cfg.cgcnn.n_conv, cfg.cgcnn.atom_fea_len, cfg.cgcnn.epochs) == (1, 64, 30)


def test_user_keys_override_the_preset_and_unknown_keys_are_rejected():
    cfg = ICSG3DConfig(preset="faithful", unet={"lr": 1e-4}, n_rotations=3)
    assert cfg.unet.lr == 1e-4 and cfg.unet.bottom == 512 and cfg.unet.batch_size == 10  # merged per key
    assert cfg.n_rotations == 3 and cfg.vae.alpha == 1.0
    for bad in ({"learning_rate": 1.0}, {"unet": {"depth": 4}}, {"preset": "gpu"}, {"grid": 24}):
        with pytest.raises(ValidationError):
            ICSG3DConfig(**bad)
    with pytest.raises(ValidationError):
        cfg.grid = 64  # frozen


# ----------------------------------------------------------------------------- training loops


def test_split_keeps_rotated_copies_with_their_parent():
    groups = np.repeat(np.arange(10), 3)
    train, val = split_indices(30, 0.2, seed=0, groups=groups)
    assert len(val) == 6 and len(train) == 24
    assert not set(groups[train]) & set(groups[val])
    again = split_indices(30, 0.2, seed=0, groups=groups)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


def test_train_unet_then_vae_keep_best_weights_and_report_progress():
    data = _synthetic(6, 16, seed=5)
    cfg = _tiny_config()
    calls = []
    state_before = torch.random.get_rng_state()
    train_idx, val_idx = np.array([0, 2, 3, 5]), np.array([1, 4])
    unet, hist = train_unet(data, cfg, "cpu", seed=0, split=(train_idx, val_idx),
                            progress=lambda *a: calls.append(a))
    assert torch.equal(state_before, torch.random.get_rng_state())  # no global seeding
    assert [c[:3] for c in calls] == [("unet", 1, 2), ("unet", 2, 2)]
    assert set(hist[0]) >= {"epoch", "train_loss", "train_ce", "train_bce", "train_recall", "val_loss",
                            "val_recall", "time_s"}
    assert 0.0 <= hist[-1]["val_recall"] <= 1.0
    # the returned weights are those of the best validation epoch
    weights = inverse_frequency_weights(data["species"][train_idx])
    with torch.no_grad():
        logits = unet(torch.from_numpy(data["x"][val_idx]))
        out = unet_loss(*logits, torch.from_numpy(data["species"][val_idx]),
                        torch.from_numpy(data["occupancy"][val_idx]), weights)["total"].item()
    assert out == pytest.approx(min(h["val_loss"] for h in hist), rel=1e-4)
    # same seed, same history (CPU)
    _, hist_again = train_unet(data, cfg, "cpu", seed=0, split=(train_idx, val_idx))
    assert [h["train_loss"] for h in hist_again] == [h["train_loss"] for h in hist]

    vae, vhist = train_vae(data, unet, cfg, "cpu", seed=1, progress=lambda *a: calls.append(a))
    assert [c[:3] for c in calls[2:]] == [("vae", 1, 2), ("vae", 2, 2)]
    assert set(vhist[0]) >= {"train_loss", "train_mse", "train_perceptual", "train_kl", "val_loss", "val_kl"}
    assert not vae.training and all(not p.requires_grad for p in unet.parameters())


def test_training_rejects_arrays_of_the_wrong_shape():
    data = _synthetic(2, 16, seed=6)
    with pytest.raises(DataError, match="'x' has shape"):
        train_unet(data, _tiny_config(grid=32), "cpu")
    with pytest.raises(DataError, match="missing 'cond'"):
        train_vae({k: v for k, v in data.items() if k != "cond"}, UNet3D(widths=TINY_WIDTHS, bottom=16),
                  _tiny_config(), "cpu")


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved_unet(tmp_path: Path):
    cfg = _tiny_config()
    model = _seeded(0, UNet3D, **unet_architecture(cfg)).eval()
    path = save_checkpoint(tmp_path / "unet.pt", "unet", unet_architecture(cfg), model.state_dict(),
                           extra={"history": [{"epoch": 1, "val_loss": 0.5}], "seed": 0})
    return cfg, model, path


def test_checkpoint_round_trip(saved_unet, tmp_path):
    cfg, model, path = saved_unet
    payload = load_checkpoint(path, "unet", unet_architecture(cfg))
    assert payload["format"] == CHECKPOINT_FORMAT and payload["kind"] == "unet"
    assert payload["extra"]["history"][0]["val_loss"] == 0.5
    x = torch.rand(1, 4, 16, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x), payload["model"](x), strict=True):
            assert torch.equal(a, b)
    vae = _seeded(0, CondDFCVAE, **vae_architecture(cfg))
    vpath = save_checkpoint(tmp_path / "vae.pt", "vae", vae_architecture(cfg), vae.state_dict())
    assert isinstance(load_checkpoint(vpath, "vae", vae_architecture(cfg))["model"], CondDFCVAE)
    assert not list(tmp_path.glob("*.tmp"))


def _expect_data_error(path: Path, kind: str, config: dict, match: str) -> None:
    with pytest.raises(DataError) as info:
        load_checkpoint(path, kind, config)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and match in message, message


def test_bad_checkpoints_raise_one_line_data_errors(saved_unet, tmp_path):
    cfg, model, path = saved_unet
    arch = unet_architecture(cfg)
    _expect_data_error(tmp_path / "missing.pt", "unet", arch, "not found")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint" * 20)
    _expect_data_error(garbage, "unet", arch, "not a readable torch checkpoint")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect_data_error(truncated, "unet", arch, "not a readable torch checkpoint")

    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "discovery.cgcnn_ensemble", "version": 1}, foreign)
    _expect_data_error(foreign, "unet", arch, "format 'discovery.cgcnn_ensemble'")

    vae = _seeded(0, CondDFCVAE, **vae_architecture(cfg))
    other_kind = save_checkpoint(tmp_path / "vae.pt", "vae", vae_architecture(cfg), vae.state_dict())
    _expect_data_error(other_kind, "unet", arch, "holds a 'vae' model")

    wider = unet_architecture(_tiny_config(unet={"widths": CPU_WIDTHS, "bottom": 16}))
    _expect_data_error(path, "unet", wider, "config does not match (widths")

    misfit = save_checkpoint(tmp_path / "misfit.pt", "unet", wider, model.state_dict())
    _expect_data_error(misfit, "unet", wider, "weights do not fit")


def test_segment_equals_the_argmax_of_forward_inside_the_atom_mask():
    net = _seeded(0, UNet3D, widths=TINY_WIDTHS, bottom=16).eval()
    x = _seeded(1, torch.rand, 2, 4, 16, 16, 16)
    bias = torch.full((net.n_classes,), float("-inf"))
    bias[list(ELEMENTS)] = 0.0
    with torch.no_grad():
        species_logits, occ_logits = net(x)
        probability = torch.sigmoid(occ_logits[:, 0])
        threshold = float(probability.median())
        for class_bias in (None, bias):
            labels, occ = net.segment(x, threshold, class_bias)
            torch.testing.assert_close(occ, probability)
            logits = species_logits if class_bias is None else species_logits + class_bias[None, :, None, None, None]
            inside = probability >= threshold
            assert inside.any() and (~inside).any()
            assert torch.equal(labels[inside], logits.argmax(dim=1)[inside])
            assert not labels[~inside].any()


def test_recalibrate_batchnorm_sets_exact_statistics_and_restores_the_layers():
    from discovery.models.icsg3d.training import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2, momentum=0.01))
    data = torch.randn(12, 1, 4, 4, 4) * 3 + 5
    recalibrate_batchnorm(net, lambda idx: net(data[torch.as_tensor(idx)]), np.arange(12), batch_size=4)
    bn = net[1]
    with torch.no_grad():
        h = net[0](data)
    # cumulative average of per-batch statistics over three equal batches = the exact mean
    torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2, 3, 4)), rtol=1e-5, atol=1e-5)
    per_batch_var = torch.stack([h[i:i + 4].var(dim=(0, 2, 3, 4), unbiased=True) for i in (0, 4, 8)])
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(dim=0), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.01 and not net.training
