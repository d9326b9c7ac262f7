"""Generator, WGAN-GP critic and Q-network of the crystal GAN (MODELS.md 2.3, the authors' ``models.py``).

Shapes: images are ``(B, 1, rows, 3)`` with ``rows = 2 + R`` and ``R = sum(max_count)`` atom rows
(30 and 28 for Mg-Mn-O); the condition is ``natoms / R`` (1) plus one one-hot of ``count - 1`` per
block (8 + 8 + 12), so the generator input is ``latent + 1 + R`` (541).

- `CrystalGenerator`: Linear(in -> fc * R) + ReLU -> view (fc, R, 1) -> ConvT (1, 3) -> BN -> ReLU
  -> ConvT 1x1 -> BN -> ReLU -> ConvT 1x1 -> BN -> ReLU -> ConvT 1x1 to 1 channel = h; positions =
  sigmoid(h); cell = sigmoid(MLP(flatten(h): 3R -> hidden -> BN1d -> ReLU -> 6)) as 2 x 3; output =
  cell rows on top of the position rows.
- `CrystalCritic`: Conv (1, 3) -> LReLU 0.2 -> 1x1 -> LReLU -> 1x1 -> LReLU, giving (C, rows, 1);
  the two cell rows are kept, each block is average-pooled to one row; Linear -> LReLU -> Linear ->
  LReLU ("feature") -> Linear to ``d_outputs`` (10). No normalisation (WGAN-GP).
- `CrystalQNetwork`: per block a branch Conv (1, 3) -> BN -> LReLU -> 1x1 -> BN -> LReLU -> 1x1 ->
  BN -> LReLU -> 1x1 to 2 channels: the per-row occupancy (softmax over the 2 channels); and a count
  classifier flatten(2 x rows) -> Linear -> BN1d -> LReLU -> Linear -> BN1d -> LReLU -> Linear to
  ``max_count`` classes (softmax).

BatchNorm eps is 0.8 (``BatchNorm2d(256, 0.8)`` passes eps, the original's quirk), except the
generator's cell BatchNorm1d, which the original builds with the default eps (1e-5). Every Linear,
Conv and ConvT gets Xavier-uniform weights and zero biases (`xavier_init`).

Deviation: the Q-network's cell branch (64-channel convolutions and a sigmoid "natoms" regressor) is
left out; its loss is commented out in the original, so it never influenced training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every Linear, Conv2d and ConvTranspose2d."""
    if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class CrystalGenerator(nn.Module):
    """G(z, condition) -> image (see the module docstring)."""

    def __init__(self, latent_dim: int, max_counts: Sequence[int], fc: int = 128,
                 channels: Sequence[int] = (256, 512, 256), cell_hidden: int = 30, bn_eps: float = 0.8):
        super().__init__()
        self.latent_dim = latent_dim
        self.max_counts = tuple(max_counts)
        rows = sum(self.max_counts)
        self.rows, self.fc = rows, fc
        c1, c2, c3 = channels
        self.l1 = nn.Sequential(nn.Linear(latent_dim + 1 + rows, fc * rows), nn.ReLU(True))
        self.maps = nn.Sequential(
            nn.ConvTranspose2d(fc, c1, (1, 3)), nn.BatchNorm2d(c1, bn_eps), nn.ReLU(True),
            nn.ConvTranspose2d(c1, c2, (1, 1)), nn.BatchNorm2d(c2, bn_eps), nn.ReLU(True),
            nn.ConvTranspose2d(c2, c3, (1, 1)), nn.BatchNorm2d(c3, bn_eps), nn.ReLU(True),
            nn.ConvTranspose2d(c3, 1, (1, 1)))
        self.cellmap = nn.Sequential(nn.Linear(3 * rows, cell_hidden), nn.BatchNorm1d(cell_hidden), nn.ReLU(True),
                                     nn.Linear(cell_hidden, 6), nn.Sigmoid())

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Shapes: z ``(B, latent)``, condition ``(B, 1 + R)`` -> ``(B, 1, 2 + R, 3)``."""
        h = self.l1(torch.cat((z, condition), dim=-1)).view(-1, self.fc, self.rows, 1)
        h = self.maps(h)
        cell = self.cellmap(h.flatten(1)).view(-1, 1, 2, 3)
        return torch.cat((cell, torch.sigmoid(h)), dim=2)


class CrystalCritic(nn.Module):
    """The WGAN-GP critic; `forward` returns (feature, outputs); the critic value is ``outputs.mean(-1)``."""

    def __init__(self, max_counts: Sequence[int], channels: Sequence[int] = (512, 512, 256),
                 fc: Sequence[int] = (1000, 200), n_outputs: int = 10):
        super().__init__()
        self.max_counts = tuple(max_counts)
        c1, c2, c3 = channels
        self.model = nn.Sequential(nn.Conv2d(1, c1, (1, 3)), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(c1, c2, (1, 1)), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(c2, c3, (1, 1)), nn.LeakyReLU(0.2, True))
        n_in = c3 * (2 + len(self.max_counts))
        self.feature_layer = nn.Sequential(nn.Linear(n_in, fc[0]), nn.LeakyReLU(0.2, True),
                                           nn.Linear(fc[0], fc[1]), nn.LeakyReLU(0.2, True))
        self.output = nn.Linear(fc[1], n_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shapes: ``(B, 1, rows, 3)`` -> feature ``(B, fc[1])``, outputs ``(B, n_outputs)``."""
        h = self.model(x)  # (B, C, rows, 1)
        parts = [h[:, :, :2]]
        start = 2
        for m in self.max_counts:
            parts.append(h[:, :, start:start + m].mean(dim=2, keepdim=True))
            start += m
        feature = self.feature_layer(torch.cat(parts, dim=2).flatten(1))
        return feature, self.output(feature)


class _QBranch(nn.Module):
    def __init__(self, rows: int, channels: Sequence[int], fc: Sequence[int], bn_eps: float):
        super().__init__()
        c1, c2, c3 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, (1, 3)), nn.BatchNorm2d(c1, bn_eps), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c1, c2, (1, 1)), nn.BatchNorm2d(c2, bn_eps), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c2, c3, (1, 1)), nn.BatchNorm2d(c3, bn_eps), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c3, 2, (1, 1)))
        self.count = nn.Sequential(
            nn.Linear(2 * rows, fc[0]), nn.BatchNorm1d(fc[0], bn_eps), nn.LeakyReLU(0.2, True),
            nn.Linear(fc[0], fc[1]), nn.BatchNorm1d(fc[1], bn_eps), nn.LeakyReLU(0.2, True),
            nn.Linear(fc[1], rows))


class CrystalQNetwork(nn.Module):
    """Per-row occupancy and per-block count classifiers (logits; the loss decides on softmax)."""

    def __init__(self, max_counts: Sequence[int], channels: Sequence[int] = (512, 256, 256),
                 fc: Sequence[int] = (300, 100), bn_eps: float = 0.8):
        super().__init__()
        self.max_counts = tuple(max_counts)
        self.branches = nn.ModuleList(_QBranch(m, channels, fc, bn_eps) for m in self.max_counts)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Shapes: ``(B, 1, rows, 3)`` -> per block occupancy logits ``(B, 2, m)`` and count logits ``(B, m)``."""
        occ, cnt = [], []
        start = 2
        for m, branch in zip(self.max_counts, self.branches, strict=True):
            h = branch.conv(x[:, :, start:start + m])  # (B, 2, m, 1)
            occ.append(h[..., 0])
            cnt.append(branch.count(h.flatten(1)))
            start += m
        return occ, cnt
