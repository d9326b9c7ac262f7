"""Training loops and checkpoints of the ICSG3D UNet and Cond-DFC-VAE.

Data format (agreed with the voxel featuriser): ``arrays`` is a mapping (a dict, an ``np.load``-ed
``.npz``, memory maps) with

- ``x``: float32 (N, 4, d, d, d), channels-first [density, p_x, p_y, p_z];
- ``species``: int64 (N, d, d, d), classes 0..94 (0 = background);
- ``occupancy``: float32 (N, d, d, d) in {0, 1};
- ``cond``: float32 (N, n_deciles), one-hot property decile (VAE only);
- ``groups`` (optional): int (N,), the parent structure of each sample; when present, the automatic
  split keeps every rotated copy with its parent (the released ``data_split`` does the same).

Both loops follow the released scripts: an 80/20 split, Adam (Keras' eps 1e-7), an epoch loop over
shuffled mini-batches, a validation pass after every epoch, and the weights of the epoch with the
lowest validation loss are kept (the training loss decides when there is no validation part). The
UNet is trained first; the VAE's perceptual loss reads the frozen UNet (eval mode, no gradients).

Randomness comes only from ``seed`` (an int or a `numpy.random.SeedSequence`), spawned into four
streams: split, weight initialisation (run under `torch.random.fork_rng`, so the global torch RNG
is left alone), batch shuffling, and the VAE's reparameterisation noise (a `torch.Generator`). The
global RNGs are never seeded. Validation noise is re-drawn from the same seed every epoch, so
validation losses of different epochs are comparable.

Batch-norm statistics (a deviation from the released scripts, which validate with Keras' running
averages): both networks use Keras' momentum 0.99, i.e. running averages over about 100 steps.
With the cpu preset's short, fast schedules (lr 1e-3 / 2e-3) the weights move faster than those
averages follow, so eval-mode outputs lag the trained network; the decoded coordinate channels are
then off in scale and the lattice with them (measured on a trained cpu model: held-out VAE MSE 0.084
with the running averages, 0.059 after recalibration). Before every validation pass,
`recalibrate_batchnorm` therefore replaces the running statistics with their average over the
batches of ``bn_recalibration_maps`` fixed training maps (``torch.optim.swa_utils.update_bn``:
train-mode forward passes without gradients; the same latent noise as training for the VAE). Best-epoch selection and the saved weights use these
statistics. The losses and the optimiser are unchanged.

Checkpoints (`save_checkpoint` / `load_checkpoint`) are one ``torch.save`` file each, written
atomically, holding ``format``, ``kind``, ``version``, the model's constructor arguments
(``config``), its ``state`` dict and a JSON-like ``extra`` (history, training settings).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from discovery.errors import DataError
from discovery.models.checkpoints import load_module, save_module
from discovery.models.icsg3d.cond_dfc_vae import CondDFCVAE, vae_loss
from discovery.models.icsg3d.presets import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ICSG3DConfig
from discovery.models.icsg3d.unet3d import (
    N_SPECIES_CLASSES,
    UNet3D,
    inverse_frequency_weights,
    nonzero_recall_counts,
    unet_loss,
)

logger = logging.getLogger(__name__)

#: Checkpoint kinds of this module and the network each one rebuilds (the CGCNN heads save
#: themselves, `discovery.models.icsg3d.heads`, in the same format).
MODEL_KINDS: dict[str, type[nn.Module]] = {"unet": UNet3D, "vae": CondDFCVAE}
#: Channels of a voxel map: density and the three coordinate channels.
IN_CHANNELS = 4
#: Adam epsilon of Keras (PyTorch's default is 1e-8).
ADAM_EPS = 1e-7
#: Samples per chunk when class frequencies are counted over the training split.
_WEIGHT_CHUNK = 256

#: ``progress(stage, epoch, total_epochs, metrics)``, called after every epoch ("unet" or "vae").
ProgressFn = Callable[[str, int, int, dict[str, float]], None]
Split = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- configs -> modules


def unet_architecture(config: ICSG3DConfig) -> dict[str, Any]:
    """`UNet3D` constructor arguments of a config (also the identity stored in its checkpoint)."""
    return {"in_channels": IN_CHANNELS, "n_classes": N_SPECIES_CLASSES,
            "widths": [list(w) for w in config.unet.widths], "bottom": config.unet.bottom}


def vae_architecture(config: ICSG3DConfig) -> dict[str, Any]:
    """`CondDFCVAE` constructor arguments of a config (also the identity stored in its checkpoint)."""
    return {"in_channels": IN_CHANNELS, "cond_dim": config.n_deciles, "filters": list(config.vae.filters),
            "latent": config.vae.latent, "grid": config.grid, "dense": config.vae.dense}


def _seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def _torch_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _build(kind: str, arch: Mapping[str, Any], init_seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return MODEL_KINDS[kind](**arch)


# ----------------------------------------------------------------------------- data


def split_indices(n: int, val_fraction: float, seed: int | np.random.SeedSequence,
                  groups: np.ndarray | None = None) -> Split:
    """Shuffle ``0..n-1`` into (train, validation) indices, both sorted.

    With ``groups`` the groups (parent structures) are shuffled and split, so all copies of one
    structure fall on the same side. At least one sample (group) stays in training; the validation part
    gets ``round(val_fraction * n_groups)`` groups, at least one when ``val_fraction > 0`` and there are
    two or more groups.

    Shapes: groups (n,) -> train (n_train,), val (n_val,) int64.
    """
    if n < 1:
        raise DataError("arrays: no samples to split")
    rng = np.random.default_rng(_seed_sequence(seed))
    labels = np.arange(n) if groups is None else np.asarray(groups).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"arrays: 'groups' has {labels.shape[0]} entries, expected {n}")
    unique = np.unique(labels)
    order = rng.permutation(len(unique))
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, len(unique) - 1)
    val_groups = unique[order[:n_val]]
    is_val = np.isin(labels, val_groups)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def _check_split(split: Split, n: int) -> Split:
    train, val = (np.asarray(s, dtype=np.int64).reshape(-1) for s in split)
    if train.size == 0:
        raise DataError("split: the training part is empty")
    for name, part in (("train", train), ("validation", val)):
        if part.size and (part.min() < 0 or part.max() >= n):
            raise DataError(f"split: {name} indices must lie in 0..{n - 1}")
    if np.intersect1d(train, val).size:
        raise DataError("split: training and validation indices overlap")
    return np.sort(train), np.sort(val)


def _check_arrays(arrays: Mapping[str, Any], grid: int, keys: tuple[str, ...],
                  n_deciles: int | None = None) -> int:
    """Check presence and shapes of the agreed arrays; return N."""
    d = grid
    expected = {"x": (IN_CHANNELS, d, d, d), "species": (d, d, d), "occupancy": (d, d, d),
                "cond": (n_deciles,)}
    n = None
    for key in keys:
        if key not in arrays:
            raise DataError(f"arrays: missing {key!r} (expected keys {', '.join(keys)})")
        shape = tuple(np.shape(arrays[key]))
        want = expected[key]
        if len(shape) != len(want) + 1 or shape[1:] != want:
            raise DataError(f"arrays: {key!r} has shape {shape}, expected (N, {', '.join(map(str, want))})")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise DataError(f"arrays: {key!r} has {shape[0]} samples, 'x' has {n}")
    if "species" in keys and not np.issubdtype(np.asarray(arrays["species"][:1]).dtype, np.integer):
        raise DataError("arrays: 'species' must hold integer class labels")
    assert n is not None
    return n


def _tensor(arrays: Mapping[str, Any], key: str, idx: np.ndarray, dtype: torch.dtype,
            device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(arrays[key][idx])).to(device=device, dtype=dtype)


def _batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    order = indices if rng is None else rng.permutation(indices)
    for start in range(0, len(order), batch_size):
        yield np.sort(order[start:start + batch_size])  # sorted: friendlier to memory maps


# ----------------------------------------------------------------------------- epoch loop


def _recalibration_maps(train_idx: np.ndarray, n: int, seed: np.random.SeedSequence) -> np.ndarray:
    """A fixed random subset of ``n`` training samples (all when fewer), sorted."""
    if n <= 0 or len(train_idx) == 0:
        return np.zeros(0, dtype=np.int64)
    pick = np.random.default_rng(seed).permutation(np.asarray(train_idx))[:n]
    return np.sort(pick)


BatchFn = Callable[[np.ndarray, bool], tuple[dict[str, float], dict[str, int]]]


class _IndexedForward(nn.Module):
    """Wraps a model so that ``torch.optim.swa_utils.update_bn`` can feed it sample indices."""

    def __init__(self, model: nn.Module, forward: Callable[[np.ndarray], Any]):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, idx: np.ndarray) -> Any:
        return self._forward(idx)


def recalibrate_batchnorm(model: nn.Module, forward: Callable[[np.ndarray], Any], indices: np.ndarray,
                          batch_size: int) -> None:
    """Reset every batch-norm layer's running statistics to their average over ``indices``.

    ``torch.optim.swa_utils.update_bn`` (train-mode passes without gradients, cumulative averaging
    of the per-batch statistics, momentum restored afterwards); ``forward(idx)`` runs the model on
    those samples. The model is left in eval mode.
    """
    from torch.optim.swa_utils import update_bn

    if len(indices):
        with torch.no_grad():
            update_bn(list(_batches(np.asarray(indices), batch_size, None)), _IndexedForward(model, forward))
    model.eval()


def _fit(stage: str, model: nn.Module, epochs: int, batch_size: int, split: Split,
         seed: np.random.SeedSequence, run_batch: BatchFn, progress: ProgressFn | None,
         before_val: Callable[[], None] | None = None,
         recalibrate: Callable[[], None] | None = None) -> list[dict[str, float]]:
    """Shared epoch loop; ``run_batch(idx, train)`` returns (batch-mean losses, summed counts).

    ``recalibrate()`` (batch-norm statistics) runs after each epoch's training part.
    """
    train_idx, val_idx = split
    shuffle_rng = np.random.default_rng(seed)
    best_loss, best_state = math.inf, None
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        for part, idx_all in (("train", train_idx), ("val", val_idx)):
            if idx_all.size == 0:
                continue
            training = part == "train"
            if not training and recalibrate is not None:
                recalibrate()
            model.train(training)
            if not training and before_val is not None:
                before_val()
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            n_seen = 0
            with torch.set_grad_enabled(training):
                for idx in _batches(idx_all, batch_size, shuffle_rng if training else None):
                    losses, cnt = run_batch(idx, training)
                    if training and not math.isfinite(losses["loss"]):
                        raise FloatingPointError(f"{stage}: training loss is not finite in epoch {epoch}")
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                    for k, v in cnt.items():
                        counts[k] = counts.get(k, 0) + v
                    n_seen += len(idx)
            metrics.update({f"{part}_{k}": v / n_seen for k, v in sums.items()})
            if "atoms" in counts:
                metrics[f"{part}_recall"] = (counts["correct"] / counts["atoms"]
                                             if counts["atoms"] else float("nan"))
        if val_idx.size == 0 and recalibrate is not None:
            recalibrate()
        metrics["time_s"] = time.perf_counter() - t0
        select = metrics.get("val_loss", metrics["train_loss"])
        if select < best_loss:
            best_loss = select
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        history.append({"epoch": epoch, **metrics})
        logger.info("%s epoch %d/%d: %s", stage, epoch, epochs,
                    ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if progress is not None:
            progress(stage, epoch, epochs, dict(metrics))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def train_unet(arrays: Mapping[str, Any], config: ICSG3DConfig, device: str | torch.device = "cpu", *,
               progress: ProgressFn | None = None, seed: int | np.random.SeedSequence = 0,
               split: Split | None = None) -> tuple[UNet3D, list[dict[str, float]]]:
    """Train the segmentation UNet on voxel maps with species and occupancy labels.

    Loss: `~discovery.models.icsg3d.unet3d.unet_loss` with ``config.unet.class_weights`` (inverse frequency
    over the training part, background 0; or the released code's scalar 95).

    Args:
        arrays: ``x``, ``species``, ``occupancy`` (and optionally ``groups``), see the module docstring.
        config: the ICSG3D config; ``grid`` and ``unet`` are used.
        device: where the model trains ("cpu", "cuda", ...).
        progress: called after every epoch as ``progress("unet", epoch, epochs, metrics)``.
        seed: source of every random choice (split, initialisation, shuffling).
        split: (train, validation) sample indices; default `split_indices` with
            ``config.unet.val_fraction``.

    Returns:
        The model with the best-validation weights, in eval mode on ``device``, and the history: one
        dict per epoch with ``epoch``, ``train_loss``, ``train_ce``, ``train_bce``, ``train_recall``,
        the same with ``val_`` and ``time_s``. Recall = fraction of non-background voxels whose argmax
        species is right.

    Raises:
        DataError: missing arrays, wrong shapes, labels out of range or a bad split.
        FloatingPointError: the training loss became NaN or infinite.
    """
    cfg = config.unet
    device = torch.device(device)
    n = _check_arrays(arrays, config.grid, ("x", "species", "occupancy"))
    split_ss, init_ss, shuffle_ss, recal_ss = _seed_sequence(seed).spawn(4)
    split = _check_split(split, n) if split is not None else split_indices(
        n, cfg.val_fraction, split_ss, arrays.get("groups"))
    model = cast(UNet3D, _build("unet", unet_architecture(config), _torch_seed(init_ss)).to(device))
    if cfg.class_weights == "inverse_frequency":
        species = arrays["species"]
        train_idx = split[0]
        try:
            weights = inverse_frequency_weights(
                species[train_idx[i:i + _WEIGHT_CHUNK]] for i in range(0, len(train_idx), _WEIGHT_CHUNK))
        except ValueError as exc:
            raise DataError(f"arrays: 'species' of the training part: {exc}") from None
    else:
        weights = torch.full((N_SPECIES_CLASSES,), float(N_SPECIES_CLASSES))
    weights = weights.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=ADAM_EPS)
    logger.info("unet: %d parameters, %d train / %d validation samples, device %s",
                sum(p.numel() for p in model.parameters()), len(split[0]), len(split[1]), device)

    def run_batch(idx: np.ndarray, training: bool) -> tuple[dict[str, float], dict[str, int]]:
        x = _tensor(arrays, "x", idx, torch.float32, device)
        species = _tensor(arrays, "species", idx, torch.int64, device)
        occupancy = _tensor(arrays, "occupancy", idx, torch.float32, device)
        lo, hi = int(species.min()), int(species.max())
        if lo < 0 or hi >= N_SPECIES_CLASSES:
            raise DataError(f"arrays: 'species' labels must be in 0..{N_SPECIES_CLASSES - 1}, "
                            f"found {lo}..{hi}")
        species_logits, occ_logits = model(x)
        losses = unet_loss(species_logits, occ_logits, species, occupancy, weights)
        if training:
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
        correct, atoms = nonzero_recall_counts(species_logits.detach(), species)
        return ({"loss": losses["total"].item(), "ce": losses["ce"].item(), "bce": losses["bce"].item()},
                {"correct": correct, "atoms": atoms})

    recal_idx = _recalibration_maps(split[0], cfg.bn_recalibration_maps, recal_ss)

    def recalibrate() -> None:
        recalibrate_batchnorm(model, lambda idx: model(_tensor(arrays, "x", idx, torch.float32, device)),
                              recal_idx, cfg.batch_size)

    history = _fit("unet", model, cfg.epochs, cfg.batch_size, split, shuffle_ss, run_batch, progress,
                   recalibrate=recalibrate if len(recal_idx) else None)
    return model, history


def freeze_(model: nn.Module) -> nn.Module:
    """Put a module in eval mode and switch off gradients of all its parameters, in place."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def train_vae(arrays: Mapping[str, Any], unet: UNet3D, config: ICSG3DConfig,
              device: str | torch.device = "cpu", *, progress: ProgressFn | None = None,
              seed: int | np.random.SeedSequence = 0,
              split: Split | None = None) -> tuple[CondDFCVAE, list[dict[str, float]]]:
    """Train the Cond-DFC-VAE with the frozen UNet as its perceptual model.

    The UNet is frozen *in place* (`freeze_`: eval mode, ``requires_grad=False``) and moved to
    ``device``; it stays frozen afterwards. Loss: `~discovery.models.icsg3d.cond_dfc_vae.vae_loss` with
    ``config.vae.alpha`` and ``config.vae.beta``.

    Args:
        arrays: ``x`` and ``cond`` (and optionally ``groups``), see the module docstring.
        unet: the trained UNet (`train_unet` or a loaded checkpoint).
        config: the ICSG3D config; ``grid``, ``n_deciles`` and ``vae`` are used.
        device: where the model trains.
        progress: called after every epoch as ``progress("vae", epoch, epochs, metrics)``.
        seed: source of every random choice (split, initialisation, shuffling, latent noise).
        split: (train, validation) sample indices; default `split_indices` with
            ``config.vae.val_fraction``. Pass the UNet's split to keep the two validation sets equal.

    Returns:
        The model with the best-validation weights, in eval mode on ``device``, and the history: one
        dict per epoch with ``epoch``, ``train_loss``, ``train_mse``, ``train_perceptual``,
        ``train_kl``, the same with ``val_`` and ``time_s``.

    Raises:
        DataError: missing arrays, wrong shapes, a bad split, or a UNet for other input channels.
        FloatingPointError: the training loss became NaN or infinite.
    """
    cfg = config.vae
    device = torch.device(device)
    n = _check_arrays(arrays, config.grid, ("x", "cond"), n_deciles=config.n_deciles)
    if unet.in_channels != IN_CHANNELS or config.grid % unet.min_grid_divisor:
        raise DataError(f"perceptual UNet expects {unet.in_channels} channels and a grid divisible by "
                        f"{unet.min_grid_divisor}; the data have {IN_CHANNELS} channels on {config.grid}^3")
    split_ss, init_ss, shuffle_ss, noise_ss = _seed_sequence(seed).spawn(4)
    split = _check_split(split, n) if split is not None else split_indices(
        n, cfg.val_fraction, split_ss, arrays.get("groups"))
    perceptual = freeze_(unet.to(device))
    model = cast(CondDFCVAE, _build("vae", vae_architecture(config), _torch_seed(init_ss)).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=ADAM_EPS)
    train_seed, val_seed, recal_seed = (_torch_seed(s) for s in noise_ss.spawn(3))
    train_noise = torch.Generator(device=device).manual_seed(train_seed)
    val_noise = torch.Generator(device=device)
    recal_noise = torch.Generator(device=device)
    recal_idx = _recalibration_maps(split[0], cfg.bn_recalibration_maps, np.random.SeedSequence(recal_seed))
    logger.info("vae: %d parameters, %d train / %d validation samples, device %s",
                sum(p.numel() for p in model.parameters()), len(split[0]), len(split[1]), device)

    def reset_val_noise() -> None:
        val_noise.manual_seed(val_seed)

    def run_batch(idx: np.ndarray, training: bool) -> tuple[dict[str, float], dict[str, int]]:
        x = _tensor(arrays, "x", idx, torch.float32, device)
        cond = _tensor(arrays, "cond", idx, torch.float32, device)
        x_hat, mu, logvar = model(x, cond, rng_generator=train_noise if training else val_noise)
        losses = vae_loss(x, x_hat, mu, logvar, perceptual.features, cfg.alpha, cfg.beta)
        if training:
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
        return ({"loss": losses["total"].item(), "mse": losses["mse"].item(),
                 "perceptual": losses["perceptual"].item(), "kl": losses["kl"].item()}, {})

    def recalibrate() -> None:
        recal_noise.manual_seed(recal_seed)
        recalibrate_batchnorm(model, lambda idx: model(_tensor(arrays, "x", idx, torch.float32, device),
                                                       _tensor(arrays, "cond", idx, torch.float32, device),
                                                       rng_generator=recal_noise),
                              recal_idx, cfg.batch_size)

    history = _fit("vae", model, cfg.epochs, cfg.batch_size, split, shuffle_ss, run_batch, progress,
                   before_val=reset_val_noise, recalibrate=recalibrate if len(recal_idx) else None)
    return model, history


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, kind: str, config_dict: Mapping[str, Any],
                    state_dict: Mapping[str, Tensor], extra: Mapping[str, Any] | None = None) -> Path:
    """Write one ICSG3D network ("unet" or "vae") atomically (`discovery.models.checkpoints.save_module`).

    Args:
        path: destination file; parent folders are created.
        kind: a key of `MODEL_KINDS`.
        config_dict: the model's constructor arguments (`unet_architecture` / `vae_architecture`).
        state_dict: the model's ``state_dict()``; tensors are copied to the CPU.
        extra: JSON-like extras (history, training settings); plain Python values and tensors only.

    Raises:
        ValueError: unknown kind. TypeError: ``extra`` or ``config_dict`` holds a value that a
        weights-only load would refuse.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    return save_module(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, kind, config_dict, state_dict, extra)


def load_checkpoint(path: str | Path, kind: str, expected_config: Mapping[str, Any]) -> dict[str, Any]:
    """Read a network written by `save_checkpoint` and rebuild it (`load_module`: weights-only,
    the stored config must equal ``expected_config``).

    Returns:
        The payload plus ``model``, the rebuilt module on the CPU in eval mode.

    Raises:
        DataError: one line naming the file (missing, damaged, another format, kind, version or
            configuration, or weights that do not fit).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    return load_module(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, kind, MODEL_KINDS[kind], expected_config)
