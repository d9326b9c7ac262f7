"""`LCOMSurrogate`: formation energy of candidates through their CD-VAE latents.

- ``predict`` / ``predict_members``: every LCOM member at the candidate's standardised latent and
  composition vector; the mean is the prediction, the members' population std the uncertainty.
  A candidate the CD-VAE cannot encode (more atoms than it makes, elements beyond Z = 94) gets the
  training mean and ``unencodable_std``: the members report the mean plus offsets of zero mean
  and exactly that population std. An ensemble of one has no spread, so it is refused.
- ``embed``: the standardised latent itself (for batch diversity).
- ``fit(candidates, targets)``: the members continue their conservative training from the trained
  weights for ``fine_tune_steps`` steps on the labels plus ``replay`` training rows
  (`LCOMModel.fine_tuned`), so the latent model changes where DFT disagrees with it. Every fit
  starts from the trained weights with a stream spawned from the campaign seed, so refitting the
  same labels gives the same members. The report's ``train_mae`` is on the labels after the fit;
  there is no validation split (``val_mae`` None), so no variance recalibration (scale 1).
- ``save`` / ``load``: the fine-tuned members (a checkpoint per fit, as the campaign asks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from discovery.errors import ConfigError, DataError
from discovery.records import Candidate, FitReport, Prediction

if TYPE_CHECKING:  # kind.py imports this module (lazily, in build); no import back
    from discovery.surrogates.lcom.kind import LCOMSurrogateConfig

logger = logging.getLogger(__name__)

MODEL_NAME = "lcom"
CHECKPOINT_FORMAT = "discovery.lcom_surrogate"
CHECKPOINT_VERSION = 1


class LCOMSurrogate:
    """`~discovery.protocols.Surrogate` backed by an `LCOMModel` (units: eV/atom)."""

    model_name = MODEL_NAME

    def __init__(self, config: LCOMSurrogateConfig, seed: Any = 0):
        from discovery.models.lcom.trainer import TRAINER

        self.config = config
        self.property = config.property
        self.base_model = TRAINER.load(config.checkpoint_dir, config.device)
        if config.preset is not None and self.base_model.config.preset != config.preset:
            raise ConfigError(f"surrogate: lcom {config.checkpoint_dir} holds a {self.base_model.config.preset!r} "
                              f"model, the campaign asks for {config.preset!r}")
        if len(self.base_model.members) < 2:
            raise ConfigError(f"surrogate: lcom {config.checkpoint_dir} has one member, so no uncertainty; train it "
                              f"with ensemble_size >= 2 (the cpu preset has 3)")
        self.model = self.base_model
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
        self._seed = int(seq.generate_state(1)[0])
        self._z: dict[tuple[str, int], np.ndarray | None] = {}
        self._fits = 0

    @property
    def is_fitted(self) -> bool:
        return True  # the trained model predicts before any DFT label

    # ------------------------------------------------------------------ features

    def _features(self, cands: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Standardised latents (zeros where unencodable), composition vectors and an encodable mask."""
        keys = [(c.id, c.n_atoms) for c in cands]  # a supercell shares its primitive cell's id
        todo = {}
        for c, key in zip(cands, keys, strict=True):
            if key not in self._z and key not in todo:
                todo[key] = c
        fits = [(k, c) for k, c in todo.items() if c.n_atoms <= self.model.max_atoms]
        self._z.update({k: None for k, c in todo.items() if c.n_atoms > self.model.max_atoms})
        try:  # one batch; when one crystal spoils it, each on its own
            if fits:
                self._z.update(zip([k for k, _ in fits], self.model.encode([c.pmg for _, c in fits]),
                                   strict=True))
        except (DataError, ConfigError, ValueError):
            for key, c in fits:
                try:
                    self._z[key] = self.model.encode([c.pmg])[0]
                except (DataError, ConfigError, ValueError) as exc:
                    logger.info("lcom surrogate: %s cannot be encoded (%s)", c.id, exc)
                    self._z[key] = None
        ok = np.array([self._z[k] is not None for k in keys], dtype=bool)
        z = np.stack([self._z[k] if self._z[k] is not None else np.zeros(self.model.latent_dim, np.float32)
                      for k in keys]) if cands else np.zeros((0, self.model.latent_dim), np.float32)
        comp = self.model.conditions([c.formula for c in cands])
        return z, comp, ok

    # ------------------------------------------------------------------ surrogate protocol

    def predict_members(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Every member's formation energy. Units: eV/atom. Shapes: (members, n)."""
        cands = list(candidates)
        m = len(self.model.members)
        if not cands:
            return np.zeros((m, 0))
        z, comp, ok = self._features(cands)
        out = self.model.predict_members(z, comp)
        if not ok.all():
            offsets = np.arange(m) - (m - 1) / 2.0
            offsets = offsets / offsets.std()  # zero mean, population std 1 (m >= 2)
            out[:, ~ok] = self.model.y_mean + offsets[:, None] * self.config.unencodable_std
        return out

    def predict(self, candidates: Sequence[Candidate]) -> list[Prediction]:
        """Ensemble mean and std per candidate. Units: eV/atom."""
        cands = list(candidates)
        members = self.predict_members(cands)
        mean, std = members.mean(axis=0), members.std(axis=0)
        return [Prediction(candidate_id=c.id, property=self.property, mean=float(mu), std=float(sd), model=MODEL_NAME)
                for c, mu, sd in zip(cands, mean, std, strict=True)]

    def embed(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """The standardised CD-VAE latent (zeros where unencodable). Shapes: (n, latent_dim)."""
        z, _, _ = self._features(list(candidates))
        return z

    def fit(self, candidates: Sequence[Candidate], targets: Sequence[float]) -> FitReport:
        """Fine-tune the members on DFT labels (see the module docstring).

        Raises:
            ValueError: lengths differ or a target is not finite.
        """
        start = time.perf_counter()
        cands = list(candidates)
        y = np.asarray(list(targets), dtype=np.float64)
        if len(cands) != len(y):
            raise ValueError(f"fit: {len(cands)} candidates but {len(y)} targets")
        if not np.all(np.isfinite(y)):
            raise ValueError("fit: targets must be finite numbers")
        z, comp, ok = self._features(cands)
        self._fits += 1
        if ok.any() and self.config.fine_tune_steps:
            self.model = self.base_model.fine_tuned(z[ok], comp[ok], y[ok], self.config.fine_tune_steps,
                                                    self._seed, replay=self.config.replay, lr=self.config.fine_tune_lr)
        mae = float(np.mean(np.abs(self.model.predict(z[ok], comp[ok])[0] - y[ok]))) if ok.any() else None
        return FitReport(n_train=int(ok.sum()), n_val=0, val_mae=None, train_mae=mae,
                         epochs=(self.config.fine_tune_steps,), wall_s=time.perf_counter() - start)

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | Path) -> Path:
        """The fine-tuned members (atomically)."""
        from discovery.models.checkpoints import write_checkpoint

        return write_checkpoint(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                       "config": self.config.model_dump(mode="json"),
                                       "base_version": self.base_model.version, **self.model.state()})

    def load(self, path: str | Path) -> None:
        """Members saved by `save` for the same base model.

        Raises:
            DataError: another file, or members of another base model.
        """
        from discovery.models.checkpoints import first_line, read_checkpoint

        payload = read_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
        if payload.get("base_version") != self.base_model.version:
            raise DataError(f"{path}: fine-tuned from LCOM {payload.get('base_version')}, this surrogate loads "
                            f"{self.base_model.version}")
        try:
            self.model = self.base_model.with_state(payload)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DataError(f"{path}: members do not fit the model ({first_line(exc)})") from None
