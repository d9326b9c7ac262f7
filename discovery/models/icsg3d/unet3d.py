"""3-D UNet that segments ICSG3D voxel maps into species and atom/background (Court et al. 2020).

The network follows MODELS.md 1.3 (the released ``unet/unet.py``): every convolution is 3x3x3 'same'
and every block is ``Conv3d -> ReLU -> BatchNorm3d`` (ReLU *before* BN, as in the original). Three
pooled levels, a two-convolution bottom, three up levels with nearest-neighbour upsampling and skip
concatenation, and two 1x1x1 heads: 95 species logits and one occupancy logit.

The frozen, trained UNet is also the perceptual ("deep feature consistent") model of the VAE:
`UNet3D.features` returns the layers the original calls ``re_lu_2/4/6/8`` (MODELS.md 1.2).

Loss and class weights, and where this port deviates from the released code:

- **Class weights are used.** The released code compiles the species head with the scalar 95 as its
  "weight vector", so it trains plain CE x 95 and never uses the inverse-frequency weights it computes
  (MODELS.md finding 0.3 #4). The paper intends inverse-frequency weights, and the faithful preset uses
  them (`inverse_frequency_weights`); ``class_weights="released"`` in the training config reproduces
  the shipped behaviour (weight 95 on every class, background included).
- **Background weight 0.** The released ``get_weights`` gives the background total/count_0, about 1.1 for
  a map that is 90 % background, i.e. about 1e-3 of a typical element weight once the weights are
  normalised. We set it to exactly 0 (MODELS.md 1.3). Consequence: background voxels contribute nothing
  to the species loss, so the species head is only trained on atom voxels, and its argmax on a
  background voxel is meaningless (the class-0 logit is only ever pushed *down*, so it practically never
  wins). That is by design: the occupancy head decides atom versus background, and structure recovery
  (MODELS.md 1.5) reads species only inside occupancy segments, by a majority vote that excludes 0.
  Never use ``species_logits.argmax(1) == 0`` as a background mask. The non-zero recall
  (`nonzero_recall`) is unaffected because it only looks at atom voxels.
- **Averaging.** Keras' weighted CE is a plain mean over voxels of ``w[y] * CE``; `unet_loss` does the
  same (it is *not* PyTorch's ``cross_entropy(weight=...)``, which divides by the summed weights and
  returns NaN for an all-background batch when the background weight is 0).
- **Initialisation and BN.** Convolutions use Keras' defaults (Glorot-uniform kernels, zero biases) and
  BatchNorm3d uses Keras' momentum 0.99 (PyTorch ``momentum=0.01``) and eps 1e-3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Species classes: background (0) plus Z = 1..94.
N_SPECIES_CLASSES = 95
#: Keras BatchNormalization defaults (momentum 0.99 means PyTorch momentum 0.01).
BN_MOMENTUM = 0.01
BN_EPS = 1e-3
#: Species voxels counted per chunk when computing class frequencies (bounds memory on memmaps).
_COUNT_CHUNK = 256


def keras_init_(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Conv3d and Linear (Keras defaults), in place."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvReLUBN(nn.Module):
    """``Conv3d(3x3x3, same) -> ReLU -> BatchNorm3d``, the UNet block (ReLU before BN).

    Shapes:
        - input: (N, in_channels, D, H, W)
        - output: (N, out_channels, D, H, W); `forward_with_activation` also returns the ReLU output
          (before BN) of the same shape.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward_with_activation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(bn_output, relu_output)``; the ReLU output is what the perceptual loss reads."""
        a = F.relu(self.conv(x))
        return self.bn(a), a

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class UNet3D(nn.Module):
    """3-D UNet with a species head and an occupancy head (MODELS.md 1.3).

    With the default (faithful) sizes the layers are:

    ====== ======================================== ==========
    stage  convolutions                             resolution
    ====== ======================================== ==========
    down 1 4 -> 32 -> 64 (skip c2), max-pool 2      d
    down 2 64 -> 64 -> 128 (skip c4), pool          d/2
    down 3 128 -> 128 -> 256 (skip c6), pool        d/4
    bottom 256 -> 512 -> 512, upsample 2            d/8
    up 1   [c6, up] 768 -> 512 -> 256, upsample     d/4
    up 2   [c4, up] 384 -> 256 -> 128, upsample     d/2
    up 3   [c2, up] 192 -> 128 -> 128               d
    heads  1x1x1: 128 -> 95 species, 128 -> 1 occ.  d
    ====== ======================================== ==========

    In general (any number of levels): down level ``i`` is ``widths[i][0]`` then ``widths[i][1]``; each
    up level concatenates ``[skip, upsampled]``, its first convolution keeps the width of the upsampled
    tensor and its second one narrows to the skip width ``widths[i][1]``, except the last (finest) level,
    which keeps the width (the table's 128 -> 128). The cpu preset divides every width by 4.

    Args:
        in_channels: input channels (4: density and the three coordinate channels).
        n_classes: species classes including background (95).
        widths: ``(first, second)`` convolution widths of each down level, finest first.
        bottom: width of the two bottom convolutions.

    Shapes:
        - input x: (N, in_channels, d, d, d) with d divisible by ``2 ** len(widths)``.
        - `forward`: species logits (N, n_classes, d, d, d) and occupancy logits (N, 1, d, d, d).
        - `features`: ``len(widths) + 1`` tensors, (N, widths[i][1], d / 2**i, ...) and
          (N, bottom, d / 2**len(widths), ...).
    """

    def __init__(self, in_channels: int = 4, n_classes: int = N_SPECIES_CLASSES,
                 widths: Sequence[Sequence[int]] = ((32, 64), (64, 128), (128, 256)),
                 bottom: int = 512):
        super().__init__()
        widths = tuple((int(a), int(b)) for a, b in widths)
        if not widths or min(min(w) for w in widths) < 1 or min(in_channels, n_classes, bottom) < 1:
            raise ValueError(f"UNet3D sizes must be >= 1 and widths non-empty (got {widths}, {bottom})")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.widths = widths
        self.bottom = bottom
        self.down = nn.ModuleList()
        c = in_channels
        for first, second in widths:
            self.down.append(nn.ModuleList([ConvReLUBN(c, first), ConvReLUBN(first, second)]))
            c = second
        self.bottom_blocks = nn.ModuleList([ConvReLUBN(c, bottom), ConvReLUBN(bottom, bottom)])
        self.up = nn.ModuleList()
        c = bottom
        for level in reversed(range(len(widths))):
            skip = widths[level][1]
            out = skip if level > 0 else c
            self.up.append(nn.ModuleList([ConvReLUBN(skip + c, c), ConvReLUBN(c, out)]))
            c = out
        self.species_head = nn.Conv3d(c, n_classes, kernel_size=1)
        self.occupancy_head = nn.Conv3d(c, 1, kernel_size=1)
        keras_init_(self)

    @property
    def min_grid_divisor(self) -> int:
        """The grid size must be a multiple of this (one factor 2 per pooled level)."""
        return 2 ** len(self.widths)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D expects (N, {self.in_channels}, d, d, d), got {tuple(x.shape)}")
        if any(s % self.min_grid_divisor for s in x.shape[2:]):
            raise ValueError(f"UNet3D grid {tuple(x.shape[2:])} is not divisible by {self.min_grid_divisor}")

    def _encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Run the down path and the bottom; return (skips, perceptual activations, bottom output)."""
        skips, feats = [], []
        h = x
        for first, second in self.down:
            h = first(h)
            h, act = second.forward_with_activation(h)
            skips.append(h)
            feats.append(act)
            h = F.max_pool3d(h, 2)
        h = self.bottom_blocks[0](h)
        h, act = self.bottom_blocks[1].forward_with_activation(h)
        feats.append(act)
        return skips, feats, h

    def trunk(self, x: Tensor) -> Tensor:
        """The last hidden layer, on which both 1x1x1 heads sit.

        Shapes: x (N, C, d, d, d) -> (N, width, d, d, d).
        """
        self._check_input(x)
        skips, _, h = self._encode(x)
        for (first, second), skip in zip(self.up, reversed(skips), strict=True):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = second(first(torch.cat([skip, h], dim=1)))
        return h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Species and occupancy logits (no softmax / sigmoid).

        Shapes: x (N, C, d, d, d) -> ((N, n_classes, d, d, d), (N, 1, d, d, d)).
        """
        h = self.trunk(x)
        return self.species_head(h), self.occupancy_head(h)

    def segment(self, x: Tensor, threshold: float, class_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Occupancy probability, and species labels on the voxels where it reaches ``threshold``.

        Decoding only reads species inside the atom mask, so the 95-way head runs on those voxels
        alone; the labels there equal the argmax of `forward`'s species logits (plus ``class_bias``).

        Args:
            x: voxel maps.
            threshold: atom voxels have ``sigmoid(occupancy logit) >= threshold``.
            class_bias: added to the species logits before the argmax (``-inf`` bars a class).

        Shapes: x (N, C, d, d, d) -> labels (N, d, d, d) int64 (0 outside the mask), probability
        (N, d, d, d); class_bias (n_classes,).
        """
        h = self.trunk(x)
        occupancy = torch.sigmoid(self.occupancy_head(h)[:, 0])
        mask = occupancy >= threshold
        labels = torch.zeros(mask.shape, dtype=torch.int64, device=x.device)
        if bool(mask.any()):
            hidden = h.permute(0, 2, 3, 4, 1)[mask]
            logits = hidden @ self.species_head.weight.view(self.n_classes, -1).T + self.species_head.bias
            if class_bias is not None:
                logits = logits + class_bias
            labels[mask] = logits.argmax(dim=1)
        return labels, occupancy

    def features(self, x: Tensor) -> list[Tensor]:
        """Perceptual layers: the second ReLU output (before BN) of each down level and of the bottom.

        These are Keras' ``re_lu_2, re_lu_4, re_lu_6, re_lu_8`` of the faithful UNet (MODELS.md 1.2).
        The up path is not evaluated.

        Shapes: x (N, C, d, d, d) -> [(N, 64, d, ...), (N, 128, d/2, ...), (N, 256, d/4, ...),
        (N, 512, d/8, ...)] for the faithful widths.
        """
        self._check_input(x)
        return self._encode(x)[1]


def unet_loss(species_logits: Tensor, occ_logits: Tensor, species: Tensor, occupancy: Tensor,
              class_weights: Tensor | None = None) -> dict[str, Tensor]:
    """Weighted species cross-entropy plus occupancy binary cross-entropy, with equal weights.

    ``ce = mean over voxels of w[y] * CE(logits, y)`` (Keras' weighted CE, see the module docstring) and
    ``bce = mean over voxels of BCE(sigmoid(occ_logit), occupancy)``; ``total = ce + bce``.

    Args:
        species_logits: species head output.
        occ_logits: occupancy head output.
        species: target classes (0 = background).
        occupancy: target occupancy in {0, 1}.
        class_weights: per-class weights; None means 1 for every class.

    Shapes:
        species_logits (N, K, d, d, d); occ_logits (N, 1, d, d, d) or (N, d, d, d);
        species (N, d, d, d) int64; occupancy (N, d, d, d) float; class_weights (K,).

    Returns:
        dict with scalar tensors ``total``, ``ce`` and ``bce``.
    """
    ce_voxel = F.cross_entropy(species_logits, species, reduction="none")
    if class_weights is not None:
        ce_voxel = ce_voxel * class_weights.to(ce_voxel.dtype)[species]
    ce = ce_voxel.mean()
    if occ_logits.dim() == species_logits.dim():
        occ_logits = occ_logits.squeeze(1)
    bce = F.binary_cross_entropy_with_logits(occ_logits, occupancy.to(occ_logits.dtype))
    return {"total": ce + bce, "ce": ce, "bce": bce}


def nonzero_recall_counts(species_logits: Tensor, species: Tensor) -> tuple[int, int]:
    """``(correct, total)`` over non-background voxels: argmax species equals the target.

    Shapes: species_logits (N, K, d, d, d); species (N, d, d, d).
    """
    atoms = species != 0
    correct = (species_logits.argmax(dim=1) == species) & atoms
    return int(correct.sum().item()), int(atoms.sum().item())


def inverse_frequency_weights(species_arrays: np.ndarray | Tensor | Iterable[np.ndarray | Tensor],
                              n_classes: int = N_SPECIES_CLASSES) -> Tensor:
    """Inverse class-frequency weights for the species loss, background and unseen classes 0.

    ``w_c = 1 / count_c`` for every class ``c >= 1`` that occurs, then scaled so that the mean over
    those classes is 1; ``w_0 = 0`` and ``w_c = 0`` for classes that never occur. (The released
    ``get_weights`` computes ``total / count_c``, the same up to the scale, but keeps a small non-zero
    background weight; see the module docstring.)

    Args:
        species_arrays: one array of class labels (any shape; a stacked (N, d, d, d) array, also a
            memory map, is counted in chunks along its first axis) or an iterable of such arrays.
        n_classes: number of classes, background included.

    Returns:
        float32 tensor of shape (n_classes,).

    Raises:
        ValueError: a label outside ``0..n_classes-1``, or no non-background voxel at all.

    Example:
        >>> import numpy as np
        >>> s = np.array([0, 0, 0, 1, 1, 1, 2])  # class 1 three times, class 2 once
        >>> inverse_frequency_weights(s, n_classes=4).tolist()
        [0.0, 0.5, 1.5, 0.0]
    """
    counts = np.zeros(n_classes, dtype=np.int64)

    def _add(block: np.ndarray | Tensor) -> None:
        arr = block.detach().cpu().numpy() if isinstance(block, Tensor) else np.asarray(block)
        flat = arr.reshape(-1).astype(np.int64, copy=False)
        if flat.size == 0:
            return
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"species labels must be in 0..{n_classes - 1}, found {lo}..{hi}")
        counts[:] += np.bincount(flat, minlength=n_classes)

    if isinstance(species_arrays, np.ndarray | Tensor):
        if species_arrays.ndim >= 2:
            for start in range(0, species_arrays.shape[0], _COUNT_CHUNK):
                _add(species_arrays[start:start + _COUNT_CHUNK])
        else:
            _add(species_arrays)
    else:
        for block in species_arrays:
            _add(block)
    seen = counts > 0
    seen[0] = False
    if not seen.any():
        raise ValueError("no non-background voxel in the species arrays: cannot weight classes")
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[seen] = 1.0 / counts[seen]
    weights[seen] /= weights[seen].mean()
    return torch.as_tensor(weights, dtype=torch.float32)
