"""`CDVAEModel`: a trained CD-VAE with structure-level methods (encode, decode, reconstruct,
generate, optimise), returning pymatgen Structures.

Every sampling method takes a ``numpy.random.Generator`` (the only source of randomness; a torch
generator is seeded from it) and optional Langevin settings overriding the preset's
(``n_step_each``, ``step_lr``, ``min_sigma``, ``batch_size``). Crystals are sampled in batches of
``langevin.batch_size``. A decoded crystal whose lattice cannot be built is None.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discovery.errors import ConfigError, DataError
from discovery.models.cdvae.decoder import MAX_ATOMIC_NUM
from discovery.models.cdvae.model import CDVAE
from discovery.models.cdvae.presets import CDVAEConfig, LangevinConfig

logger = logging.getLogger(__name__)


def species_numbers(species: Sequence[str | int] | None, where: str = "species") -> list[int] | None:
    """Atomic numbers of element symbols (or numbers); None passes through.

    Raises:
        ConfigError: an unknown symbol or a number outside 1..100.
    """
    if species is None:
        return None
    from pymatgen.core.periodic_table import Element

    out = []
    for s in species:
        try:
            z = int(s) if isinstance(s, int | np.integer) else Element(str(s)).Z
        except ValueError:
            raise ConfigError(f"{where}: unknown element {s!r}") from None
        if not 1 <= z <= MAX_ATOMIC_NUM:
            raise ConfigError(f"{where}: atomic number {z} outside 1..{MAX_ATOMIC_NUM}")
        out.append(z)
    return out


def composition_atoms(composition: Any, max_atoms: int) -> list[int]:
    """The atomic numbers of one cell of ``composition`` (a formula such as ``"SrTiO3"``, a pymatgen
    Composition or an element -> count mapping), in the amounts given.

    Raises:
        ConfigError: unknown elements, non-integer amounts, or more than ``max_atoms`` atoms.
    """
    from pymatgen.core import Composition

    try:
        comp = Composition(composition) if not isinstance(composition, Composition) else composition
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"composition {composition!r}: not a formula ({exc})") from None
    atoms: list[int] = []
    for el, amount in comp.element_composition.items():
        if abs(amount - round(amount)) > 1e-6 or round(amount) < 1:
            raise ConfigError(f"composition {composition!r}: amount {amount} of {el} is not a whole number of atoms")
        atoms += [el.Z] * round(amount)
    if not atoms or len(atoms) > max_atoms:
        raise ConfigError(f"composition {composition!r}: {len(atoms)} atoms per cell, the model makes 1..{max_atoms}")
    if max(atoms) > MAX_ATOMIC_NUM:
        raise ConfigError(f"composition {composition!r}: elements beyond Z = {MAX_ATOMIC_NUM}")
    return atoms


class CDVAEModel:
    """A trained CD-VAE (`discovery.models.cdvae.trainer.TRAINER.load` builds it).

    Attributes:
        module: the `CDVAE` torch module (eval mode).
        config: its training `CDVAEConfig`.
        manifest: the model folder's manifest.
        property: the property column of the property head (None: no head).
        version: first 12 hex digits of the manifest's sha256.
    """

    def __init__(self, module: CDVAE, config: CDVAEConfig, manifest: dict[str, Any], folder: Path | None,
                 device: str = "cpu"):
        self.module = module.to(device).eval()
        self.config = config
        self.manifest = manifest
        self.folder = folder
        self.device = device
        self.property = manifest.get("property")
        self.version = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
        self._graph_cache = None

    @property
    def max_atoms(self) -> int:
        return self.module.max_atoms

    @property
    def latent_dim(self) -> int:
        return self.module.latent_dim

    # ------------------------------------------------------------------ helpers

    def _langevin(self, overrides: Mapping[str, Any] | LangevinConfig | None) -> LangevinConfig:
        if overrides is None:
            return self.config.langevin
        if isinstance(overrides, LangevinConfig):
            return overrides
        return LangevinConfig.model_validate({**self.config.langevin.model_dump(), **dict(overrides)})

    def _torch_generator(self, rng: np.random.Generator | None) -> torch.Generator:
        rng = rng if rng is not None else np.random.default_rng()
        return torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))

    def _type_mask(self, allowed_species: Sequence[str | int] | None) -> torch.Tensor | None:
        numbers = species_numbers(allowed_species, "allowed_species")
        if not numbers:
            return None
        mask = torch.zeros(MAX_ATOMIC_NUM, dtype=torch.bool)
        mask[[z - 1 for z in numbers]] = True
        return mask

    def _batches(self, structures: Sequence[Any]) -> list[Any]:
        """torch_geometric batches of canonical cells with their CrystalNN graphs."""
        from torch_geometric.loader import DataLoader

        from discovery.models.cdvae.data import MAX_Z, to_graph_data
        from discovery.models.cdvae.graphs import CrystalNNCache, canonical_structure

        if self._graph_cache is None:
            self._graph_cache = CrystalNNCache(None)
        canonical = []
        for s in structures:
            if len(s) > self.max_atoms or max(s.atomic_numbers) > MAX_Z:
                raise DataError(f"{s.composition.reduced_formula}: {len(s)} atoms or elements beyond Z = {MAX_Z}; "
                                f"this model encodes up to {self.max_atoms} atoms")
            try:
                canonical.append(canonical_structure(s, niggli=self.config.niggli))
            except Exception:  # Niggli reduction fails on some degenerate (generated) cells
                canonical.append(canonical_structure(s, niggli=False))
        data = to_graph_data(canonical, None, self._graph_cache)
        return list(DataLoader(data, batch_size=self.config.val_batch_size, shuffle=False))

    # ------------------------------------------------------------------ latent space

    def read_graph_cache(self, path: str | Path) -> None:
        """Take CrystalNN graphs from a cache file (e.g. this model's ``cache/crystalnn.npz`` of its
        training crystals) instead of recomputing them; nothing is written to it."""
        from discovery.models.cdvae.graphs import CrystalNNCache

        if Path(path).is_file():
            self._graph_cache = CrystalNNCache(path)
            self._graph_cache.path = None  # read from, never written back

    def encode(self, structures: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and log-variance of each structure. Shapes: (n, latent) each."""
        mus, logvars = [], []
        with torch.no_grad():
            for batch in self._batches(structures):
                mu, log_var, _ = self.module.encode(batch.to(self.device), sample=False)
                mus.append(mu.cpu().numpy())
                logvars.append(log_var.cpu().numpy())
        if not mus:
            return np.zeros((0, self.latent_dim), np.float32), np.zeros((0, self.latent_dim), np.float32)
        return np.concatenate(mus), np.concatenate(logvars)

    def predict_property(self, z: np.ndarray) -> np.ndarray:
        """The property head at latents ``z`` (un-standardised). Shapes: (n, latent) -> (n,)."""
        with torch.no_grad():
            zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=self.device)
            return self.module.predict_property(zt).cpu().numpy()

    def decode(self, z: np.ndarray, rng: np.random.Generator | None = None,
               num_atoms: Sequence[int] | None = None, atom_types: Sequence[Sequence[int]] | None = None,
               allowed_species: Sequence[str | int] | None = None,
               langevin: Mapping[str, Any] | LangevinConfig | None = None) -> list[Any]:
        """Crystals from latents by annealed Langevin dynamics.

        Args:
            z: latents. Shapes: (n, latent).
            rng: random stream.
            num_atoms: force the number of atoms of each crystal (CD-VAE's ``gt_num_atoms``).
            atom_types: force the atomic numbers of each crystal (``gt_atom_types``; implies
                ``num_atoms``).
            allowed_species: only these elements may appear (masks the type logits).
            langevin: sampler settings overriding the preset's.

        Returns:
            One pymatgen Structure (or None) per latent.
        """
        from discovery.models.cdvae.data import to_structures

        settings = self._langevin(langevin)
        gen = self._torch_generator(rng)
        mask = self._type_mask(allowed_species)
        z = np.asarray(z, dtype=np.float32).reshape(-1, self.latent_dim)
        if atom_types is not None:
            atom_types = [list(t) for t in atom_types]
            num_atoms = [len(t) for t in atom_types]
        out: list[Any] = []
        for a in range(0, len(z), settings.batch_size):
            b = min(a + settings.batch_size, len(z))
            zt = torch.as_tensor(z[a:b], device=self.device)
            gt_n = torch.as_tensor(list(num_atoms[a:b]), device=self.device) if num_atoms is not None else None
            gt_t = (torch.as_tensor([t for row in atom_types[a:b] for t in row], device=self.device)
                    if atom_types is not None else None)
            outputs = self.module.langevin_dynamics(zt, settings.n_step_each, settings.step_lr, settings.min_sigma,
                                                    gt_num_atoms=gt_n, gt_atom_types=gt_t, generator=gen,
                                                    type_mask=mask)
            out += to_structures(outputs)
        return out

    def generate(self, n: int, rng: np.random.Generator, num_atoms: int | None = None, composition: Any = None,
                 allowed_species: Sequence[str | int] | None = None,
                 langevin: Mapping[str, Any] | LangevinConfig | None = None) -> list[Any]:
        """``n`` crystals from z ~ N(0, I) (CD-VAE's ``gen``); with ``composition`` every crystal has
        exactly those atoms, with ``num_atoms`` that many."""
        z = rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        return self.decode_around(z, rng, num_atoms, composition, allowed_species, langevin)

    def decode_around(self, z: np.ndarray, rng: np.random.Generator, num_atoms: int | None = None,
                      composition: Any = None, allowed_species: Sequence[str | int] | None = None,
                      langevin: Mapping[str, Any] | LangevinConfig | None = None) -> list[Any]:
        """`decode` with one forced composition or atom count for every latent."""
        n = len(z)
        if composition is not None:
            atoms = composition_atoms(composition, self.max_atoms)
            return self.decode(z, rng, atom_types=[atoms] * n, langevin=langevin)
        counts = None
        if num_atoms is not None:
            if not 1 <= int(num_atoms) <= self.max_atoms:
                raise ConfigError(f"num_atoms {num_atoms}: the model makes 1..{self.max_atoms} atoms per cell")
            counts = [int(num_atoms)] * n
        return self.decode(z, rng, num_atoms=counts, allowed_species=allowed_species, langevin=langevin)

    def reconstruct(self, structures: Sequence[Any], rng: np.random.Generator | None = None, from_mean: bool = True,
                    force_num_atoms: bool = False, force_atom_types: bool = False,
                    langevin: Mapping[str, Any] | LangevinConfig | None = None) -> list[Any]:
        """Encode and decode (CD-VAE's ``recon``). ``from_mean``: decode mu; otherwise z drawn from
        the posterior, as CD-VAE's ``scripts/evaluate.py`` does. Forcing the atom count or types
        gives CD-VAE's ``--force_num_atoms`` / ``--force_atom_types`` modes."""
        rng = rng if rng is not None else np.random.default_rng()
        mu, log_var = self.encode(structures)
        z = mu if from_mean else mu + np.exp(0.5 * log_var) * rng.standard_normal(mu.shape).astype(np.float32)
        num_atoms = [len(s) for s in structures] if (force_num_atoms or force_atom_types) else None
        types = [list(s.atomic_numbers) for s in structures] if force_atom_types else None
        return self.decode(z, rng, num_atoms=num_atoms, atom_types=types, langevin=langevin)

    def optimize(self, structures: Sequence[Any], steps: int = 5000, lr: float = 1e-3,
                 rng: np.random.Generator | None = None, n_saved: int = 1,
                 allowed_species: Sequence[str | int] | None = None,
                 langevin: Mapping[str, Any] | LangevinConfig | None = None) -> list[list[Any]]:
        """CD-VAE's ``opt``: from the encodings (mu) of ``structures``, ``steps`` Adam steps on z
        minimising the property head, decoding at ``n_saved`` points of the run.

        Returns:
            ``n_saved`` lists (in run order) of one crystal per start.

        Raises:
            ConfigError: the model has no property head.
        """
        if self.module.fc_property is None:
            raise ConfigError("this CD-VAE was trained without a property column; it cannot optimise")
        mu, _ = self.encode(structures)
        saved = self.module.optimize_latent(torch.as_tensor(mu, device=self.device), steps, lr, n_saved)
        return [self.decode(z.cpu().numpy(), rng, allowed_species=allowed_species, langevin=langevin) for z in saved]

    def optimize_latent(self, z0: np.ndarray, steps: int, lr: float) -> np.ndarray:
        """Latents after ``steps`` Adam steps minimising the property head from ``z0``."""
        if self.module.fc_property is None:
            raise ConfigError("this CD-VAE was trained without a property column; it cannot optimise")
        out = self.module.optimize_latent(torch.as_tensor(np.asarray(z0, np.float32), device=self.device), steps, lr)
        return out[-1].cpu().numpy()
