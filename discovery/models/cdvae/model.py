"""The CD-VAE module (MODELS.md 4.2-4.4; CD-VAE's ``cdvae/pl_modules/model.py``): latent, heads,
noise schedules, losses, annealed Langevin dynamics and latent optimisation.

What it does, as CD-VAE does:

- encoder -> ``fc_mu`` / ``fc_var`` (Linear(latent, latent)) -> z = mu + exp(logvar / 2) * eps;
- heads on z, each ``build_mlp(latent, hidden_dim, fc_num_layers, out)`` (Linear, ReLU, ...,
  Linear): number of atoms (max_atoms + 1 classes), scaled lattice (lengths / N^(1/3) and angles,
  standardised by a scaler fitted on the training set), composition (100 logits per atom, z
  repeated per atom), and the optional property (standardised) when ``predict_property``;
- teacher forcing: the true lengths and angles replace the predicted ones while the epoch is at
  most ``teacher_forcing_max_epoch``;
- one noise level per crystal for coordinates (sigma geometric 10 -> 0.01, 50 levels) and one for
  types (5 -> 0.01); coordinates are noised in Cartesian space with the lattice in use and wrapped,
  types are drawn from one_hot(true) + sigma_type * softmax(composition logits, detached);
- losses: CE(num atoms); MSE(scaled lattice); composition CE per atom, mean per crystal then over
  the batch; coordinates 1/2 ||Delta/sigma - pred||^2 per atom (Delta: minimum-image vector from
  the noisy to the true position over 27 images, with the *true* lattice), mean per crystal;
  type CE / sigma_type, mean per crystal; KL mean over crystals; property MSE;
- Langevin: sigma from 10 down to 0.01 (levels below ``min_sigma`` skipped), step size
  step_lr * (sigma / sigma_L)^2, ``n_step_each`` steps per level, x <- x + eps * pred / sigma +
  sqrt(2 eps) * N(0, I), types <- argmax(type logits) unless forced; composition for the start
  drawn with CD-VAE's ``sample_composition``;
- optimisation: Adam on z minimising the property head (CD-VAE's ``opt`` task).

Differences: a crystal whose number-of-atoms head says 0 is sampled with 1 atom (CD-VAE would
sample an empty crystal, which its evaluation counts invalid); randomness comes from an explicit
``torch.Generator``; the property loss skips crystals whose property is missing (NaN); allowed
species (a campaign's elements) can mask the type and composition logits (not in CD-VAE).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from discovery.models.cdvae.decoder import DECODERS, MAX_ATOMIC_NUM
from discovery.models.cdvae.encoder import DimeNetPPEncoder
from discovery.models.cdvae.graphs import (
    cart_to_frac,
    frac_to_cart,
    lattice_params_to_matrix,
    min_image_vectors,
)

LOSS_NAMES = ("natom", "lattice", "composition", "coord", "type", "kld", "property")


def build_mlp(in_dim: int, hidden_dim: int, fc_num_layers: int, out_dim: int) -> nn.Sequential:
    """CD-VAE's ``build_mlp``: Linear, ReLU, (Linear, ReLU) x (layers - 1), Linear."""
    mods: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    for _ in range(fc_num_layers - 1):
        mods += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    mods.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*mods)


def geometric(begin: float, end: float, n: int) -> torch.Tensor:
    """``n`` values from ``begin`` to ``end``, evenly spaced in log."""
    return torch.tensor(np.exp(np.linspace(np.log(begin), np.log(end), n)), dtype=torch.float32)


