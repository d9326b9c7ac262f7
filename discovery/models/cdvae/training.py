"""CD-VAE's training loop (CD-VAE's Lightning ``training_step`` / ``validation_step`` and its
``conf/optim``, ``conf/train`` settings), with resumable checkpoints.

- Adam (lr, betas 0.9/0.999, eps 1e-8, no weight decay); gradients clipped by value
  (``grad_clip_value``, 0.5); fp32.
- Teacher forcing of the lattice while the (0-based) epoch is at most ``teacher_forcing_max_epoch``.
- Validation every ``val_every`` epochs and after the last: the validation loss is CD-VAE's,
  ``cost_coord * coord + cost_type * type`` (finding 0.3 #6), without teacher forcing; the noise
  of validation is drawn from a fixed seed, so two validations of the same weights agree.
  Reported with it: number-of-atoms accuracy, lengths MARD, angles MAE, volume MARD, type
  accuracy, and every loss term.
- ReduceLROnPlateau(factor, patience, min_lr) on the validation loss, stepped every epoch with the
  latest validation loss (what Lightning does with ``monitor: val_loss`` when validation runs every
  few epochs), from the first validation on.
- The best validation loss keeps its weights (top-1 checkpoint, ``best.pt``); every validation
  also writes ``last.pt`` (weights, optimiser, scheduler, random streams, history) so that an
  interrupted training resumes where it stopped (`TrainState`).

A step whose loss is not finite is skipped (counted in ``skipped_steps``) rather than poisoning
the weights; CD-VAE's code mentions NaN losses without handling them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from discovery.models.cdvae.graphs import lattice_params_to_matrix
from discovery.models.cdvae.model import CDVAE, LOSS_NAMES
from discovery.models.cdvae.presets import CDVAEConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cdvae-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """Where a training stands (what ``last.pt`` restores)."""

    epoch: int = 0  # epochs finished
    best_val_loss: float = math.inf
    best_epoch: int = 0
    last_val_loss: float | None = None
    skipped_steps: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _val_metrics(model: CDVAE, batch, out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """CD-VAE's validation extras (``compute_stats`` with prefix val)."""
    num_atoms = batch.num_atoms
    natom_acc = (out["natom_logits"].argmax(dim=-1) == num_atoms).float().mean()
    raw = out["scaled_lattice"] * model.lattice_std + model.lattice_mean
    lengths = raw[:, :3] * num_atoms.view(-1, 1).float() ** (1 / 3)
    angles = raw[:, 3:]
    lengths_mard = ((batch.lengths - lengths).abs() / batch.lengths).mean()
    angles_mae = (angles - batch.angles).abs().mean()
    vol = torch.linalg.det(lattice_params_to_matrix(lengths, angles)).abs()
    true_vol = torch.linalg.det(lattice_params_to_matrix(batch.lengths, batch.angles)).abs()
    volume_mard = ((true_vol - vol).abs() / true_vol).mean()
    correct = (out["type_logits"].argmax(dim=-1) == batch.atom_types - 1).float()
    type_acc = scatter(correct, out["crystal"], dim=0, dim_size=num_atoms.numel(), reduce="mean").mean()
    return {"natom_accuracy": natom_acc, "lengths_mard": lengths_mard, "angles_mae": angles_mae,
            "volumes_mard": volume_mard, "type_accuracy": type_acc}


