"""ICSG3D property heads: small CGCNNs that predict properties of generated crystals (MODELS.md 1.4).

Each head is our `~discovery.models.cgcnn.CGCNN` with the ICSG3D sizes (``ICSG3DConfig.cgcnn``):
a dense embedding, ``n_conv`` graph convolutions (one in both presets), mean pooling and two dense
layers (``conv_to_fc`` with ``h_fea_len`` units, then the output unit; ``n_h = 1``). Graphs are the
CGCNN crystal graphs of `discovery.featurize.graphs` (12 nearest neighbours within ``cutoff_a``).

Training (`PropertyHeads.fit`), as in the paper:

1. The *primary* head is trained first from scratch: formation energy when the data have it
   (``formation_energy_per_atom``, else ``heat_ref``/``heat_all`` of the CDVAE perovskites, else
   ``energy_per_atom``), otherwise the first property given.
2. Every other property is trained by transfer learning: its network starts from the primary
   head's trained weights (all layers) and is fine-tuned on its own labels.

Each property uses the structures that have a finite label for it, a seeded train/validation split
(``val_fraction``), targets standardised with the training part's mean and std, MSE loss, Adam
(``lr``), ``epochs`` epochs of shuffled mini-batches, and keeps the weights of the epoch with the
lowest validation MAE (training MAE without a validation part). The per-property normalisation is
stored in the module's buffers, so a checkpoint is self-contained.

Prediction (`PropertyHeads.predict`) applies the paper's rule: where the predicted band gap is zero
(``<= 0``), the refractive index and the dielectric constant are undefined and become NaN (when
those properties are predicted at all). The gap is ``band_gap`` when predicted, otherwise the
smaller of ``dir_gap``/``ind_gap`` (CDVAE perovskites).

Checkpoints use the ICSG3D format (`discovery.models.checkpoints.save_module` / `load_module`, kind
``"heads"``): one ``torch.save`` file read back with ``weights_only=True``;
a missing, damaged or mismatched file is a one-line `DataError` naming it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from discovery.errors import DataError
from discovery.featurize.graphs import ATOM_FEATURE_DIM, edge_feature_dim, structure_to_graph
from discovery.models.cgcnn import CGCNN
from discovery.models.checkpoints import load_module, save_module
from discovery.models.icsg3d.presets import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, PropertyCGCNNConfig

logger = logging.getLogger(__name__)

#: Properties tried, in order, as the primary (formation-energy) head.
PRIMARY_PROPERTIES: tuple[str, ...] = ("formation_energy_per_atom", "heat_ref", "heat_all", "energy_per_atom")
#: Properties that are undefined for a metal (NaN where the predicted gap is <= 0).
GAP_DEPENDENT_PROPERTIES: tuple[str, ...] = ("refractive_index", "dielectric_constant")
#: Band-gap properties, in order of preference; the CDVAE pair counts as min(dir_gap, ind_gap).
GAP_PROPERTIES: tuple[str, ...] = ("band_gap", "dir_gap", "ind_gap")
#: Crystals per forward pass when predicting.
PREDICT_BATCH_SIZE = 256

#: ``progress(stage, done, total, metrics)``: called after every epoch of every head ("heads").
ProgressFn = Callable[[str, int, int, dict[str, float]], None]


def primary_property(properties: Sequence[str]) -> str:
    """The head trained first: formation energy when available (see `PRIMARY_PROPERTIES`).

    Example:
        >>> primary_property(["dir_gap", "heat_ref", "ind_gap"])
        'heat_ref'
        >>> primary_property(["band_gap"])
        'band_gap'
    """
    if not properties:
        raise ValueError("primary_property: no properties")
    for name in PRIMARY_PROPERTIES:
        if name in properties:
            return name
    return properties[0]


def apply_gap_rule(predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Set gap-dependent properties to NaN where the predicted gap is <= 0 (the paper's rule).

    Args:
        predictions: property -> predicted values (same length for every property).

    Returns:
        A new dict; unchanged when no gap or no gap-dependent property is present.

    Example:
        >>> out = apply_gap_rule({"band_gap": np.array([0.0, 1.2]), "refractive_index": np.array([2.0, 1.8])})
        >>> out["refractive_index"].tolist()
        [nan, 1.8]
    """
    out = {k: np.asarray(v, dtype=np.float64).copy() for k, v in predictions.items()}
    if "band_gap" in out:
        gap = out["band_gap"]
    else:
        gaps = [out[k] for k in ("dir_gap", "ind_gap") if k in out]
        if not gaps:
            return out
        gap = np.minimum.reduce(gaps) if len(gaps) > 1 else gaps[0]
    metal = ~(gap > 0)  # NaN gaps count as "no gap known": the dependent value is undefined too
    for name in GAP_DEPENDENT_PROPERTIES:
        if name in out:
            out[name][metal] = np.nan
    return out


