"""Networks of the composition models (MODELS.md 3.2; the authors' ``src/model.py``).

Shapes: ``D`` input features (bag-of-atoms + descriptors, 147 for the Materials Project table),
property ``(B, 1)`` scaled to [0, 1].

- `CondGenerator`: [noise (10), property (1)] -> Dense 30 ReLU -> Dense 60 ReLU -> Dense D sigmoid.
- `CondDiscriminator`: D -> Dense 60 ReLU -> Dense 30 ReLU (trunk), a critic head Dense 1 and a
  property-regressor head Dense 1.
- `CondVAE`: encoder [x, y] -> 60 -> 30 ReLU -> mu, logvar; decoder [z, y] -> 30 -> 60 ReLU -> D
  sigmoid (the mirror of the GAN chosen for the unverified comparator).

Initialisation: Keras' defaults as in the original (Glorot-uniform weights, zero biases).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases on every Linear (Keras' Dense default)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class CondGenerator(nn.Module):
    """G(noise, property) -> scaled features in (0, 1)."""

    def __init__(self, dim: int, noise_dim: int = 10, hidden: Sequence[int] = (30, 60)):
        super().__init__()
        self.noise_dim = noise_dim
        h1, h2 = hidden
        self.net = nn.Sequential(nn.Linear(noise_dim + 1, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                                 nn.Linear(h2, dim), nn.Sigmoid())

    def forward(self, noise: torch.Tensor, prop: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((noise, prop.view(-1, 1)), dim=1))


class CondDiscriminator(nn.Module):
    """Trunk with a critic head and a property-regression head; `forward` returns (critic, property)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (30, 60)):
        super().__init__()
        h1, h2 = hidden
        self.trunk = nn.Sequential(nn.Linear(dim, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU())
        self.critic = nn.Linear(h1, 1)
        self.regressor = nn.Linear(h1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.critic(h).squeeze(-1), self.regressor(h).squeeze(-1)


class CondVAE(nn.Module):
    """Conditional VAE on the same features; `forward` returns (reconstruction, mu, logvar)."""

    def __init__(self, dim: int, latent_dim: int = 10, hidden: Sequence[int] = (30, 60)):
        super().__init__()
        h1, h2 = hidden
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(dim + 1, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU())
        self.mu = nn.Linear(h1, latent_dim)
        self.logvar = nn.Linear(h1, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim + 1, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                                     nn.Linear(h2, dim), nn.Sigmoid())

    def encode(self, x: torch.Tensor, prop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat((x, prop.view(-1, 1)), dim=1))
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor, prop: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat((z, prop.view(-1, 1)), dim=1))

    def forward(self, x: torch.Tensor, prop: torch.Tensor, gen: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, prop)
        eps = torch.randn(mu.shape, generator=gen)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, prop), mu, logvar