def evaluate_losses(model: CDVAE, data: Sequence[Any], batch_size: int, seed: int, teacher_forcing: bool = False,
                    device: str = "cpu") -> dict[str, float]:
    """Every loss term (and CD-VAE's validation loss and metrics) averaged over ``data``, with
    noise drawn from ``seed`` (deterministic for given weights)."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(int(seed))
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad():
        for batch in DataLoader(list(data), batch_size=batch_size, shuffle=False):
            batch = batch.to(device)
            out = model(batch, teacher_forcing=teacher_forcing, generator=gen)
            n = int(batch.num_atoms.numel())
            terms = {k: out[k] for k in LOSS_NAMES}
            terms["loss"] = out["loss"]
            terms["val_loss"] = model.costs["coord"] * out["coord"] + model.costs["type"] * out["type"]
            terms.update(_val_metrics(model, batch, out))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
    return {k: v / max(count, 1) for k, v in sums.items()}


def _generator_state(g: torch.Generator) -> torch.Tensor:
    return g.get_state()


def train_cdvae(model: CDVAE, train_data: Sequence[Any], val_data: Sequence[Any], config: CDVAEConfig,
                out_dir: Path, *, seed: int, device: str, fingerprint: str, tracker: Any = None,
                progress: Callable[[str, int, int, dict[str, Any]], None] | None = None,
                resume: dict[str, Any] | None = None, write_checkpoint: Callable[[Path, dict], Any]) -> TrainState:
    """Train ``model`` (in place) for ``config.epochs`` epochs, resuming from ``resume`` (a
    ``last.pt`` payload of the same ``fingerprint``) when given.

    Writes ``out_dir/best.pt`` (top-1 weights) and ``out_dir/last.pt`` at every validation.
    Returns the final `TrainState`; the model holds the *last* weights.
    """
    out_dir = Path(out_dir)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=config.lr_factor,
                                                       patience=config.lr_patience, min_lr=config.min_lr)
    shuffle_gen = torch.Generator().manual_seed(int(seed) * 7919 + 1)
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) * 7919 + 2)
    state = TrainState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        shuffle_gen.set_state(resume["shuffle_generator"])
        noise_gen.set_state(resume["noise_generator"])
        st = resume["state"]
        state = TrainState(epoch=int(st["epoch"]), best_val_loss=float(st["best_val_loss"]),
                           best_epoch=int(st["best_epoch"]), last_val_loss=st.get("last_val_loss"),
                           skipped_steps=int(st["skipped_steps"]), elapsed_s=float(st["elapsed_s"]),
                           history=list(resume.get("history", [])))
        logger.info("cdvae: resuming at epoch %d of %d from %s", state.epoch, config.epochs, out_dir / "last.pt")
    loader = DataLoader(list(train_data), batch_size=config.batch_size, shuffle=True, generator=shuffle_gen)
    val_seed = int(seed) * 7919 + 3
    started = time.perf_counter() - state.elapsed_s

    def save_last() -> None:
        state.elapsed_s = time.perf_counter() - started
        write_checkpoint(out_dir / "last.pt", {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": "last",
            "config": config.model_dump(mode="json"), "fingerprint": fingerprint,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "shuffle_generator": _generator_state(shuffle_gen), "noise_generator": _generator_state(noise_gen),
            "state": {"epoch": state.epoch, "best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch,
                      "last_val_loss": state.last_val_loss, "skipped_steps": state.skipped_steps,
                      "elapsed_s": state.elapsed_s},
            "history": state.history})

    for epoch in range(state.epoch, config.epochs):
        model.train()
        teacher_forcing = epoch <= config.teacher_forcing_max_epoch
        sums = {k: 0.0 for k in ("loss", *LOSS_NAMES)}
        count = 0
        for batch in loader:
            batch = batch.to(device)
            out = model(batch, teacher_forcing=teacher_forcing, generator=noise_gen)
            if not torch.isfinite(out["loss"]):
                state.skipped_steps += 1
                logger.warning("cdvae: epoch %d: non-finite loss, step skipped", epoch + 1)
                continue
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if config.grad_clip_value is not None:
                torch.nn.utils.clip_grad_value_(model.parameters(), config.grad_clip_value)
            opt.step()
            n = int(batch.num_atoms.numel())
            for k in sums:
                sums[k] += float(out[k].detach()) * n
            count += n
        state.epoch = epoch + 1
        record: dict[str, float] = {"epoch": float(epoch + 1), "lr": float(opt.param_groups[0]["lr"]),
                                    **{f"train_{k}": v / max(count, 1) for k, v in sums.items()}}
        validate = (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
        if validate:
            val = evaluate_losses(model, val_data, config.val_batch_size, val_seed, device=device)
            record.update({f"val_{k}" if not k.startswith("val_") else k: v for k, v in val.items()})
            state.last_val_loss = val["val_loss"]
            if val["val_loss"] < state.best_val_loss:
                state.best_val_loss, state.best_epoch = val["val_loss"], epoch + 1
                write_checkpoint(out_dir / "best.pt", {
                    "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": "best",
                    "config": config.model_dump(mode="json"), "fingerprint": fingerprint,
                    "model": model.state_dict(), "epoch": epoch + 1, "val_loss": val["val_loss"]})
        if state.last_val_loss is not None:
            sched.step(state.last_val_loss)
        state.history.append(record)
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch" and math.isfinite(v)}, step=epoch + 1)
        if validate:
            save_last()
        if progress is not None:
            info = {"train_loss": record["train_loss"], "lr": record["lr"]}
            if "val_loss" in record:
                info["val_loss"] = record["val_loss"]
            progress("train", epoch + 1, config.epochs, info)
    state.elapsed_s = time.perf_counter() - started
    return state