class CGCNNHeadsModule(nn.Module):
    """One `CGCNN` per property plus the per-property target normalisation (as buffers).

    Args:
        properties: predicted properties, the primary one first.
        orig_atom_fea_len: input atom features (92).
        edge_fea_len: Gaussian distance features (41 for 8 A).
        atom_fea_len: hidden atom features.
        n_conv: graph convolutions.
        h_fea_len: dense layer after pooling.
        n_h: dense layers after pooling (1: ``conv_to_fc`` then the output, the paper's two layers).

    Shapes:
        `forward`: a graph batch of N crystals -> (N, n_properties), de-normalised.
    """

    def __init__(self, properties: Sequence[str], orig_atom_fea_len: int = ATOM_FEATURE_DIM,
                 edge_fea_len: int = 41, atom_fea_len: int = 64, n_conv: int = 1, h_fea_len: int = 128,
                 n_h: int = 1):
        super().__init__()
        properties = [str(p) for p in properties]
        if not properties or len(set(properties)) != len(properties):
            raise ValueError(f"CGCNNHeadsModule needs distinct properties, got {properties}")
        self.properties = properties
        self.nets = nn.ModuleList(
            CGCNN(orig_atom_fea_len, edge_fea_len, atom_fea_len=atom_fea_len, n_conv=n_conv,
                  h_fea_len=h_fea_len, n_h=n_h) for _ in properties)
        self.register_buffer("target_mean", torch.zeros(len(properties)))
        self.register_buffer("target_std", torch.ones(len(properties)))

    def index(self, prop: str) -> int:
        """Position of ``prop`` in `properties`."""
        return self.properties.index(prop)

    def forward_normalised(self, batch: Batch, k: int) -> Tensor:
        """Standardised prediction of property ``k``. Shapes: (N,)."""
        return self.nets[k](batch)

    def forward(self, batch: Batch) -> Tensor:
        outs = [net(batch) * self.target_std[k] + self.target_mean[k] for k, net in enumerate(self.nets)]
        return torch.stack(outs, dim=1)


def heads_architecture(config: PropertyCGCNNConfig, properties: Sequence[str]) -> dict[str, Any]:
    """`CGCNNHeadsModule` constructor arguments (also the identity stored in its checkpoint)."""
    return {"properties": [str(p) for p in properties], "orig_atom_fea_len": ATOM_FEATURE_DIM,
            "edge_fea_len": edge_feature_dim(config.cutoff_a), "atom_fea_len": config.atom_fea_len,
            "n_conv": config.n_conv, "h_fea_len": config.h_fea_len, "n_h": 1}


