"""An ensemble of CGCNN regressors: mean and spread of the members are the prediction and its std.

Every `fit` trains all members from scratch on the labels it is given (the driver passes all labels of
the surrogate's fidelity each round). A fixed validation split is held out when there are at least
five labels; each member trains on a bootstrap resample of the rest, stops early on its own
validation MAE and keeps its best weights. Targets are standardised with the training part's mean
and std; predictions are de-normalised.

Recalibration (``recalibrate``, on by default): the spread of a few networks is a good ranking of
uncertainty but rarely the right size. After a fit with a validation split, the factor ``s`` that
makes the validation errors most likely under ``N(mean, (s * std)^2)`` is fitted
(`discovery.surrogates.calibration.fit_variance_scale`) and every predicted std is multiplied by it.
No member trained on the validation split (bootstraps draw from the training part only); early
stopping did look at it, so the scale is, if anything, a little optimistic. Without a split, or with
a single member (no spread to scale), the scale is 1. It is saved with the checkpoint.

Randomness: the seed is spawned once, at construction, into one split stream and, per member, one
torch seed and one data stream. A fit therefore depends only on (seed, labels): refitting the same
labels, or resuming a campaign, gives the same members on CPU. Model initialisation runs under
`torch.random.fork_rng`, so the global torch RNG is left as it was.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from discovery.kinds import BuildContext
from discovery.surrogates.cgcnn_config import CGCNNEnsembleConfig
from discovery.errors import ConfigError, DataError, NotFittedError
from discovery.featurize.graphs import ATOM_FEATURE_DIM, edge_feature_dim, structure_to_graph
from discovery.models.cgcnn import CGCNN
from discovery.models.checkpoints import check_config, first_line, read_checkpoint, write_checkpoint
from discovery.records import Candidate, FitReport, Prediction
from discovery.surrogates.calibration import (
    coverage,
    fit_variance_scale,
    predictions_from_members,
    rescale_members,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "cgcnn-ensemble"
CHECKPOINT_FORMAT = "discovery.cgcnn_ensemble"
CHECKPOINT_VERSION = 2  # 2: adds variance_scale and calibration
#: Config keys that do not change what a checkpoint predicts (ignored when loading).
RUNTIME_KEYS = frozenset({"device"})
#: Fewest labels for which a validation split is held out.
MIN_LABELS_FOR_VAL = 5
#: Crystals per forward pass when predicting or embedding.
PREDICT_BATCH_SIZE = 256


class CGCNNEnsembleSurrogate:
    """`Surrogate` made of ``config.ensemble_size`` independently trained CGCNN models.

    Args:
        config: sizes, training schedule and graph settings.
        seed: campaign seed (or a spawned `numpy.random.SeedSequence`) for splits, bootstraps,
            shuffles and weight initialisation.
        checkpoint_dir: when given, every fit saves the ensemble to
            ``checkpoint_dir / "cgcnn_ensemble_<property>.pt"`` (replaced atomically).

    Attributes:
        property: the predicted property (``config.property``).
        config: the configuration it was built with.
        last_calibration: after a recalibrated fit (or a `load` of one), ``{"before": coverage,
            "after": coverage, "variance_scale": s}`` on the validation split, where ``coverage`` is
            the dict of `discovery.surrogates.calibration.coverage` for the raw and the scaled std;
            else None.

    Units: targets, predictions and errors in eV/atom.
    """

    model_name = MODEL_NAME

    def __init__(self, config: CGCNNEnsembleConfig, seed: int | np.random.SeedSequence,
                 checkpoint_dir: Path | None = None):
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("surrogate.device: 'cuda' was requested but torch sees no CUDA device")
        self.config = config
        self.property: str = config.property
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._device = torch.device(config.device)
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        split_seq, *member_seqs = seq.spawn(config.ensemble_size + 1)
        self._split_seq = split_seq
        self._member_seeds: list[tuple[int, np.random.SeedSequence]] = []
        for member_seq in member_seqs:
            init_seq, data_seq = member_seq.spawn(2)
            self._member_seeds.append((int(init_seq.generate_state(1, np.uint64)[0] >> 1), data_seq))
        self._edge_dim = edge_feature_dim(config.cutoff_a)
        self._graphs: dict[str, Data] = {}
        self._members: list[CGCNN] = []
        self._target_mean = 0.0
        self._target_std = 1.0
        self._variance_scale = 1.0
        self.last_calibration: dict[str, Any] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def is_fitted(self) -> bool:
        """Whether the ensemble has weights (from `fit` or `load`)."""
        return bool(self._members)

    @property
    def variance_scale(self) -> float:
        """Factor applied to the member spread (1.0 before a recalibrated fit)."""
        return self._variance_scale

    def fit(self, candidates: Sequence[Candidate], targets: Sequence[float]) -> FitReport:
        """Train every member from scratch on ``candidates`` and their ``targets``.

        Args:
            candidates: labelled crystals (at least two).
            targets: their property values. Units: eV/atom.

        Returns:
            A `FitReport`: split sizes, ensemble-mean MAE on the validation split (``None`` without
            one) and on the training part, epochs run per member, wall time, checkpoint path.

        Raises:
            ValueError: lengths differ, fewer than two labels, or a target is not finite.
            DataError: a structure cannot be turned into a graph.
        """
        start = time.perf_counter()
        cands = list(candidates)
        y = np.asarray(list(targets), dtype=np.float64)
        if len(cands) != len(y):
            raise ValueError(f"fit: {len(cands)} candidates but {len(y)} targets")
        if len(cands) < 2:
            raise ValueError(f"fit: need at least 2 labelled candidates, got {len(cands)}")
        if not np.all(np.isfinite(y)):
            raise ValueError("fit: targets must be finite numbers")
        cfg = self.config
        graphs = self._graphs_for(cands)
        train_idx, val_idx = self._split(len(cands))

        mean = float(y[train_idx].mean())
        std = float(y[train_idx].std())
        if not std > 1e-8:
            std = 1.0
        y_norm = torch.tensor((y - mean) / std, dtype=torch.float32)
        val_batches = self._collate_chunks(graphs, val_idx)

        members: list[CGCNN] = []
        epochs: list[int] = []
        for k, (init_seed, data_seq) in enumerate(self._member_seeds):
            model, n_epochs, best = self._train_member(init_seed, data_seq, graphs, y_norm, std,
                                                       train_idx, val_batches, val_idx)
            members.append(model)
            epochs.append(n_epochs)
            logger.info("%s %s member %d/%d: %d epochs, best val MAE %s", MODEL_NAME, self.property,
                        k + 1, cfg.ensemble_size, n_epochs,
                        "n/a" if best is None else f"{best:.4f} eV/atom")

        self._members = members
        self._target_mean, self._target_std = mean, std
        self._variance_scale, self.last_calibration = 1.0, None
        train_mae = self._ensemble_mae(graphs, train_idx, y)
        val_mae = self._ensemble_mae(graphs, val_idx, y) if len(val_idx) else None
        if cfg.recalibrate and len(val_idx) and len(members) > 1:
            self._recalibrate(graphs, val_idx, y)
        checkpoint = None
        if self.checkpoint_dir is not None:
            checkpoint = str(self.save(self.checkpoint_dir / f"cgcnn_ensemble_{self.property}.pt"))
        report = FitReport(n_train=len(train_idx), n_val=len(val_idx), val_mae=val_mae,
                           train_mae=train_mae, epochs=tuple(epochs),
                           wall_s=time.perf_counter() - start, checkpoint=checkpoint,
                           variance_scale=self._variance_scale)
        logger.info("%s %s fit: n_train=%d n_val=%d train MAE %.4f val MAE %s eV/atom (%.1f s)",
                    MODEL_NAME, self.property, report.n_train, report.n_val, train_mae,
                    "n/a" if val_mae is None else f"{val_mae:.4f}", report.wall_s)
        return report

    def predict(self, candidates: Sequence[Candidate]) -> list[Prediction]:
        """Ensemble mean and std (population std over members, times `variance_scale`).

        Units: eV/atom. An ensemble of one member reports std 0.

        Raises:
            NotFittedError: before `fit` or `load`.
        """
        cands = list(candidates)
        self._require_fitted("predict")
        if not cands:
            return []
        return predictions_from_members(cands, self.predict_members(cands), self.property, MODEL_NAME)

    def predict_members(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Every member's prediction, spread around the ensemble mean by `variance_scale`.

        Their mean is the `predict` mean and their population std the `predict` std, so a draw of
        one member per candidate is a calibrated posterior sample (Thompson sampling).

        Units: eV/atom. Shapes: (ensemble_size, n).

        Raises:
            NotFittedError: before `fit` or `load`.
        """
        cands = list(candidates)
        self._require_fitted("predict_members")
        if not cands:
            return np.zeros((len(self._members), 0))
        per_member = self._member_outputs(cands, embed=False).astype(np.float64)
        return rescale_members(per_member * self._target_std + self._target_mean, self._variance_scale)

    def embed(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Member-averaged pooled crystal features (after ``conv_to_fc``).

        Shapes: (n, h_fea_len).

        Raises:
            NotFittedError: before `fit` or `load`.
        """
        cands = list(candidates)
        self._require_fitted("embed")
        if not cands:
            return np.zeros((0, self.config.h_fea_len), dtype=np.float32)
        return self._member_outputs(cands, embed=True).mean(axis=0)

    def save(self, path: str | Path) -> Path:
        """Write config, normalisation and member weights to one ``torch.save`` file.

        The file is written next to ``path`` and moved into place, so a crash never leaves a half
        checkpoint under the final name.

        Raises:
            NotFittedError: nothing to save yet.
        """
        self._require_fitted("save")
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.model_dump(mode="json"),
            "target_mean": self._target_mean,
            "target_std": self._target_std,
            "variance_scale": self._variance_scale,
            "calibration": self.last_calibration,
            "atom_fea_dim": ATOM_FEATURE_DIM,
            "edge_fea_dim": self._edge_dim,
            "members": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self._members],
        }
        return write_checkpoint(path, payload)

    def load(self, path: str | Path) -> None:
        """Replace the ensemble with the one saved at ``path``.

        Raises:
            DataError: the file is missing, unreadable, not a CGCNN ensemble checkpoint, or was
                written with a different configuration (``device`` aside); one line naming the file.
        """
        path = Path(path)
        payload = read_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
        check_config(path, payload["config"], self.config.model_dump(mode="json"), ignore=RUNTIME_KEYS)
        states = payload.get("members")
        if not isinstance(states, list) or len(states) != self.config.ensemble_size:
            raise DataError(f"{path}: expected {self.config.ensemble_size} member state dicts")
        try:
            mean = float(payload["target_mean"])
            std = float(payload["target_std"])
            scale = float(payload["variance_scale"])
            calibration = payload.get("calibration")
            members = []
            for state in states:
                model = self._new_model()
                model.load_state_dict(state, strict=True)
                model.eval()
                members.append(model)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{path}: damaged member weights or normalisation ({first_line(exc)})") from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DataError(f"{path}: invalid target normalisation (mean {mean}, std {std})")
        if not (math.isfinite(scale) and scale > 0):
            raise DataError(f"{path}: invalid variance scale {scale}")
        if calibration is not None and not isinstance(calibration, dict):
            raise DataError(f"{path}: calibration is a {type(calibration).__name__}, expected a mapping")
        self._members = members
        self._target_mean, self._target_std = mean, std
        self._variance_scale, self.last_calibration = scale, calibration

    # ------------------------------------------------------------------ internals

    def _require_fitted(self, what: str) -> None:
        if not self._members:
            raise NotFittedError(f"{MODEL_NAME} ({self.property}): {what} called before fit() or load()")

    def _new_model(self) -> CGCNN:
        cfg = self.config
        return CGCNN(ATOM_FEATURE_DIM, self._edge_dim, atom_fea_len=cfg.atom_fea_len, n_conv=cfg.n_conv,
                     h_fea_len=cfg.h_fea_len, n_h=cfg.n_h).to(self._device)

    def _graphs_for(self, cands: Sequence[Candidate]) -> list[Data]:
        """Graphs of ``cands``, built once per candidate id and cached."""
        out = []
        for c in cands:
            graph = self._graphs.get(c.id)
            if graph is None:
                try:
                    graph = structure_to_graph(c.pmg, self.config.cutoff_a, self.config.max_neighbors)
                except DataError as exc:
                    raise DataError(f"candidate {c.id} ({c.formula}): {exc}") from exc
                self._graphs[c.id] = graph
            out.append(graph)
        return out

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Fixed (train, validation) index split; no validation below `MIN_LABELS_FOR_VAL` labels."""
        frac = self.config.val_fraction
        if n < MIN_LABELS_FOR_VAL or frac <= 0:
            return np.arange(n), np.arange(0)
        n_val = min(max(1, int(round(frac * n))), n - 2)
        perm = np.random.default_rng(self._split_seq).permutation(n)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    def _chunks(self, graphs: Sequence[Data], order: np.ndarray, size: int) -> list[np.ndarray]:
        """Split ``order`` into batches; a last batch of a single atom joins the previous one
        (batch norm needs two values per channel in training)."""
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        if len(chunks) > 1 and sum(graphs[i].num_nodes for i in chunks[-1]) < 2:
            last = chunks.pop()
            chunks[-1] = np.concatenate([chunks[-1], last])
        return chunks

    def _collate_chunks(self, graphs: Sequence[Data], idx: np.ndarray) -> list[Batch]:
        return [Batch.from_data_list([graphs[i] for i in chunk]).to(self._device)
                for chunk in self._chunks(graphs, idx, PREDICT_BATCH_SIZE)]

    @torch.inference_mode()
    def _outputs(self, model: CGCNN, batches: Sequence[Batch], embed: bool) -> np.ndarray:
        model.eval()
        fn = model.embed if embed else model
        parts = [fn(b).float().cpu().numpy() for b in batches]
        return np.concatenate(parts, axis=0)

    def _member_outputs(self, cands: Sequence[Candidate], embed: bool) -> np.ndarray:
        graphs = self._graphs_for(cands)
        batches = self._collate_chunks(graphs, np.arange(len(graphs)))
        return np.stack([self._outputs(m, batches, embed) for m in self._members])

    def _recalibrate(self, graphs: Sequence[Data], val_idx: np.ndarray, y: np.ndarray) -> None:
        """Fit and store the variance scale on the validation split (no member trained on it)."""
        batches = self._collate_chunks(graphs, val_idx)
        per_member = np.stack([self._outputs(m, batches, False) for m in self._members]).astype(np.float64)
        mean = per_member.mean(axis=0) * self._target_std + self._target_mean
        std = per_member.std(axis=0) * self._target_std
        scale = fit_variance_scale(y[val_idx], mean, std)
        self._variance_scale = scale
        self.last_calibration = {"before": coverage(y[val_idx], mean, std),
                                 "after": coverage(y[val_idx], mean, scale * std),
                                 "variance_scale": scale}
        logger.info("%s %s variance scale %.3g from %d validation labels (within 2 sigma %.2f -> %.2f)",
                    MODEL_NAME, self.property, scale, len(val_idx),
                    self.last_calibration["before"]["within_2sigma"],
                    self.last_calibration["after"]["within_2sigma"])

    def _ensemble_mae(self, graphs: Sequence[Data], idx: np.ndarray, y: np.ndarray) -> float:
        batches = self._collate_chunks(graphs, idx)
        pred = np.stack([self._outputs(m, batches, False) for m in self._members]).mean(axis=0)
        return float(np.mean(np.abs(pred * self._target_std + self._target_mean - y[idx])))

    def _train_member(self, init_seed: int, data_seq: np.random.SeedSequence, graphs: Sequence[Data],
                      y_norm: torch.Tensor, std: float, train_idx: np.ndarray,
                      val_batches: Sequence[Batch], val_idx: np.ndarray
                      ) -> tuple[CGCNN, int, float | None]:
        """Train one member; returns (model with its best weights, epochs run, best val MAE)."""
        cfg = self.config
        rng = np.random.default_rng(data_seq)
        idx = rng.choice(train_idx, size=len(train_idx), replace=True) if cfg.bootstrap else train_idx
        y_dev = y_norm.to(self._device)
        y_val = y_norm[val_idx].numpy()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = self._new_model()
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            best_mae: float | None = None
            best_state: dict[str, torch.Tensor] | None = None
            since_best = 0
            epoch = 0
            for epoch in range(1, cfg.max_epochs + 1):
                model.train()
                for chunk in self._chunks(graphs, rng.permutation(idx), cfg.batch_size):
                    batch = Batch.from_data_list([graphs[i] for i in chunk]).to(self._device)
                    loss = F.mse_loss(model(batch), y_dev[torch.from_numpy(chunk).to(self._device)])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                if not len(val_idx):
                    continue
                mae = float(np.mean(np.abs(self._outputs(model, val_batches, False) - y_val))) * std
                if best_mae is None or mae < best_mae:
                    best_mae, since_best = mae, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
                    if since_best >= cfg.patience:
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return model, epoch, best_mae


def build(config: CGCNNEnsembleConfig, context: BuildContext) -> CGCNNEnsembleSurrogate:
    return CGCNNEnsembleSurrogate(config, seed=context.seed, checkpoint_dir=context.workdir)