class CDVAE(nn.Module):
    """CD-VAE.

    Args:
        arch: the architecture and loss keys of a `CDVAEConfig` dump (``latent_dim``,
            ``hidden_dim``, ``fc_num_layers``, ``encoder``, ``decoder``, sigmas, costs, ``beta``).
        max_atoms: the largest cell (the number-of-atoms head has ``max_atoms + 1`` classes).
        predict_property: add the property head.
    """

    def __init__(self, arch: dict[str, Any], max_atoms: int, predict_property: bool):
        super().__init__()
        self.arch = dict(arch)
        self.max_atoms = int(max_atoms)
        self.predict_property_head = bool(predict_property)
        latent, hidden, layers = int(arch["latent_dim"]), int(arch["hidden_dim"]), int(arch["fc_num_layers"])
        enc = dict(arch["encoder"])
        self.encoder = DimeNetPPEncoder(
            out_dim=latent, hidden=enc["hidden"], num_blocks=enc["num_blocks"], int_emb=enc["int_emb"],
            basis_emb=enc["basis_emb"], out_emb=enc["out_emb"], num_spherical=enc["num_spherical"],
            num_radial=enc["num_radial"], cutoff=enc["cutoff_a"], envelope_exponent=enc["envelope_exponent"],
            num_before_skip=enc["num_before_skip"], num_after_skip=enc["num_after_skip"],
            num_output_layers=enc["num_output_layers"])
        dec = dict(arch["decoder"])
        self.decoder = DECODERS[dec["kind"]](latent_dim=latent, hidden=dec["hidden"], num_blocks=dec["num_blocks"],
                                             num_radial=dec["num_radial"], cutoff=dec["cutoff_a"],
                                             max_neighbors=dec["max_neighbors"],
                                             angle_neighbors=dec.get("angle_neighbors", 0),
                                             num_spherical=dec.get("num_spherical", 7),
                                             latent_mlp=dec.get("latent_mlp", False))
        self.fc_mu = nn.Linear(latent, latent)
        self.fc_var = nn.Linear(latent, latent)
        self.fc_num_atoms = build_mlp(latent, hidden, layers, self.max_atoms + 1)
        self.fc_lattice = build_mlp(latent, hidden, layers, 6)
        self.fc_composition = build_mlp(latent, hidden, layers, MAX_ATOMIC_NUM)
        self.fc_property = build_mlp(latent, hidden, layers, 1) if self.predict_property_head else None
        n = int(arch["num_noise_level"])
        self.register_buffer("sigmas", geometric(arch["sigma_begin"], arch["sigma_end"], n))
        self.register_buffer("type_sigmas", geometric(arch["type_sigma_begin"], arch["type_sigma_end"], n))
        self.register_buffer("lattice_mean", torch.zeros(6))
        self.register_buffer("lattice_std", torch.ones(6))
        self.register_buffer("prop_mean", torch.zeros(1))
        self.register_buffer("prop_std", torch.ones(1))
        self.costs = {k: float(arch[f"cost_{k}"]) for k in ("natom", "lattice", "composition", "coord", "type",
                                                               "property")}
        self.costs["kld"] = float(arch["beta"])

    @property
    def latent_dim(self) -> int:
        return self.fc_mu.out_features

    # ------------------------------------------------------------------ scalers

    def set_scalers(self, lattice_mean, lattice_std, prop_mean=None, prop_std=None) -> None:
        """Set the standard scalers fitted on the training set (CD-VAE adds 1e-5 to the std)."""
        self.lattice_mean.copy_(torch.as_tensor(lattice_mean, dtype=torch.float32))
        self.lattice_std.copy_(torch.as_tensor(lattice_std, dtype=torch.float32))
        if prop_mean is not None:
            self.prop_mean.copy_(torch.as_tensor(prop_mean, dtype=torch.float32).reshape(1))
            self.prop_std.copy_(torch.as_tensor(prop_std, dtype=torch.float32).reshape(1))

    # ------------------------------------------------------------------ encoder and heads

    def encode(self, batch, generator: torch.Generator | None = None, sample: bool = True):
        """(mu, log_var, z) of a batch (z = mu when ``sample`` is False). Shapes: (B, latent) each."""
        lattice = lattice_params_to_matrix(batch.lengths, batch.angles)
        hidden = self.encoder(batch.atom_types, batch.frac_coords, lattice, batch.num_atoms, batch.edge_index,
                              batch.to_jimages, batch.num_bonds)
        mu, log_var = self.fc_mu(hidden), self.fc_var(hidden)
        if not sample:
            return mu, log_var, mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu, log_var, mu + eps * torch.exp(0.5 * log_var)

    def predict_lattice(self, z: torch.Tensor, num_atoms: torch.Tensor):
        """(scaled prediction (B, 6), lengths (B, 3) in A, angles (B, 3) in degrees)."""
        scaled = self.fc_lattice(z)
        raw = scaled * self.lattice_std + self.lattice_mean
        lengths = raw[:, :3] * num_atoms.view(-1, 1).float() ** (1 / 3)
        return scaled, lengths, raw[:, 3:]

    def predict_composition(self, z: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """Composition logits per atom. Shapes: (N, 100)."""
        return self.fc_composition(z.repeat_interleave(num_atoms, dim=0))

    def predict_property(self, z: torch.Tensor) -> torch.Tensor:
        """The property head, un-standardised. Shapes: (B,)."""
        if self.fc_property is None:
            raise RuntimeError("this CD-VAE has no property head (trained without a property column)")
        return (self.fc_property(z) * self.prop_std + self.prop_mean).squeeze(-1)

    def decode_stats(self, z, gt_num_atoms=None, gt_lengths=None, gt_angles=None, teacher_forcing=False):
        """CD-VAE's ``decode_stats``: (num-atoms logits or argmax, scaled lattice, lengths, angles,
        composition logits per atom)."""
        if gt_num_atoms is not None:
            num_atoms = self.fc_num_atoms(z)
            scaled, lengths, angles = self.predict_lattice(z, gt_num_atoms)
            composition = self.predict_composition(z, gt_num_atoms)
            if teacher_forcing and self.arch.get("teacher_forcing_lattice", True):
                lengths, angles = gt_lengths, gt_angles
        else:
            num_atoms = self.fc_num_atoms(z).argmax(dim=-1).clamp_min(1)
            scaled, lengths, angles = self.predict_lattice(z, num_atoms)
            composition = self.predict_composition(z, num_atoms)
        return num_atoms, scaled, lengths, angles, composition

    # ------------------------------------------------------------------ training forward

    def forward(self, batch, teacher_forcing: bool, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Every loss of one batch (CD-VAE's ``forward``), plus what validation metrics need."""
        device = batch.frac_coords.device
        num_atoms = batch.num_atoms
        n_crystals = num_atoms.numel()
        crystal = torch.repeat_interleave(torch.arange(n_crystals, device=device), num_atoms)
        mu, log_var, z = self.encode(batch, generator)
        natom_logits, scaled, lengths, angles, composition = self.decode_stats(
            z, num_atoms, batch.lengths, batch.angles, teacher_forcing)

        level = torch.randint(0, self.sigmas.numel(), (n_crystals,), generator=generator, device=device)
        sigma = self.sigmas[level].repeat_interleave(num_atoms)
        type_level = torch.randint(0, self.type_sigmas.numel(), (n_crystals,), generator=generator, device=device)
        type_sigma = self.type_sigmas[type_level].repeat_interleave(num_atoms)

        probs = (F.one_hot(batch.atom_types - 1, MAX_ATOMIC_NUM).float()
                 + F.softmax(composition.detach(), dim=-1) * type_sigma[:, None])
        noisy_types = torch.multinomial(probs, 1, generator=generator).squeeze(1) + 1

        lattice_in_use = lattice_params_to_matrix(lengths, angles)
        cart = frac_to_cart(batch.frac_coords, lattice_in_use, num_atoms)
        noise = torch.randn(cart.shape, generator=generator, device=device, dtype=cart.dtype)
        noisy_frac = cart_to_frac(cart + noise * sigma[:, None], lattice_in_use, num_atoms)
        coord_diff, type_logits = self.decoder(z, noisy_frac, noisy_types, num_atoms, lattice_in_use)

        true_lattice = lattice_params_to_matrix(batch.lengths, batch.angles)
        target = min_image_vectors(frac_to_cart(batch.frac_coords, true_lattice, num_atoms),
                                   frac_to_cart(noisy_frac, true_lattice, num_atoms), true_lattice, num_atoms)
        per_atom = 0.5 * ((target / sigma[:, None] ** 2 - coord_diff / sigma[:, None]) ** 2).sum(dim=1) * sigma**2
        coord = scatter(per_atom, crystal, dim=0, dim_size=n_crystals, reduce="mean").mean()
        type_ce = F.cross_entropy(type_logits, batch.atom_types - 1, reduction="none") / type_sigma
        type_loss = scatter(type_ce, crystal, dim=0, dim_size=n_crystals, reduce="mean").mean()
        comp_ce = F.cross_entropy(composition, batch.atom_types - 1, reduction="none")
        comp_loss = scatter(comp_ce, crystal, dim=0, dim_size=n_crystals, reduce="mean").mean()
        natom = F.cross_entropy(natom_logits, num_atoms)
        target_lattice = torch.cat([batch.lengths / num_atoms.view(-1, 1).float() ** (1 / 3), batch.angles], dim=-1)
        lattice_loss = F.mse_loss(scaled, (target_lattice - self.lattice_mean) / self.lattice_std)
        kld = torch.mean(-0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1))
        prop = torch.zeros((), device=device)
        if self.fc_property is not None and getattr(batch, "y", None) is not None:
            y = batch.y.view(-1)
            ok = torch.isfinite(y)
            if bool(ok.any()):
                pred = self.fc_property(z).view(-1)
                prop = F.mse_loss(pred[ok], ((y[ok] - self.prop_mean) / self.prop_std))
        losses = {"natom": natom, "lattice": lattice_loss, "composition": comp_loss, "coord": coord,
                  "type": type_loss, "kld": kld, "property": prop}
        total = sum(self.costs[k] * v for k, v in losses.items())
        return {"loss": total, **losses, "natom_logits": natom_logits, "scaled_lattice": scaled,
                "type_logits": type_logits, "crystal": crystal, "z": z, "mu": mu}

    # ------------------------------------------------------------------ sampling

    @staticmethod
    def sample_composition(probs: torch.Tensor, num_atoms: torch.Tensor, generator: torch.Generator | None = None
                           ) -> torch.Tensor:
        """CD-VAE's ``sample_composition``: per crystal, round p * N per element, draw the rest from
        the leftover probabilities, shuffle. Shapes: probs (N, 100), num_atoms (B,) -> (N,) atomic numbers."""
        crystal = torch.repeat_interleave(torch.arange(num_atoms.numel(), device=probs.device), num_atoms)
        mean = scatter(probs, crystal, dim=0, dim_size=num_atoms.numel(), reduce="mean")
        out = []
        for p, n in zip(mean, num_atoms.tolist(), strict=True):
            counts = torch.round(p * n)
            types = torch.nonzero(counts).view(-1)
            comp = types.repeat_interleave(counts[types].long()) + 1
            if comp.numel() < n:
                left = (p - counts / n).clamp_min(0.0)
                if float(left.sum()) <= 0:
                    left = p
                extra = torch.multinomial(left, n - comp.numel(), replacement=True, generator=generator) + 1
                comp = torch.cat([comp, extra])
            comp = comp[torch.randperm(comp.numel(), generator=generator, device=probs.device)][:n]
            out.append(comp)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=probs.device)

    @torch.no_grad()
    def langevin_dynamics(self, z: torch.Tensor, n_step_each: int, step_lr: float, min_sigma: float = 0.0,
                          gt_num_atoms: torch.Tensor | None = None, gt_atom_types: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, type_mask: torch.Tensor | None = None
                          ) -> dict[str, torch.Tensor]:
        """Annealed Langevin dynamics from z (CD-VAE's ``langevin_dynamics``).

        Args:
            z: latents. n_step_each, step_lr, min_sigma: sampler settings (MODELS.md 4.4).
            gt_num_atoms: force the number of atoms per crystal.
            gt_atom_types: force the atom types (atomic numbers; needs ``gt_num_atoms``).
            generator: the random stream.
            type_mask: boolean (100,) of the atomic numbers (index Z - 1) that may appear.

        Returns:
            ``num_atoms`` (B,), ``lengths`` (B, 3), ``angles`` (B, 3), ``frac_coords`` (N, 3),
            ``atom_types`` (N,).
        """
        device = z.device
        num_atoms, _, lengths, angles, composition = self.decode_stats(z, gt_num_atoms)
        if gt_num_atoms is not None:
            num_atoms = gt_num_atoms
        if type_mask is not None:
            composition = composition.masked_fill(~type_mask.to(device), float("-inf"))
        if gt_atom_types is None:
            types = self.sample_composition(F.softmax(composition, dim=-1), num_atoms, generator)
        else:
            types = gt_atom_types
        lattice = lattice_params_to_matrix(lengths, angles)
        lattice_atoms = lattice.repeat_interleave(num_atoms, dim=0)
        inverse_atoms = torch.linalg.pinv(lattice).repeat_interleave(num_atoms, dim=0)
        frac = torch.rand((int(num_atoms.sum()), 3), generator=generator, device=device)
        sigma_last = float(self.sigmas[-1])
        for sigma in self.sigmas.tolist():
            if sigma < min_sigma:
                break
            step = step_lr * (sigma / sigma_last) ** 2
            for _ in range(n_step_each):
                noise = torch.randn(frac.shape, generator=generator, device=device) * math.sqrt(2 * step)
                diff, type_logits = self.decoder(z, frac, types, num_atoms, lattice)
                cart = torch.einsum("ni,nij->nj", frac, lattice_atoms) + step * diff / sigma + noise
                frac = torch.einsum("ni,nij->nj", cart, inverse_atoms) % 1.0
                if gt_atom_types is None:
                    if type_mask is not None:
                        type_logits = type_logits.masked_fill(~type_mask.to(device), float("-inf"))
                    types = type_logits.argmax(dim=1) + 1
        return {"num_atoms": num_atoms, "lengths": lengths, "angles": angles, "frac_coords": frac,
                "atom_types": types}

    def optimize_latent(self, z0: torch.Tensor, steps: int, lr: float, n_saved: int = 1) -> list[torch.Tensor]:
        """CD-VAE's ``opt``: Adam on z minimising the mean standardised property head.

        Returns the latents at ``n_saved`` points of the run (every ``steps // (n_saved - 1)`` steps
        and the last), CD-VAE's saving rule; with ``n_saved = 1`` only the last.
        """
        if self.fc_property is None:
            raise RuntimeError("this CD-VAE has no property head (trained without a property column)")
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        saved = []
        interval = steps // (n_saved - 1) if n_saved > 1 else None
        requires = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            for step in range(steps):
                opt.zero_grad()
                loss = self.fc_property(z).mean()
                loss.backward()
                opt.step()
                if (interval and step % interval == 0) or step == steps - 1:
                    saved.append(z.detach().clone())
        finally:
            for p, r in zip(self.parameters(), requires, strict=True):
                p.requires_grad_(r)
        return saved
