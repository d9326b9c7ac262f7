"""Training loops of the composition CondGAN and CondVAE (MODELS.md 3.2; the authors' ``src/main.py``).

CondGAN, per iteration (``floor(n / batch)`` iterations per epoch; every iteration draws a fresh
random batch of real rows, as the original reshuffles the whole table each iteration):

- ``n_critic`` critic steps on the same real batch, each with new noise ``U(-1, 1)`` and the real
  rows' properties as the generator's targets. Loss ``mean D(fake) - mean D(real) + GP +
  w * MSE(regressor(real), y_real)`` (the original's Keras losses with labels -1 / +1 and weights 1).
  The regressor learns from real rows only.
- one generator step: ``-mean D(G(z, y)) + w * MSE(regressor(G(z, y)), y)``.

GP is the standard per-sample WGAN-GP penalty ``lambda * mean (||grad D(x_hat)|| - 1)^2`` with one
``eps ~ U(0, 1)`` per sample. Deviation: the original's Keras ``RandomWeightedAverage`` draws eps of
shape ``(batch, 1, 1, 1)`` for 2-D inputs, which broadcasts into a ``(batch, 1, batch, D)`` tensor of
all real/fake pairs; that is the image example's shape carried over by accident and is not reproduced.

CondVAE: ``BCE(x_hat, x)`` summed over features + ``beta * KL``, averaged over the batch; Adam.

Randomness: a `torch.Generator` from the seed (batches, noise, eps); initialisation under a forked,
seeded torch RNG.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from discovery.models.composition_gan.networks import CondDiscriminator, CondGenerator, CondVAE, glorot_init

logger = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


@dataclass
class GANState:
    generator: CondGenerator
    discriminator: CondDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class VAEState:
    vae: CondVAE
    opt: torch.optim.Optimizer
    history: list[dict[str, float]] = field(default_factory=list)


def build_gan(dim: int, config: Any, seed: int) -> GANState:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = CondGenerator(dim, config.noise_dim, config.hidden)
        d = CondDiscriminator(dim, config.hidden)
        g.apply(glorot_init)
        d.apply(glorot_init)
    betas = tuple(config.betas)
    return GANState(g, d, torch.optim.Adam(g.parameters(), lr=config.lr, betas=betas),
                    torch.optim.Adam(d.parameters(), lr=config.lr, betas=betas))


def build_vae(dim: int, config: Any, seed: int) -> VAEState:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = CondVAE(dim, config.latent_dim, config.hidden)
        vae.apply(glorot_init)
    return VAEState(vae, torch.optim.Adam(vae.parameters(), lr=config.lr, betas=tuple(config.betas)))


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """``weight * mean_b (||d critic(x_hat_b) / d x_hat_b|| - 1)^2``, ``x_hat = eps real + (1 - eps) fake``."""
    e = eps.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (e * real + (1 - e) * fake).detach().requires_grad_(True)
    out = critic(x_hat)
    grad, = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return weight * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def noise(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """U(-1, 1) noise. Shapes: ``(n, dim)``."""
    return torch.rand(n, dim, generator=gen) * 2 - 1


def gan_iteration(state: GANState, real: torch.Tensor, y: torch.Tensor, config: Any,
                  gen: torch.Generator) -> dict[str, float]:
    """``n_critic`` critic steps and one generator step on one real batch."""
    g, d = state.generator, state.discriminator
    b = real.shape[0]
    for p in d.parameters():
        p.requires_grad_(True)
    for _ in range(config.n_critic):
        state.opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = g(noise(b, g.noise_dim, gen), y)
        c_real, p_real = d(real)
        c_fake, _ = d(fake)
        gp = gradient_penalty(lambda x: d(x)[0], real, fake, torch.rand(b, generator=gen), config.gp_lambda)
        reg = F.mse_loss(p_real, y)
        loss_d = c_fake.mean() - c_real.mean() + gp + config.property_weight * reg
        loss_d.backward()
        state.opt_d.step()
    for p in d.parameters():
        p.requires_grad_(False)
    state.opt_g.zero_grad(set_to_none=True)
    c_gen, p_gen = d(g(noise(b, g.noise_dim, gen), y))
    reg_g = F.mse_loss(p_gen, y)
    loss_g = -c_gen.mean() + config.property_weight * reg_g
    loss_g.backward()
    state.opt_g.step()
    for p in d.parameters():
        p.requires_grad_(True)
    return {"w_distance": (c_real.mean() - c_fake.mean()).item(), "gp": gp.item(), "d_regression": reg.item(),
            "g_regression": reg_g.item(), "g_loss": loss_g.item()}


def vae_iteration(state: VAEState, x: torch.Tensor, y: torch.Tensor, config: Any,
                  gen: torch.Generator) -> dict[str, float]:
    state.opt.zero_grad(set_to_none=True)
    recon, mu, logvar = state.vae(x, y, gen)
    bce = F.binary_cross_entropy(recon, x.clamp(0, 1), reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    loss = bce + config.beta * kl
    loss.backward()
    state.opt.step()
    return {"loss": loss.item(), "reconstruction": bce.item(), "kl": kl.item()}


def train_loop(state: GANState | VAEState, x: np.ndarray, y: np.ndarray, config: Any, seed: int,
               progress: ProgressFn | None = None, log_metrics: Callable[[dict[str, float], int], None] | None = None,
               max_steps: int | None = None, stage: str = "train") -> GANState | VAEState:
    """Train either model on scaled features ``x (n, D)`` and scaled targets ``y (n,)``."""
    gen = torch.Generator().manual_seed(int(seed))
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float32))
    n_iter = max(1, len(xt) // config.batch_size)
    step_fn = gan_iteration if isinstance(state, GANState) else vae_iteration
    step = 0
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for _ in range(n_iter):
            idx = torch.randperm(len(xt), generator=gen)[:config.batch_size]
            for k, v in step_fn(state, xt[idx], yt[idx], config, gen).items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        summary = {k: v / n_iter for k, v in sums.items()}
        summary["epoch_s"] = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in summary.values()):
            raise FloatingPointError(f"training diverged at epoch {epoch}: {summary}")
        state.history.append(summary)
        if epoch % 10 == 0 or epoch == config.epochs - 1:
            logger.info("%s epoch %d/%d %s", stage, epoch + 1, config.epochs,
                        " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
        if log_metrics is not None:
            log_metrics(summary, epoch)
        if progress is not None:
            progress(stage, epoch + 1, config.epochs, summary)
        if max_steps is not None and step >= max_steps:
            break
    return state