def _seed_int(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class PropertyHeads:
    """Trains, applies, saves and loads the ICSG3D property CGCNNs (see the module docstring).

    Args:
        config: sizes and schedule (``ICSG3DConfig.cgcnn``).
        properties: the properties to predict; the primary one (`primary_property`) is moved first.
        device: where the heads train and predict.

    Attributes:
        properties: predicted properties, primary first.
        primary: the formation-energy (or first) property, trained from scratch.
        module: the `CGCNNHeadsModule`.
        history: per property, one dict per epoch (``epoch``, ``train_loss``, ``train_mae``,
            ``val_mae``); filled by `fit`.
        metrics: per property, ``n_train``, ``n_val``, ``val_mae`` (best), ``train_mae``,
            ``best_epoch``, ``transfer_from``; filled by `fit`.

    Units: every target in its own column's units (eV/atom for energies, eV for gaps).
    """

    def __init__(self, config: PropertyCGCNNConfig, properties: Sequence[str],
                 device: str | torch.device = "cpu"):
        props = [str(p) for p in properties]
        if not props:
            raise ValueError("PropertyHeads needs at least one property")
        self.primary = primary_property(props)
        self.properties = [self.primary] + [p for p in props if p != self.primary]
        self.config = config
        self.device = torch.device(device)
        self.module = CGCNNHeadsModule(**heads_architecture(config, self.properties)).to(self.device)
        self.module.eval()
        self.history: dict[str, list[dict[str, float]]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ graphs

    def graphs(self, structures: Sequence) -> list[Data | None]:
        """Crystal graphs of ``structures``; None where a structure cannot be made a graph."""
        out: list[Data | None] = []
        for s in structures:
            try:
                out.append(structure_to_graph(s, self.config.cutoff_a, self.config.max_neighbors))
            except DataError as exc:
                logger.debug("heads: no graph for %s (%s)", getattr(s, "formula", "?"), exc)
                out.append(None)
        return out

    # ------------------------------------------------------------------ training

    def fit(self, structures: Sequence, labels: Mapping[str, Sequence[float]],
            seed: int | np.random.SeedSequence = 0, progress: ProgressFn | None = None,
            log_metrics: Callable[[dict[str, float], int], None] | None = None) -> dict[str, dict[str, Any]]:
        """Train the primary head from scratch, then the others from its weights.

        Args:
            structures: training crystals (pymatgen ``Structure``).
            labels: property -> one value per structure (NaN where unknown); every property of
                `properties` must be present.
            seed: split, initialisation and shuffling randomness.
            progress: ``progress("heads", epochs_done, epochs_total, metrics)`` after every epoch.
            log_metrics: ``log_metrics(metrics, step)`` after every epoch, with keys
                ``heads/<property>/<metric>`` (for a tracker).

        Returns:
            `metrics` (per property).

        Raises:
            DataError: a property has no labels, labels and structures differ in length, or no
                structure has a label for the primary property.
        """
        n = len(structures)
        for prop in self.properties:
            if prop not in labels:
                raise DataError(f"heads: no labels for property {prop!r}")
            if len(labels[prop]) != n:
                raise DataError(f"heads: {len(labels[prop])} labels of {prop!r} for {n} structures")
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        streams = ss.spawn(len(self.properties))
        graphs = self.graphs(structures)
        n_missing = sum(g is None for g in graphs)
        if n_missing:
            logger.warning("heads: %d of %d structures have no crystal graph and are left out", n_missing, n)
        total_epochs = self.config.epochs * len(self.properties)
        done = 0
        primary_state: dict[str, Tensor] | None = None
        for k, prop in enumerate(self.properties):
            y = np.asarray(labels[prop], dtype=np.float64)
            usable = np.flatnonzero(np.isfinite(y) & np.array([g is not None for g in graphs], dtype=bool))
            if usable.size < 2:
                if k == 0:
                    raise DataError(f"heads: only {usable.size} structures have a {prop!r} label; need 2")
                logger.warning("heads: %s has %d labelled structures; head left at the primary weights",
                               prop, usable.size)
                self.module.nets[k].load_state_dict(primary_state)  # type: ignore[arg-type]
                self.module.target_mean[k] = self.module.target_mean[0]
                self.module.target_std[k] = self.module.target_std[0]
                self.metrics[prop] = {"n_train": int(usable.size), "n_val": 0, "val_mae": None,
                                      "train_mae": None, "best_epoch": 0, "transfer_from": self.primary}
                done += self.config.epochs
                continue

            def epoch_done(metrics: dict[str, float], epoch: int, prop: str = prop) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress("heads", done, total_epochs, {"property": prop, **metrics})  # type: ignore[dict-item]
                if log_metrics is not None:
                    log_metrics({f"heads/{prop}/{m}": v for m, v in metrics.items()
                                 if isinstance(v, int | float) and v is not None and math.isfinite(v)},
                                epoch)

            init = None if k == 0 else primary_state
            self._fit_one(k, graphs, y, usable, streams[k], init, epoch_done)
            if k == 0:
                primary_state = copy.deepcopy(self.module.nets[0].state_dict())
            done = self.config.epochs * (k + 1)
        self.module.eval()
        return self.metrics

    def _fit_one(self, k: int, graphs: Sequence[Data | None], y: np.ndarray, usable: np.ndarray,
                 ss: np.random.SeedSequence, init_state: Mapping[str, Tensor] | None,
                 epoch_done: Callable[[dict[str, float], int], None]) -> None:
        cfg = self.config
        prop = self.properties[k]
        t0 = time.perf_counter()
        split_ss, init_ss, shuffle_ss = ss.spawn(3)
        perm = np.random.default_rng(split_ss).permutation(usable)
        n_val = int(round(cfg.val_fraction * len(perm))) if len(perm) >= 5 else 0
        n_val = min(n_val, len(perm) - 2)
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        mean = float(y[train_idx].mean())
        std = float(y[train_idx].std())
        if not std > 1e-8:
            std = 1.0
        net = self.module.nets[k]
        if init_state is not None:
            net.load_state_dict(init_state)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed_int(init_ss))
                fresh = CGCNN(ATOM_FEATURE_DIM, edge_feature_dim(cfg.cutoff_a), atom_fea_len=cfg.atom_fea_len,
                              n_conv=cfg.n_conv, h_fea_len=cfg.h_fea_len, n_h=1)
            net.load_state_dict(fresh.state_dict())
        net.to(self.device)
        y_norm = torch.tensor((y - mean) / std, dtype=torch.float32, device=self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(shuffle_ss)

        def batches(idx: np.ndarray, shuffle: bool) -> list[np.ndarray]:
            order = rng.permutation(idx) if shuffle else idx
            chunks = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            if len(chunks) > 1 and len(chunks[-1]) < 2:  # batch norm needs two crystals in training
                last = chunks.pop()
                chunks[-1] = np.concatenate([chunks[-1], last])
            return chunks

        def collate(chunk: np.ndarray) -> Batch:
            return Batch.from_data_list([graphs[i] for i in chunk]).to(self.device)

        val_batches = [(collate(c), c) for c in batches(val_idx, False)] if len(val_idx) else []

        def mae(batch_list: list[tuple[Batch, np.ndarray]]) -> float:
            net.eval()
            err, count = 0.0, 0
            with torch.no_grad():
                for batch, chunk in batch_list:
                    pred = net(batch).double().cpu().numpy() * std + mean
                    err += float(np.abs(pred - y[chunk]).sum())
                    count += len(chunk)
            return err / max(count, 1)

        best, best_state, best_epoch = math.inf, None, 0
        history: list[dict[str, float]] = []
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            loss_sum, seen = 0.0, 0
            for chunk in batches(train_idx, True):
                batch = collate(chunk)
                loss = F.mse_loss(net(batch), y_norm[torch.as_tensor(chunk, device=self.device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.item()) * len(chunk)
                seen += len(chunk)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"heads: training loss of {prop} is not finite in epoch {epoch}")
            metrics: dict[str, float] = {"train_loss": loss_sum / max(seen, 1)}
            if val_batches:
                metrics["val_mae"] = mae(val_batches)
            select = metrics.get("val_mae", metrics["train_loss"])
            if select < best:
                best, best_epoch = select, epoch
                best_state = copy.deepcopy(net.state_dict())
            history.append({"epoch": epoch, **metrics})
            epoch_done(metrics, epoch)
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.module.target_mean[k] = mean
        self.module.target_std[k] = std
        train_batches = [(collate(c), c) for c in batches(train_idx, False)]
        self.history[prop] = history
        self.metrics[prop] = {
            "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
            "val_mae": mae(val_batches) if val_batches else None, "train_mae": mae(train_batches),
            "best_epoch": best_epoch, "transfer_from": None if init_state is None else self.primary,
            "wall_s": time.perf_counter() - t0,
        }
        logger.info("heads %s: %d train / %d val, best epoch %d, val MAE %s (%.1f s)", prop, len(train_idx),
                    len(val_idx), best_epoch,
                    "n/a" if self.metrics[prop]["val_mae"] is None else f"{self.metrics[prop]['val_mae']:.4g}",
                    self.metrics[prop]["wall_s"])

    # ------------------------------------------------------------------ prediction

    @torch.inference_mode()
    def predict(self, structures: Sequence, gap_rule: bool = True) -> dict[str, np.ndarray]:
        """Every property for every structure; NaN where a structure has no crystal graph.

        Args:
            structures: pymatgen ``Structure`` objects.
            gap_rule: apply `apply_gap_rule` (refractive index / dielectric constant NaN where the
                predicted gap is <= 0).

        Returns:
            property -> (n,) float64 array.
        """
        n = len(structures)
        out = np.full((n, len(self.properties)), np.nan)
        graphs = self.graphs(structures)
        ok = [i for i, g in enumerate(graphs) if g is not None]
        self.module.eval()
        for start in range(0, len(ok), PREDICT_BATCH_SIZE):
            chunk = ok[start:start + PREDICT_BATCH_SIZE]
            batch = Batch.from_data_list([graphs[i] for i in chunk]).to(self.device)
            out[chunk] = self.module(batch).double().cpu().numpy()
        preds = {p: out[:, k] for k, p in enumerate(self.properties)}
        return apply_gap_rule(preds) if gap_rule else preds

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the heads with `~discovery.models.icsg3d.training.save_checkpoint` (kind ``heads``).

        ``extra`` gets ``metrics`` and ``history`` added.
        """
        payload = {"metrics": self.metrics, "history": self.history, **dict(extra or {})}
        return save_module(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "heads",
                           heads_architecture(self.config, self.properties), self.module.state_dict(), payload)

    @classmethod
    def load(cls, path: str | Path, config: PropertyCGCNNConfig, properties: Sequence[str],
             device: str | torch.device = "cpu") -> PropertyHeads:
        """Read heads saved by `save`.

        Args:
            path: the checkpoint file.
            config: the sizes the caller expects (``ICSG3DConfig.cgcnn``).
            properties: the properties the caller expects (primary first, as saved).

        Raises:
            DataError: one line naming the file when it is missing, damaged, of another kind, or
                written for other sizes or properties.
        """
        heads = cls(config, properties, device=device)
        if heads.properties != [str(p) for p in properties]:
            raise DataError(f"{path}: expected properties {list(properties)} with the primary one first")
        payload = load_module(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "heads", CGCNNHeadsModule,
                              heads_architecture(config, heads.properties))
        module = payload["model"]
        std = module.target_std.numpy()
        if not (np.all(np.isfinite(std)) and np.all(std > 0) and np.all(np.isfinite(module.target_mean.numpy()))):
            raise DataError(f"{path}: invalid target normalisation in the heads checkpoint")
        heads.module = module.to(heads.device).eval()
        extra = payload.get("extra") or {}
        heads.metrics = dict(extra.get("metrics") or {})
        heads.history = dict(extra.get("history") or {})
        return heads
