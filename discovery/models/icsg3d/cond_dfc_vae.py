"""Conditional deep-feature-consistent VAE of ICSG3D (Court et al. 2020) on 3-D voxel maps.

Architecture per MODELS.md 1.2 (the released ``vae/lattice_vae.py``):

- **Encoder.** The one-hot condition is tiled over the grid and concatenated to the input channels
  (``[x, cond]``). Four blocks ``Conv3d(f, 3, same) -> BatchNorm3d -> LeakyReLU -> MaxPool3d(2)``
  (f = 16, 32, 64, 128), then ``Conv3d(4, 3, same) -> LeakyReLU -> flatten`` (4 * (d/16)^3 features),
  ``Linear(dense) -> ReLU`` and two linear heads, mu and log sigma^2, of size ``latent``.
- **Decoder.** ``[z, cond] -> Linear(4 * (d/8)^3)`` (linear) reshaped to (4, d/8, d/8, d/8); four
  blocks ``Conv3d(f, 3, same) -> BatchNorm3d -> LeakyReLU`` (f = 128, 64, 32, 16) with nearest
  ``Upsample(2)`` after the first three; ``Conv3d(in_channels, 3, same) -> BatchNorm3d -> ReLU``.
  The final ReLU is harmless: density and the coordinate channels are non-negative.
- **Loss** (`vae_loss`): ``MSE + alpha * perceptual + beta * KL``, the perceptual term read from the
  frozen UNet's `~discovery.models.icsg3d.unet3d.UNet3D.features`.

Details taken from the released code and Keras' defaults, and where this port differs:

- LeakyReLU slope 0.3 (Keras' default ``LeakyReLU()``; PyTorch's default would be 0.01). BatchNorm3d
  with Keras' momentum 0.99 (PyTorch ``momentum=0.01``) and eps 1e-3; Glorot-uniform initialisation.
- The released code sizes the encoder's hidden dense layer *and* the decoder's input dense layer with
  ``latent_dim``; the second must also equal 4*4*4*4 = 256 for its reshape, so the released model only
  works with latent 256. Here the encoder's hidden layer has its own width ``dense`` (256, the paper's
  value) and the decoder's dense layer has the width its reshape needs, 4 * (d/8)^3 (256 at d = 32).
  At the faithful sizes (latent 256, d = 32) both are identical to the released model.
- Reshape order is channels-first (4, d/8, d/8, d/8) instead of Keras' channels-last; the dense layer
  is learned, so this changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discovery.models.icsg3d.unet3d import BN_EPS, BN_MOMENTUM, keras_init_

#: Keras' default LeakyReLU slope, used by the released model.
LEAKY_SLOPE = 0.3
#: Channels of the encoder's last convolution and of the decoder's reshaped seed volume.
BOTTLENECK_CHANNELS = 4

PerceptualFn = Callable[[Tensor], Sequence[Tensor]]


class CondDFCVAE(nn.Module):
    """Condition-aware 3-D convolutional VAE (encoder and decoder both see the condition).

    Args:
        in_channels: channels of a voxel map (4: density and three coordinate channels).
        cond_dim: length of the one-hot condition (10 property deciles).
        filters: encoder block widths; the decoder uses them reversed.
        latent: size of the latent vector z.
        grid: voxels per axis d; must be a multiple of ``2 ** len(filters)`` (16).
        dense: width of the encoder's hidden dense layer before the mu / log-variance heads.

    Shapes:
        - x: (N, in_channels, d, d, d); cond: (N, cond_dim); z, mu, logvar: (N, latent).
        - `forward` returns x_hat (N, in_channels, d, d, d), mu and logvar.
    """

    def __init__(self, in_channels: int = 4, cond_dim: int = 10,
                 filters: Sequence[int] = (16, 32, 64, 128), latent: int = 256, grid: int = 32,
                 dense: int = 256):
        super().__init__()
        filters = tuple(int(f) for f in filters)
        if not filters or min(filters) < 1 or min(in_channels, cond_dim, latent, dense, grid) < 1:
            raise ValueError("CondDFCVAE sizes must all be >= 1 and filters non-empty")
        down = 2 ** len(filters)
        if grid % down:
            raise ValueError(f"CondDFCVAE grid {grid} must be a multiple of {down}")
        self.in_channels, self.cond_dim, self.filters = in_channels, cond_dim, filters
        self.latent, self.grid, self.dense = latent, grid, dense
        self._enc_side = grid // down
        self._dec_side = grid // 2 ** (len(filters) - 1)

        enc: list[nn.Module] = []
        c = in_channels + cond_dim
        for f in filters:
            enc += [nn.Conv3d(c, f, 3, padding=1), nn.BatchNorm3d(f, eps=BN_EPS, momentum=BN_MOMENTUM),
                    nn.LeakyReLU(LEAKY_SLOPE), nn.MaxPool3d(2)]
            c = f
        enc += [nn.Conv3d(c, BOTTLENECK_CHANNELS, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE), nn.Flatten()]
        self.encoder_conv = nn.Sequential(*enc)
        self.encoder_dense = nn.Linear(BOTTLENECK_CHANNELS * self._enc_side ** 3, dense)
        self.mu_head = nn.Linear(dense, latent)
        self.logvar_head = nn.Linear(dense, latent)

        self.decoder_dense = nn.Linear(latent + cond_dim, BOTTLENECK_CHANNELS * self._dec_side ** 3)
        dec: list[nn.Module] = []
        c = BOTTLENECK_CHANNELS
        for i, f in enumerate(reversed(filters)):
            dec += [nn.Conv3d(c, f, 3, padding=1), nn.BatchNorm3d(f, eps=BN_EPS, momentum=BN_MOMENTUM),
                    nn.LeakyReLU(LEAKY_SLOPE)]
            if i < len(filters) - 1:
                dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
            c = f
        dec += [nn.Conv3d(c, in_channels, 3, padding=1),
                nn.BatchNorm3d(in_channels, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU()]
        self.decoder_conv = nn.Sequential(*dec)
        keras_init_(self)

    def _check(self, x: Tensor | None, cond: Tensor) -> None:
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must be (N, {self.cond_dim}), got {tuple(cond.shape)}")
        if x is not None:
            want = (self.in_channels, self.grid, self.grid, self.grid)
            if x.dim() != 5 or tuple(x.shape[1:]) != want:
                raise ValueError(f"x must be (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
            if x.shape[0] != cond.shape[0]:
                raise ValueError(f"x has {x.shape[0]} samples but cond has {cond.shape[0]}")

    def encode(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)`` of q(z | x, cond).

        Shapes: x (N, C, d, d, d), cond (N, cond_dim) -> mu, logvar (N, latent).
        """
        self._check(x, cond)
        tiled = cond.to(x.dtype)[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        h = self.encoder_conv(torch.cat([x, tiled], dim=1))
        h = F.relu(self.encoder_dense(h))
        return self.mu_head(h), self.logvar_head(h)

    def decode(self, z: Tensor, cond: Tensor) -> Tensor:
        """Voxel map from a latent vector and a condition.

        Shapes: z (N, latent), cond (N, cond_dim) -> (N, in_channels, d, d, d).
        """
        self._check(None, cond)
        h = self.decoder_dense(torch.cat([z, cond.to(z.dtype)], dim=1))
        s = self._dec_side
        return self.decoder_conv(h.view(-1, BOTTLENECK_CHANNELS, s, s, s))

    def forward(self, x: Tensor, cond: Tensor,
                rng_generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Encode, sample ``z = mu + exp(logvar / 2) * eps`` and decode (always samples, as Keras did).

        Args:
            x: voxel maps.
            cond: one-hot conditions.
            rng_generator: source of eps (on x's device); None uses torch's global generator.

        Shapes: x (N, C, d, d, d), cond (N, cond_dim) -> x_hat (N, C, d, d, d), mu, logvar (N, latent).
        """
        mu, logvar = self.encode(x, cond)
        eps = torch.randn(mu.shape, generator=rng_generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z, cond), mu, logvar


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q || N(0, I)) summed over latent dimensions and averaged over the batch.

    Shapes: mu, logvar (N, latent) -> scalar.
    """
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def perceptual_distance(x: Tensor, x_hat: Tensor, perceptual_fn: PerceptualFn,
                        weights: Sequence[float] | None = None) -> Tensor:
    """``sum_l w_l * mean((phi_l(x) - phi_l(x_hat))^2)``, with phi the frozen UNet's feature maps.

    The target features ``phi(x)`` are computed without a graph; gradients flow only through
    ``phi(x_hat)`` to ``x_hat`` (the perceptual model's parameters should be frozen by the caller).

    Shapes: x, x_hat (N, C, d, d, d) -> scalar.
    """
    with torch.no_grad():
        target = list(perceptual_fn(x))
    pred = list(perceptual_fn(x_hat))
    if len(target) != len(pred):
        raise ValueError("perceptual_fn returned a different number of feature maps for x and x_hat")
    weights = [1.0] * len(pred) if weights is None else list(weights)
    total = x_hat.new_zeros(())
    for w, a, b in zip(weights, target, pred, strict=True):
        total = total + w * F.mse_loss(b, a)
    return total


def vae_loss(x: Tensor, x_hat: Tensor, mu: Tensor, logvar: Tensor,
             perceptual_fn: PerceptualFn | None, alpha: float, beta: float) -> dict[str, Tensor]:
    """Cond-DFC-VAE loss ``total = mse + alpha * perceptual + beta * kl``.

    ``mse`` is the mean over every voxel and channel; ``perceptual`` is `perceptual_distance` with
    weight 1 per layer (zero when ``perceptual_fn`` is None); ``kl`` is `kl_divergence`.

    Shapes: x, x_hat (N, C, d, d, d); mu, logvar (N, latent).

    Returns:
        dict of scalar tensors ``total``, ``mse``, ``perceptual`` and ``kl``.
    """
    mse = F.mse_loss(x_hat, x)
    perceptual = (perceptual_distance(x, x_hat, perceptual_fn) if perceptual_fn is not None
                  else x_hat.new_zeros(()))
    kl = kl_divergence(mu, logvar)
    return {"total": mse + alpha * perceptual + beta * kl, "mse": mse, "perceptual": perceptual, "kl": kl}
