"""`LCOMModel`: a trained LCOM (energy members, scalers) with the CD-VAE it encodes and decodes with.

Latents are handled *standardised* (the CD-VAE posterior mean minus the training mean, over the
training std, per dimension): `encode` returns them, `predict` / `optimize` take them, `decode`
un-standardises before CD-VAE's Langevin decoder. Energies come back in eV/atom.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discovery.models.lcom.conservative import (
    EnergyMLP,
    FitSettings,
    descent_path,
    fit_member,
)
from discovery.models.lcom.features import composition_matrix
from discovery.models.lcom.presets import LCOMConfig

logger = logging.getLogger(__name__)


class LCOMModel:
    """A trained LCOM (`discovery.models.lcom.trainer.TRAINER.load` builds it).

    Attributes:
        members: the energy MLPs (eval mode).
        config: the training `LCOMConfig`.
        manifest: the model folder's manifest.
        cdvae: the `CDVAEModel` whose latents the members read.
        version: 12 hex digits of the manifest's sha256 (``-ft<k>`` after fine-tuning).
        train_latents: ``(z_std, comp, y)`` of the training split (fine-tuning replays them), or None.
    """

    def __init__(self, members: list[EnergyMLP], config: LCOMConfig, manifest: dict[str, Any],
                 scalers: dict[str, np.ndarray], cdvae: Any, folder: Path | None = None,
                 log_alphas: Sequence[float] | None = None, train_latents: tuple | None = None):
        self.members = [m.eval() for m in members]
        self.config = config
        self.manifest = manifest
        self.cdvae = cdvae
        self.folder = folder
        self.z_mean = np.asarray(scalers["z_mean"], dtype=np.float32)
        self.z_std = np.asarray(scalers["z_std"], dtype=np.float32)
        self.y_mean = float(scalers["y_mean"])
        self.y_std = float(scalers["y_std"])
        self.log_alphas = list(log_alphas or [float(np.log(config.alpha_init))] * len(members))
        self.train_latents = train_latents
        self.version = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.fine_tunes = 0

    # ------------------------------------------------------------------ sizes

    @property
    def latent_dim(self) -> int:
        return int(self.z_mean.shape[0])

    @property
    def eta(self) -> float:
        """The plain gradient step on standardised latents."""
        return self.config.step_size(self.latent_dim)

    @property
    def max_atoms(self) -> int:
        return int(self.cdvae.max_atoms)

    # ------------------------------------------------------------------ features

    def standardise(self, mu: np.ndarray) -> np.ndarray:
        return ((np.asarray(mu, np.float32) - self.z_mean) / self.z_std).astype(np.float32)

    def unstandardise(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * self.z_std + self.z_mean).astype(np.float32)

    def conditions(self, compositions: Sequence[Any]) -> np.ndarray:
        """Composition vectors of formulas, Compositions or Structures. Shapes: (n, k)."""
        return composition_matrix(list(compositions), self.config.composition)

    def encode(self, structures: Sequence[Any]) -> np.ndarray:
        """Standardised CD-VAE posterior means. Shapes: (n, latent_dim).

        Raises:
            DataError: a structure the CD-VAE cannot encode (too many atoms, unknown element).
        """
        mu, _ = self.cdvae.encode(list(structures))
        return self.standardise(mu)

    def _tensors(self, z: np.ndarray, comp: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        zt = torch.as_tensor(np.asarray(z, np.float32).reshape(-1, self.latent_dim))
        ct = torch.as_tensor(np.asarray(comp, np.float32).reshape(len(zt), -1)) if self.members[0].cond_dim else None
        return zt, ct

    # ------------------------------------------------------------------ predictions

    def predict_members(self, z: np.ndarray, comp: np.ndarray) -> np.ndarray:
        """Every member's formation energy. Units: eV/atom. Shapes: (n, d), (n, k) -> (members, n)."""
        zt, ct = self._tensors(z, comp)
        with torch.no_grad():
            out = torch.stack([m(zt, ct) for m in self.members]).numpy().astype(np.float64)
        return out * self.y_std + self.y_mean

    def predict(self, z: np.ndarray, comp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and (population) std over members. Units: eV/atom. Shapes: (n,), (n,)."""
        members = self.predict_members(z, comp)
        return members.mean(axis=0), members.std(axis=0)

    def optimize(self, z: np.ndarray, comp: np.ndarray, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """LCOM's search: ``steps`` (default ``opt_steps``) plain gradient steps of `eta` down the
        ensemble-mean energy, the composition fixed.

        Returns:
            latents (steps + 1, n, d), start first, and predicted energies (steps + 1, n) in eV/atom.
        """
        steps = self.config.opt_steps if steps is None else int(steps)
        zt, ct = self._tensors(z, comp)
        path, preds = descent_path(self.members, zt, ct, steps, self.eta)
        return path.numpy(), preds.numpy().astype(np.float64) * self.y_std + self.y_mean

    def decode(self, z: np.ndarray, atom_types: Sequence[Sequence[int]], rng: np.random.Generator,
               langevin: dict[str, Any] | None = None) -> list[Any]:
        """CD-VAE decoding of standardised latents with every crystal's atoms forced (``atom_types``:
        atomic numbers per crystal, which also fixes the atom count). None where no lattice results."""
        return self.cdvae.decode(self.unstandardise(z), rng, atom_types=[list(t) for t in atom_types],
                                 langevin=langevin)

    def training_entries(self) -> dict[str, np.ndarray]:
        """The training split as stored in ``latents.npz``: ``ids``, ``formulas``, ``n_atoms``, ``z``
        (standardised), ``comp``, ``y`` (eV/atom). Empty arrays when the folder has none."""
        path = self.folder / "latents.npz" if self.folder is not None else None
        if path is None or not path.is_file():
            return {"ids": np.zeros(0, "U1"), "formulas": np.zeros(0, "U1"), "n_atoms": np.zeros(0, np.int64),
                    "z": np.zeros((0, self.latent_dim), np.float32), "comp": np.zeros((0, 0), np.float32),
                    "y": np.zeros(0)}
        with np.load(path, allow_pickle=False) as f:
            train = f["train"]
            return {"ids": f["ids"][train], "formulas": f["formulas"][train], "n_atoms": f["n_atoms"][train],
                    "z": self.standardise(f["mu"][train]), "comp": f["comp"][train].astype(np.float32),
                    "y": f["y"][train].astype(np.float64)}

    # ------------------------------------------------------------------ fine-tuning

    def fine_tuned(self, z: np.ndarray, comp: np.ndarray, y: np.ndarray, steps: int, seed: int,
                   replay: int = 0, lr: float | None = None) -> LCOMModel:
        """A copy whose members continue the conservative training for ``steps`` optimiser steps
        (Adam at ``lr``; None: the training rate) on the labels ``y`` (eV/atom) at standardised
        latents ``z``, mixed with ``replay`` training examples drawn at random (keeps the model from
        forgetting the training set; the labels are repeated to weigh as much as the replay). The
        scalers and the CD-VAE are shared; each member continues its own multiplier.

        Multi-fidelity on purpose (DESIGN rule 2): in a campaign the labels are DFT formation
        energies while the replayed rows carry the training set's fidelity (CHGNet for the sets
        `discovery.datasets` builds). The model learns DFT where it has DFT labels and keeps the
        MLIP landscape elsewhere; a systematic offset between the two fidelities is learned near the
        labels only (no separate offset term)."""
        z = np.asarray(z, np.float32)
        comp = np.asarray(comp, np.float32).reshape(len(z), -1)
        y_std = (np.asarray(y, np.float64) - self.y_mean) / self.y_std
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1C0]))
        if replay and self.train_latents is not None:
            tz, tc, ty = self.train_latents
            pick = rng.choice(len(ty), size=min(replay, len(ty)), replace=False)
            # the labels repeated to weigh as much as the replayed rows together
            copies = max(1, -(-len(pick) // len(z)))
            z, comp, y_std = np.tile(z, (copies, 1)), np.tile(comp, (copies, 1)), np.tile(y_std, copies)
            z = np.concatenate([z, tz[pick]])
            comp = np.concatenate([comp, tc[pick]])
            y_std = np.concatenate([y_std, (ty[pick] - self.y_mean) / self.y_std])
        zt, ct = self._tensors(z, comp)
        yt = torch.as_tensor(y_std, dtype=torch.float32)
        settings = FitSettings.from_config(self.config, self.latent_dim)
        if lr is not None:
            import dataclasses

            settings = dataclasses.replace(settings, lr=float(lr))
        members, alphas = [], []
        for k, member in enumerate(self.members):
            tuned = copy.deepcopy(member)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)) + k)
            history = fit_member(tuned, zt, ct, yt, settings, gen, max_steps=steps, log_alpha0=self.log_alphas[k])
            members.append(tuned.eval())
            alphas.append(history[-1]["log_alpha"] if history else self.log_alphas[k])
        out = copy.copy(self)
        out.members, out.log_alphas = members, alphas
        out.fine_tunes = self.fine_tunes + 1
        out.version = f"{self.version.split('-ft')[0]}-ft{out.fine_tunes}"
        return out

    def state(self) -> dict[str, Any]:
        """The members' weights and multipliers (what a surrogate checkpoint saves)."""
        return {"members": [m.state_dict() for m in self.members], "log_alphas": list(self.log_alphas),
                "fine_tunes": self.fine_tunes}

    def with_state(self, state: dict[str, Any]) -> LCOMModel:
        """A copy with the members' weights of `state` (same architecture)."""
        members = []
        for m, sd in zip(self.members, state["members"], strict=True):
            copy_m = copy.deepcopy(m)
            copy_m.load_state_dict(sd)
            members.append(copy_m.eval())
        out = copy.copy(self)
        out.members, out.log_alphas = members, list(state["log_alphas"])
        out.fine_tunes = int(state.get("fine_tunes", 0))
        out.version = f"{self.version.split('-ft')[0]}" + (f"-ft{out.fine_tunes}" if out.fine_tunes else "")
        return out
