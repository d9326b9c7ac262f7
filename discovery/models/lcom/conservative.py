"""The COMs mechanics on latents, for minimisation (MODELS.md 5.1, 5.2): the energy MLP, the
adversarial descent, the conservative loss with its Lagrange multiplier, and latent optimisation.

For a batch (z, c, y) of standardised latents z, composition vectors c and standardised targets y:

1. adversarial latents z- = z after ``adversarial_steps`` plain gradient steps
   z <- z - eta * grad_z f(z, c) (descent: the latents the model thinks most stable; detached;
   only z moves, c is fixed);
2. gap = mean f(z, c) - mean f(z-, c): how far the model *under*-estimates energy off the data;
3. model loss = MSE(f(z, c), y) + alpha * gap (alpha held fixed): adversarial predictions are pushed
   up, data predictions down;
4. multiplier loss = alpha * (tau - gap) on log alpha (Adam, ``alpha_lr``): alpha grows while the gap
   exceeds tau and shrinks below it, so the gap is held near tau.

This is COMs with the sign turned (COMs maximises: ascent, gap = f(x-) - f(x)). With
``conservative=False`` only the MSE remains (the supervised "SL" baseline).
Optimisation (`descend`, `descent_path`) takes the same plain steps on the ensemble mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class EnergyMLP(nn.Module):
    """COMs' forward model: Linear -> leaky ReLU -> ... -> Linear(1) on [z, c].

    Shapes: z (n, latent_dim), c (n, cond_dim) -> (n,).
    """

    def __init__(self, latent_dim: int, cond_dim: int, hidden: int, n_hidden_layers: int, negative_slope: float):
        super().__init__()
        self.latent_dim, self.cond_dim = int(latent_dim), int(cond_dim)
        layers: list[nn.Module] = []
        width = self.latent_dim + self.cond_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(negative_slope)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.cat([z, c], dim=-1) if self.cond_dim else z
        return self.net(x).squeeze(-1)


def ensemble_mean(members: Sequence[nn.Module], z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Mean prediction of the members. Shapes: (n,)."""
    return torch.stack([m(z, c) for m in members]).mean(dim=0)


def descend(members: Sequence[nn.Module], z: torch.Tensor, c: torch.Tensor | None, steps: int, eta: float
            ) -> torch.Tensor:
    """``steps`` plain gradient-descent steps on the (ensemble-mean) prediction, each latent on its
    own; the models' parameters receive no gradient. Returns detached latents. Shapes: (n, d)."""
    z = z.detach().clone()
    for _ in range(steps):
        z.requires_grad_(True)
        energy = ensemble_mean(members, z, c).sum()
        (grad,) = torch.autograd.grad(energy, z)
        z = (z - eta * grad).detach()
    return z


def descent_path(members: Sequence[nn.Module], z: torch.Tensor, c: torch.Tensor | None, steps: int, eta: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """`descend`, keeping every point: latents (steps + 1, n, d) and ensemble-mean predictions
    (steps + 1, n), the start first."""
    path = [z.detach().clone()]
    for _ in range(steps):
        path.append(descend(members, path[-1], c, 1, eta))
    zs = torch.stack(path)
    with torch.no_grad():
        preds = torch.stack([ensemble_mean(members, p, c) for p in path])
    return zs, preds


@dataclass(frozen=True)
class FitSettings:
    """What `fit_member` needs (an `LCOMConfig` provides every field but ``eta``)."""

    epochs: int
    batch_size: int
    lr: float
    conservative: bool
    tau: float
    alpha_init: float
    alpha_lr: float
    adversarial_steps: int
    eta: float

    @classmethod
    def from_config(cls, config: Any, latent_dim: int) -> FitSettings:
        return cls(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, conservative=config.conservative,
                   tau=config.tau, alpha_init=config.alpha_init, alpha_lr=config.alpha_lr,
                   adversarial_steps=config.adversarial_steps, eta=config.step_size(latent_dim))


def fit_member(model: EnergyMLP, z: torch.Tensor, c: torch.Tensor | None, y: torch.Tensor, settings: FitSettings,
               generator: torch.Generator, *, max_steps: int | None = None, log_alpha0: float | None = None,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place with the conservative objective (or plain MSE).

    Args:
        model: the member (trained from its current weights).
        z, c, y: standardised latents, composition vectors (None when the model has none) and
            standardised targets. Shapes: (n, d), (n, k), (n,).
        settings: schedule and COMs settings.
        generator: the batch-order stream.
        max_steps: stop after this many optimiser steps (fine-tuning); None: ``settings.epochs``.
        log_alpha0: start of log alpha (fine-tuning continues the trained multiplier).
        on_epoch: ``on_epoch(epoch, record)`` after every epoch.

    Returns:
        One record per epoch: ``mse`` (standardised), ``gap`` (mean over its batches; 0 without
        the COMs term), ``alpha`` (at the end of the epoch).
    """
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    log_alpha = torch.tensor(math.log(settings.alpha_init) if log_alpha0 is None else log_alpha0,
                             requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=settings.alpha_lr)
    n = len(y)
    history: list[dict[str, float]] = []
    steps = 0
    epochs = settings.epochs if max_steps is None else math.ceil(max_steps / max(1, math.ceil(n / settings.batch_size)))
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator)
        sums = {"mse": 0.0, "gap": 0.0}
        batches = 0
        for start in range(0, n, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            zb, yb = z[idx], y[idx]
            cb = c[idx] if c is not None else None
            model.train()
            pred = model(zb, cb)
            mse = F.mse_loss(pred, yb)
            loss = mse
            gap = torch.zeros(())
            if settings.conservative:
                model.eval()
                z_adv = descend([model], zb, cb, settings.adversarial_steps, settings.eta)
                model.train()
                gap = pred.mean() - model(z_adv, cb).mean()
                loss = mse + log_alpha.exp().detach() * gap
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if settings.conservative:
                alpha_loss = log_alpha.exp() * (settings.tau - gap.detach())
                alpha_opt.zero_grad(set_to_none=True)
                alpha_loss.backward()
                alpha_opt.step()
            sums["mse"] += float(mse.detach())
            sums["gap"] += float(gap.detach())
            batches += 1
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        record = {"epoch": epoch, "mse": sums["mse"] / batches, "gap": sums["gap"] / batches,
                  "alpha": float(log_alpha.detach().exp()) if settings.conservative else 0.0,
                  "log_alpha": float(log_alpha.detach())}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if max_steps is not None and steps >= max_steps:
            break
    model.eval()
    return history


def new_member(latent_dim: int, cond_dim: int, config: Any, seed: int) -> EnergyMLP:
    """A freshly initialised member; the initialisation comes from ``seed`` in a forked torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return EnergyMLP(latent_dim, cond_dim, config.hidden, config.n_hidden_layers, config.negative_slope)
