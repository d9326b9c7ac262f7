"""The conservative (COMs) objective of LCOM on a 2-D toy: the Lagrange multiplier holds the gap
between data and adversarial predictions near tau, and minimising the trained model stays near the
data, where the plain supervised model runs off it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discovery.models.lcom.conservative import (
    EnergyMLP,
    FitSettings,
    descend,
    fit_member,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def disk_data(n: int = 512):
    """Points in the unit disk, energy = x0 (+ noise): the data's minimum is on the disk's edge,
    and a linear extrapolation keeps falling beyond it."""
    g = torch.Generator().manual_seed(0)
    r = torch.sqrt(torch.rand(n, generator=g))
    theta = torch.rand(n, generator=g) * 2 * math.pi
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    y = x[:, 0] + 0.05 * torch.randn(n, generator=g)
    return x, (y - y.mean()) / y.std()


TAU = 0.5


def train(conservative: bool):
    x, y = disk_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = EnergyMLP(2, 0, 64, 2, 0.2)
    settings = FitSettings(epochs=60, batch_size=64, lr=1e-3, conservative=conservative, tau=TAU, alpha_init=0.1,
                           alpha_lr=0.01, adversarial_steps=10, eta=0.1)
    history = fit_member(model, x, None, y, settings, torch.Generator().manual_seed(1))
    return model, history, x


def test_lagrange_multiplier_holds_the_gap_near_tau():
    _, history, _ = train(True)
    late = history[-10:]
    gap = np.mean([r["gap"] for r in late])
    assert abs(gap - TAU) < 0.2 * TAU, gap
    # the multiplier settled (it rose from 0.1 to hold the gap, and no longer moves much)
    alphas = [r["alpha"] for r in late]
    assert alphas[0] > 0.1 and max(alphas) - min(alphas) < 0.2 * np.mean(alphas)


def test_supervised_optimum_runs_off_the_data_and_the_conservative_one_stays_near():
    sl, sl_history, x = train(False)
    lcom, _, _ = train(True)
    assert all(r["gap"] == 0.0 for r in sl_history)
    starts = x[:64]
    sl_end = descend([sl], starts, None, 100, 0.1).norm(dim=1).mean().item()
    lcom_end = descend([lcom], starts, None, 100, 0.1).norm(dim=1).mean().item()
    # the data live in the unit disk: SL's minimiser leaves it by an order of magnitude, LCOM's
    # stays within a couple of radii of it
    assert sl_end > 5.0, sl_end
    assert lcom_end < 2.5, lcom_end
    assert lcom_end < sl_end / 4


def test_descend_moves_only_the_latent():
    model, _, x = train(True)
    model.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    z = descend([model], x[:8], None, 5, 0.1)
    assert not torch.equal(z, x[:8])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_presets_follow_the_paper():
    from discovery.models.lcom.presets import LCOMConfig

    faithful = LCOMConfig(preset="faithful")
    assert (faithful.hidden, faithful.n_hidden_layers, faithful.epochs, faithful.batch_size, faithful.lr,
            faithful.tau, faithful.alpha_lr, faithful.adversarial_steps) == (2048, 2, 50, 128, 3e-5, 1.0, 0.01, 50)
    cpu = LCOMConfig(preset="cpu", tau=0.5)
    assert cpu.hidden == 512 and cpu.tau == 0.5 and cpu.epochs == faithful.epochs
    assert math.isclose(cpu.step_size(128), 0.05 * math.sqrt(128))
