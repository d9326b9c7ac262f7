"""Losses and training loop of the crystal GAN (MODELS.md 2.4, the authors' ``train.py`` at ``35cf6d0a``).

Every iteration j over a shuffled epoch (batches of ``batch_size``):

1. **Critic + Q step.** Fake counts are drawn uniformly (each role 1..max_count), independently of
   the data; G makes fakes from z ~ N(0, I). Loss
   ``-(D(real) - cat_real) + D(fake) + GP`` where D is the mean of the critic's 10 outputs over the
   batch, ``cat_real = lambda_row * sum_blocks CE(per-row occupancy, row labels) + lambda_c *
   sum_blocks CE(count class, count - 1)`` is the Q-network's loss on *noised* real images (padding
   entries below 0.01 get |N(1e-3, 10^-2.5)| added), and GP is `gradient_penalty`. The critic and
   Q optimisers step.
2. **Generator step** when ``j % n_critic == 0``: new z, same fake counts; loss
   ``-(D(G(z, c)) - lambda_c * sum_blocks CE(Q count(G(z, c)), c))``. The generator and Q optimisers
   step (Q also learns to read the fakes' conditioned counts, InfoGAN style). The original's fake
   per-row occupancy loss has weight 0.0 and is not computed.

Cross entropies are taken on the softmax outputs of the Q heads when ``double_softmax`` (the
original feeds ``nn.Softmax`` outputs to ``nn.CrossEntropyLoss``, which applies log-softmax again).
After every epoch ``e`` (from 0) each rate becomes ``lr0 * lr_decay ** ((e + 1) // lr_decay_every)``.

Gradient penalty: ``gp_lambda * mean_b (||d sum_k D_k(x_hat_b) / d x_hat_b|| - 1)^2`` on
``x_hat = a real + (1 - a) fake`` with one ``a ~ U(0, 1)`` per sample. As in the original the
gradient is that of the *sum* of the 10 outputs (``grad_outputs`` of ones), not of their mean.

Deviations: batches are drawn without the last partial batch (``drop_last``: BatchNorm cannot train
on a batch of one); fakes are detached for the critic step (the original's generator gradients from
that step were zeroed before use anyway).

**cpu preset** (`~discovery.models.crystal_gan.config.CRYSTAL_GAN_PRESETS`): networks about 4x
narrower (generator 128/256/128, critic 128/128/64 with FC 256/64, Q 128/64/64 with FC 128/64; one
iteration 0.056 s with one thread against 0.255 s at the paper's widths); 60 epochs of 315
iterations (the paper: 501 epochs of about 3,500 iterations); rates 2e-4 (critic), 1e-3
(generator), 1e-4 (Q); the decay every 3 epochs instead of 10, so the 60-epoch run decays as far
(0.95^20 = 0.36) as the paper's first 200 epochs; cross entropy on the Q heads' logits
(``double_softmax`` off). Why, measured on the Mg-Mn-O file (10 samples for each of 32
compositions after a few epochs; "counts" = decoded counts equal the condition, "valid" = a cell
with every distance >= 0.5 A):

- paper rates and the double softmax: after 5 epochs counts 1 %, valid 72 %; the Q count loss had
  moved from 6.64 (uniform over the classes) to 6.45 only: a cross entropy on softmax outputs is
  nearly flat (its range is 1.27-2.08 for 8 classes), so the count classifiers barely learn;
- plain cross entropy, generator rate 2e-4: after 5 epochs every one of the 28 rows was still an
  atom (row sums 0.9-1.0 where padding needs < 0.4): counts 0 %, valid 0 %;
- plain cross entropy, generator rate 1e-3 (this preset): counts / valid 3 / 28 % (epoch 4),
  8 / 46 % (8), 10 / 66 % (12), 12 / 58 % (16);
- Q stepping on real images only (``q_learns_fakes`` off) with Q rate 5e-4: the generator found
  rows just under the 0.4 threshold (counts 3 %, valid 39 % at epoch 8); Q rate 5e-4 with Q also
  learning the fakes: every row still occupied at epoch 4.

Randomness: a `torch.Generator` seeded from the caller's seed drives shuffling, z, fake counts,
noising and the interpolation weights; network initialisation uses a forked torch RNG state seeded
from the same seed (torch's init functions read the global generator).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from discovery.models.crystal_gan.networks import CrystalCritic, CrystalGenerator, CrystalQNetwork, xavier_init

logger = logging.getLogger(__name__)


@dataclass
class CrystalGANNets:
    """The three networks and their optimisers."""

    generator: CrystalGenerator
    critic: CrystalCritic
    qnet: CrystalQNetwork
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    opt_q: torch.optim.Optimizer
    max_counts: tuple[int, ...]
    history: list[dict[str, float]] = field(default_factory=list)


def build_networks(config: Any, seed: int) -> CrystalGANNets:
    """Networks (Xavier init, seeded) and Adam optimisers of ``config`` (`CrystalGANConfig`)."""
    max_counts = tuple(b.max_count for b in config.blocks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = CrystalGenerator(config.latent_dim, max_counts, config.g_fc, config.g_channels,
                               config.g_cell_hidden, config.bn_eps)
        critic = CrystalCritic(max_counts, config.d_channels, config.d_fc, config.d_outputs)
        qnet = CrystalQNetwork(max_counts, config.q_channels, config.q_fc, config.bn_eps)
        for net in (gen, critic, qnet):
            net.apply(xavier_init)
    betas = tuple(config.betas)
    return CrystalGANNets(gen, critic, qnet,
                          torch.optim.Adam(gen.parameters(), lr=config.lr_g, betas=betas),
                          torch.optim.Adam(critic.parameters(), lr=config.lr_d, betas=betas),
                          torch.optim.Adam(qnet.parameters(), lr=config.lr_q, betas=betas),
                          max_counts)


def condition_tensor(counts: torch.Tensor, max_counts: Sequence[int]) -> torch.Tensor:
    """The generator's condition: ``natoms / R`` and one one-hot of ``count - 1`` per block.

    Shapes: counts ``(B, n_roles)`` int (each 1..max) -> ``(B, 1 + R)``.
    """
    counts = counts.long()
    parts = [counts.sum(1, keepdim=True).float() / float(sum(max_counts))]
    for k, m in enumerate(max_counts):
        parts.append(F.one_hot(counts[:, k] - 1, m).float())
    return torch.cat(parts, dim=1)


def row_labels(images: torch.Tensor, threshold: float = 0.4) -> torch.Tensor:
    """Per atom row 1 when the row sum is at least ``threshold`` (the original's ``7.make_label.py``).

    Shapes: ``(B, 1, rows, 3)`` -> ``(B, rows - 2)`` long.
    """
    return (images[:, 0, 2:].sum(-1) >= threshold).long()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP penalty (see the module docstring); ``alpha`` has shape ``(B,)``."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    _, out = critic(x_hat)
    grad, = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out), create_graph=True)
    return weight * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def noising(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Entries below 0.01 get |N(1e-3, 10^-2.5)| added (the Q-network's view of real images)."""
    noise = (1e-3 + 10 ** -2.5 * torch.randn(images.shape, generator=gen)).abs()
    return images + noise * (images < 0.01)


def _ce(logits: torch.Tensor, target: torch.Tensor, double_softmax: bool) -> torch.Tensor:
    return F.cross_entropy(torch.softmax(logits, dim=1) if double_softmax else logits, target)


def q_losses(qnet: CrystalQNetwork, images: torch.Tensor, rows: torch.Tensor | None, counts: torch.Tensor,
             double_softmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row occupancy CE summed over blocks, count CE summed over blocks); rows None skips the first."""
    occ, cnt = qnet(images)
    row_loss = images.new_zeros(())
    count_loss = images.new_zeros(())
    start = 0
    for k, m in enumerate(qnet.max_counts):
        if rows is not None:
            row_loss = row_loss + _ce(occ[k], rows[:, start:start + m], double_softmax)
        count_loss = count_loss + _ce(cnt[k], counts[:, k].long() - 1, double_softmax)
        start += m
    return row_loss, count_loss


def random_counts(n: int, max_counts: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Counts drawn uniformly, each role 1..max. Shapes: ``(n, n_roles)``."""
    return torch.stack([torch.randint(1, m + 1, (n,), generator=gen) for m in max_counts], dim=1)


def train_step(nets: CrystalGANNets, real: torch.Tensor, real_counts: torch.Tensor, j: int, config: Any,
               gen: torch.Generator) -> dict[str, float]:
    """One iteration (critic + Q step, and the generator step when ``j % n_critic == 0``)."""
    g, d, q = nets.generator, nets.critic, nets.qnet
    b = real.shape[0]
    g.train(), d.train(), q.train()
    for p in d.parameters():
        p.requires_grad_(True)
    nets.opt_d.zero_grad(set_to_none=True)
    nets.opt_q.zero_grad(set_to_none=True)
    fake_counts = random_counts(b, nets.max_counts, gen)
    cond = condition_tensor(fake_counts, nets.max_counts)
    with torch.no_grad():
        fake = g(torch.randn(b, g.latent_dim, generator=gen), cond)
    _, d_real_out = d(real)
    d_real = d_real_out.mean()
    q_in = noising(real, gen) if config.noise_padding else real
    row_loss, count_loss = q_losses(q, q_in, row_labels(real, config.row_threshold), real_counts,
                                    config.double_softmax)
    cat_real = config.lambda_row * row_loss + config.lambda_count * count_loss
    _, d_fake_out = d(fake)
    d_fake = d_fake_out.mean()
    gp = gradient_penalty(d, real, fake, torch.rand(b, generator=gen), config.gp_lambda)
    loss_d = -(d_real - cat_real) + d_fake + gp
    loss_d.backward()
    nets.opt_d.step()
    nets.opt_q.step()
    out = {"w_distance": (d_real - d_fake).item(), "gp": gp.item(), "q_row_real": row_loss.item(),
           "q_count_real": count_loss.item()}
    if j % config.n_critic == 0:
        for p in d.parameters():
            p.requires_grad_(False)
        nets.opt_g.zero_grad(set_to_none=True)
        nets.opt_q.zero_grad(set_to_none=True)
        fake = g(torch.randn(b, g.latent_dim, generator=gen), cond)
        _, g_out = d(fake)
        if not config.q_learns_fakes:
            q.eval()  # a fixed classifier of real images: running BatchNorm statistics
        _, count_fake = q_losses(q, fake, None, fake_counts, config.double_softmax)
        loss_g = -(g_out.mean() - config.lambda_count * count_fake)
        loss_g.backward()
        if config.q_learns_fakes:
            nets.opt_q.step()
        nets.opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
        out.update(g_critic=g_out.mean().item(), q_count_fake=count_fake.item())
    return out


def set_lr(nets: CrystalGANNets, config: Any, epoch: int) -> None:
    """Rates after epoch ``epoch`` (from 0): ``lr0 * decay ** ((epoch + 1) // every)``."""
    factor = config.lr_decay ** ((epoch + 1) // config.lr_decay_every)
    for opt, lr0 in ((nets.opt_d, config.lr_d), (nets.opt_g, config.lr_g), (nets.opt_q, config.lr_q)):
        for group in opt.param_groups:
            group["lr"] = lr0 * factor


def train_crystal_gan(matrices: np.ndarray, counts: np.ndarray, config: Any, seed: int,
                      progress: Callable[[str, int, int, dict[str, Any]], None] | None = None,
                      log_metrics: Callable[[dict[str, float], int], None] | None = None,
                      nets: CrystalGANNets | None = None, max_steps: int | None = None) -> CrystalGANNets:
    """Train on augmented matrices (see the module docstring).

    Args:
        matrices: Shapes: ``(N, rows, 3)``.
        counts: Shapes: ``(N, n_roles)``, each at least 1.
        config: `CrystalGANConfig`.
        seed: seeds the networks and every random draw.
        progress: ``progress("train", epoch, epochs, metrics)`` after every epoch.
        log_metrics: ``log_metrics(metrics, epoch)`` after every epoch (the tracker).
        nets: continue training these networks.
        max_steps: stop after this many iterations (tests).

    Returns:
        The networks; ``history`` holds one dict of epoch-mean metrics per epoch.
    """
    gen = torch.Generator().manual_seed(int(seed))
    nets = nets or build_networks(config, seed)
    x = torch.as_tensor(np.asarray(matrices, dtype=np.float32)).unsqueeze(1)
    c = torch.as_tensor(np.asarray(counts, dtype=np.int64))
    n_batches = len(x) // config.batch_size
    if n_batches == 0:
        raise ValueError(f"{len(x)} samples, fewer than one batch of {config.batch_size}")
    step = 0
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(x), generator=gen)
        sums: dict[str, float] = {}
        ns: dict[str, int] = {}
        for j in range(n_batches):
            idx = order[j * config.batch_size:(j + 1) * config.batch_size]
            metrics = train_step(nets, x[idx], c[idx], j, config, gen)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
                ns[k] = ns.get(k, 0) + 1
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        set_lr(nets, config, epoch)
        summary = {k: sums[k] / ns[k] for k in sums}
        summary["epoch_s"] = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in summary.values()):
            raise FloatingPointError(f"crystal GAN training diverged at epoch {epoch}: {summary}")
        nets.history.append(summary)
        logger.info("crystal_gan epoch %d/%d %s", epoch + 1, config.epochs,
                    " ".join(f"{k}={v:.4g}" for k, v in summary.items()))
        if log_metrics is not None:
            log_metrics(summary, epoch)
        if progress is not None:
            progress("train", epoch + 1, config.epochs, summary)
        if max_steps is not None and step >= max_steps:
            break
    return nets
