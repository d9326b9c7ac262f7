"""A recalibrated tree ensemble on hand-crafted descriptors: the fast surrogate next to CGCNN.

The trees of a scikit-learn extra-trees (default) or random-forest regressor are the ensemble
members: the prediction is their mean, the uncertainty their spread, multiplied by a *variance scale*
fitted on labels the trees did not see. Inputs are `discovery.featurize.descriptors` vectors,
computed once per candidate id.

Recalibration: with ``recalibrate`` and at least `MIN_LABELS_FOR_CALIBRATION` labels, a random
``calibration_fraction`` of them is held back, a forest is trained on the rest, and the scale that
makes its held-back errors most likely under a Gaussian (`fit_variance_scale`) is stored. The forest
that predicts is then refit on *all* labels: in active learning every label is scarce and the most
recent ones are the most informative, so none is left out of the model. The scale was measured on a
forest that saw a fifth fewer labels, whose errors are slightly larger, so it errs on the side of a
little too much uncertainty. Below the threshold (or without ``recalibrate``) the scale is 1.

Randomness: the seed is spawned once, at construction, into a split stream and two tree seeds
(calibration forest, final forest). A fit therefore depends only on (seed, labels): refitting the
same labels in the same order gives the same predictions.

Persistence: there is no save/load. scikit-learn models only serialise through pickle, which runs
arbitrary code when loaded; a forest refits in seconds (defaults, 500 labels: about 3 s for both
fits on one shared core), so a resumed campaign refits it from the ledger's labels instead of reading a
checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from pydantic import Field, field_validator

from discovery.configbase import Strict
from discovery.kinds import BuildContext, Kind
from discovery.errors import NotFittedError
from discovery.featurize.descriptors import DESCRIPTOR_DIM, DescriptorCache
from discovery.records import Candidate, FitReport, Prediction
from discovery.surrogates.calibration import (
    coverage,
    fit_variance_scale,
    predictions_from_members,
    rescale_members,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "forest-ensemble"
#: Fewest labels for which a calibration split is held back.
MIN_LABELS_FOR_CALIBRATION = 10
#: Fewest labels kept for the calibration forest when the held-back split is carved out.
MIN_TRAIN_FOR_CALIBRATION = 5
#: Held-back split size is at least this many labels (a scale from fewer would be noise).
MIN_CALIBRATION_LABELS = 3
#: Descriptor columns with a smaller spread are not standardised (divided by 1) in `embed`.
_STD_EPS = 1e-12



class ForestSurrogateConfig(Strict):
    """A tree ensemble (scikit-learn) on hand-crafted crystal descriptors: fast to refit every batch.

    ``calibration_fraction`` of the labels (when there are at least 10) is held back to fit the
    variance scale of the tree spread; the forest is then refit on all labels (see
    `discovery.surrogates.forest`).
    """

    kind: Literal["forest"] = "forest"
    property: str = "formation_energy_per_atom"
    algorithm: Literal["extra_trees", "random_forest"] = "extra_trees"
    n_estimators: int = Field(200, ge=2)
    min_samples_leaf: int = Field(1, ge=1)
    max_features: float = Field(0.5, gt=0.0, le=1.0, description="fraction of descriptors per split")
    recalibrate: bool = True
    calibration_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    n_jobs: int = Field(1, ge=-1, description="scikit-learn threads; -1 uses every core")

    @field_validator("n_jobs")
    @classmethod
    def _n_jobs(cls, v: int) -> int:
        if v == 0:
            raise ValueError("n_jobs must be a positive number of threads or -1 (every core)")
        return v


class ForestEnsembleSurrogate:
    """`Surrogate` whose members are the trees of a scikit-learn forest on crystal descriptors.

    Args:
        config: forest size, algorithm and recalibration settings.
        seed: campaign seed (or a spawned `numpy.random.SeedSequence`) for the calibration split and
            the trees.
        descriptor_cache: descriptors computed so far, by candidate id; pass one cache to several
            surrogates over the same pool to featurise it once. A private cache by default.

    Attributes:
        property: the predicted property (``config.property``).
        config: the configuration it was built with.
        last_calibration: after a fit with a calibration split, ``{"before": coverage, "after":
            coverage, "variance_scale": s}`` on the held-back labels, where ``coverage`` is the dict
            of `discovery.surrogates.calibration.coverage` for the raw and the scaled std; else None.

    Units: targets and predictions in the units of ``property`` (eV/atom for energies).
    """

    model_name = MODEL_NAME

    def __init__(self, config: ForestSurrogateConfig, seed: int | np.random.SeedSequence,
                 descriptor_cache: DescriptorCache | None = None):
        self.config = config
        self.property: str = config.property
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        split_seq, calib_seq, final_seq = seq.spawn(3)
        self._split_seq = split_seq
        self._calib_state = int(calib_seq.generate_state(1, np.uint32)[0])
        self._final_state = int(final_seq.generate_state(1, np.uint32)[0])
        self._cache = descriptor_cache if descriptor_cache is not None else DescriptorCache()
        self._forest: Any = None
        self._variance_scale = 1.0
        self._x_mean = np.zeros(DESCRIPTOR_DIM)
        self._x_scale = np.ones(DESCRIPTOR_DIM)
        self.last_calibration: dict[str, Any] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has run."""
        return self._forest is not None

    @property
    def variance_scale(self) -> float:
        """Factor applied to the tree spread (1.0 before a calibrated fit)."""
        return self._variance_scale

    def fit(self, candidates: Sequence[Candidate], targets: Sequence[float]) -> FitReport:
        """Fit the variance scale on a held-back split, then the forest on all labels.

        Args:
            candidates: labelled crystals (at least two).
            targets: their property values.

        Returns:
            A `FitReport`: ``n_train`` labels the returned forest was trained on (all of them),
            ``n_val`` labels held back to fit the variance scale (0 without recalibration),
            ``val_mae`` the held-back MAE of the calibration forest (None without a split),
            ``train_mae`` the in-sample MAE of the final forest, wall time; no epochs, no checkpoint.

        Raises:
            ValueError: lengths differ, fewer than two labels, or a target is not finite.
            DataError: a structure cannot be described.
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
        x = self._cache.descriptors_for(cands)

        scale, calibration, val_mae, n_cal = 1.0, None, None, 0
        train_idx, cal_idx = self._split(len(cands))
        if len(cal_idx):
            n_cal = len(cal_idx)
            calib = self._new_forest(self._calib_state).fit(x[train_idx], y[train_idx])
            trees = _tree_predictions(calib, x[cal_idx])
            mean, std = trees.mean(axis=0), trees.std(axis=0)
            scale = fit_variance_scale(y[cal_idx], mean, std)
            calibration = {"before": coverage(y[cal_idx], mean, std),
                           "after": coverage(y[cal_idx], mean, scale * std),
                           "variance_scale": scale}
            val_mae = float(np.mean(np.abs(mean - y[cal_idx])))

        forest = self._new_forest(self._final_state).fit(x, y)
        self._forest = forest
        self._variance_scale = scale
        self.last_calibration = calibration
        self._x_mean = x.mean(axis=0)
        spread = x.std(axis=0)
        self._x_scale = np.where(spread > _STD_EPS, spread, 1.0)
        train_mae = float(np.mean(np.abs(forest.predict(x.astype(np.float32)) - y)))
        report = FitReport(n_train=len(cands), n_val=n_cal, val_mae=val_mae, train_mae=train_mae,
                           wall_s=time.perf_counter() - start, variance_scale=scale)
        if calibration is not None:
            logger.debug("%s %s fit: %d labels, variance scale %.3g from %d held back "
                        "(within 2 sigma %.2f -> %.2f, val MAE %.4g) (%.2f s)", MODEL_NAME,
                        self.property, len(cands), scale, n_cal, calibration["before"]["within_2sigma"],
                        calibration["after"]["within_2sigma"], val_mae, report.wall_s)
        else:
            logger.info("%s %s fit: %d labels, no calibration split (%.2f s)", MODEL_NAME,
                        self.property, len(cands), report.wall_s)
        return report

    def predict(self, candidates: Sequence[Candidate]) -> list[Prediction]:
        """Mean over trees and their std (population, over trees) times `variance_scale`.

        Raises:
            NotFittedError: before `fit`.
        """
        cands = list(candidates)
        self._require_fitted("predict")
        if not cands:
            return []
        return predictions_from_members(cands, self.predict_members(cands), self.property, MODEL_NAME)

    def predict_members(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Per-tree predictions spread around their mean by `variance_scale`.

        Their mean is the `predict` mean and their population std the `predict` std, so a draw of
        one member per candidate is a calibrated posterior sample (Thompson sampling).

        Shapes: (n_estimators, n).

        Raises:
            NotFittedError: before `fit`.
        """
        cands = list(candidates)
        self._require_fitted("predict_members")
        if not cands:
            return np.zeros((self.config.n_estimators, 0))
        trees = _tree_predictions(self._forest, self._cache.descriptors_for(cands))
        return rescale_members(trees, self._variance_scale)

    def embed(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Descriptors standardised on the training labels, weighted by sqrt(feature importance).

        Euclidean distances in this space weight each descriptor by how much the forest relies on
        it, a learned metric for batch diversity.

        Shapes: (n, DESCRIPTOR_DIM).

        Raises:
            NotFittedError: before `fit`.
        """
        cands = list(candidates)
        self._require_fitted("embed")
        x = self._cache.descriptors_for(cands)
        weights = np.sqrt(np.clip(self._forest.feature_importances_, 0.0, None))
        return (x - self._x_mean) / self._x_scale * weights

    # ------------------------------------------------------------------ internals

    def _require_fitted(self, what: str) -> None:
        if self._forest is None:
            raise NotFittedError(f"{MODEL_NAME} ({self.property}): {what} called before fit()")

    def _new_forest(self, random_state: int) -> Any:
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        cfg = self.config
        cls = ExtraTreesRegressor if cfg.algorithm == "extra_trees" else RandomForestRegressor
        return cls(n_estimators=cfg.n_estimators, min_samples_leaf=cfg.min_samples_leaf,
                   max_features=cfg.max_features, n_jobs=cfg.n_jobs, random_state=random_state)

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, calibration) indices; no calibration split below `MIN_LABELS_FOR_CALIBRATION`."""
        if not self.config.recalibrate or n < MIN_LABELS_FOR_CALIBRATION:
            return np.arange(n), np.arange(0)
        n_cal = min(max(MIN_CALIBRATION_LABELS, int(round(self.config.calibration_fraction * n))),
                    n - MIN_TRAIN_FOR_CALIBRATION)
        perm = np.random.default_rng(self._split_seq).permutation(n)
        return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


def _tree_predictions(forest: Any, x: np.ndarray) -> np.ndarray:
    """Every tree's prediction. Shapes: x (n, d) -> (n_trees, n)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    return np.stack([tree.predict(x32, check_input=False) for tree in forest.estimators_]).astype(np.float64)


def build(config: ForestSurrogateConfig, context: BuildContext) -> ForestEnsembleSurrogate:
    """A forest; a replay benchmark rebuilds one per batch, so the pool's descriptors are cached in
    ``context.shared`` and computed once per process."""
    cache = context.shared.setdefault("descriptors", DescriptorCache())
    return ForestEnsembleSurrogate(config, seed=context.seed, descriptor_cache=cache)


KIND = Kind(role="surrogate", name="forest", config=ForestSurrogateConfig, factory="discovery.surrogates.forest:build",
            summary="extra-trees / random forest on crystal descriptors, refit every batch, recalibrated spread")
