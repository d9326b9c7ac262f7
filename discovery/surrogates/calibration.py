"""Calibration of a surrogate's predicted std against labels it was not trained on.

An ensemble's spread (over trees, over networks) is a useful *ranking* of uncertainty but rarely the
right *size*: forests and small ensembles are usually over- or under-confident by a roughly constant
factor. `fit_variance_scale` finds that factor on held-back labels, `rescale_members` applies it to
the members so member-based acquisitions (Thompson sampling) see the same calibrated spread, and
`coverage` reports how well a set of Gaussian predictions covers the truth.

All functions are pure (no state, no randomness) and accept anything `numpy.asarray` turns into a
1-D float array.
"""

from __future__ import annotations

import math

import numpy as np

#: Predicted stds are floored at this value before any division. Units: those of the target.
STD_FLOOR: float = 1e-9
#: Fewest held-back labels from which `fit_variance_scale` estimates a factor (fewer give 1.0).
MIN_POINTS_FOR_SCALE: int = 3


def _arrays(y, mean, std, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (y, mean, std)]
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise ValueError(f"{what}: y, mean and std must have the same length, got "
                         f"{', '.join(str(a.size) for a in arrays)}")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(f"{what}: y, mean and std must be finite numbers")
    if np.any(arrays[2] < 0):
        raise ValueError(f"{what}: std must be non-negative")
    return arrays[0], arrays[1], np.maximum(arrays[2], STD_FLOOR)


def coverage(y, mean, std) -> dict[str, float]:
    """How well Gaussian predictions ``N(mean, std^2)`` cover the labels ``y``.

    Args:
        y: true values. Shapes: (n,).
        mean: predicted means. Shapes: (n,).
        std: predicted stds (floored at `STD_FLOOR`). Shapes: (n,).

    Returns:
        ``within_1sigma`` and ``within_2sigma``: fractions with ``|y - mean| <= k * std`` (0.683 and
        0.954 for a calibrated Gaussian); ``mean_abs_z``: mean of ``|y - mean| / std`` (0.798 when
        calibrated); ``nll``: mean Gaussian negative log-likelihood (in nats, lower is better);
        ``n``: number of points. With no points, ``n`` is 0 and the others are NaN.

    Raises:
        ValueError: lengths differ, a value is not finite, or a std is negative.

    Examples:
        >>> c = coverage([0.0, 1.0, 3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
        >>> c["within_1sigma"], c["within_2sigma"], c["mean_abs_z"], c["n"]
        (0.6666666666666666, 0.6666666666666666, 1.3333333333333333, 3)
    """
    y, mean, std = _arrays(y, mean, std, "coverage")
    if y.size == 0:
        nan = float("nan")
        return {"within_1sigma": nan, "within_2sigma": nan, "mean_abs_z": nan, "nll": nan, "n": 0}
    abs_z = np.abs(y - mean) / std
    nll = 0.5 * math.log(2.0 * math.pi) + np.log(std) + 0.5 * abs_z**2
    return {
        "within_1sigma": float(np.mean(abs_z <= 1.0)),
        "within_2sigma": float(np.mean(abs_z <= 2.0)),
        "mean_abs_z": float(np.mean(abs_z)),
        "nll": float(np.mean(nll)),
        "n": int(y.size),
    }


def fit_variance_scale(y, mean, std, floor: float = 0.1, ceil: float = 100.0) -> float:
    """The factor ``s`` that makes ``N(mean, (s * std)^2)`` most likely for held-back labels.

    Maximising the Gaussian likelihood over ``s`` gives ``s = sqrt(mean(z^2))`` with
    ``z = (y - mean) / std``; the result is clipped to ``[floor, ceil]`` so a few unlucky points
    cannot make the surrogate absurdly sure or unsure.

    Args:
        y: held-back labels the model was not trained on. Shapes: (n,).
        mean: the model's predicted means for them. Shapes: (n,).
        std: the model's predicted stds (floored at `STD_FLOOR`). Shapes: (n,).
        floor: smallest factor returned.
        ceil: largest factor returned.

    Returns:
        The factor; 1.0 when fewer than `MIN_POINTS_FOR_SCALE` points are given.

    Raises:
        ValueError: lengths differ, a value is not finite, a std is negative, or
            ``0 < floor <= ceil`` does not hold.

    Examples:
        >>> fit_variance_scale([2.0, -2.0, 2.0, -2.0], [0.0] * 4, [1.0] * 4)
        2.0
        >>> fit_variance_scale([1.0, 2.0], [0.0, 0.0], [1.0, 1.0])
        1.0
    """
    if not 0 < floor <= ceil:
        raise ValueError(f"fit_variance_scale: need 0 < floor <= ceil, got floor={floor}, ceil={ceil}")
    y, mean, std = _arrays(y, mean, std, "fit_variance_scale")
    if y.size < MIN_POINTS_FOR_SCALE:
        return 1.0
    scale = math.sqrt(float(np.mean(((y - mean) / std) ** 2)))
    return float(min(max(scale, floor), ceil))


def rescale_members(members: np.ndarray, scale: float) -> np.ndarray:
    """Spread ensemble members around their mean by ``scale``: ``mean + scale * (member - mean)``.

    The member mean is unchanged and the member std is multiplied by ``scale``, so samples drawn
    from the members agree with the recalibrated ``Prediction.std``.

    Args:
        members: per-member predictions. Shapes: (n_members, n).
        scale: the variance scale (a factor on the std).

    Returns:
        A new float64 array (a plain copy when ``scale`` is 1). Shapes: (n_members, n).

    Examples:
        >>> rescale_members(np.array([[0.0, 1.0], [2.0, 1.0]]), 3.0).tolist()
        [[-2.0, 1.0], [4.0, 1.0]]
    """
    members = np.asarray(members, dtype=np.float64)
    if members.ndim != 2:
        raise ValueError(f"rescale_members: expected shape (n_members, n), got {members.shape}")
    if scale == 1.0:
        return members.copy()  # exactly the members, without rounding through the mean
    centre = members.mean(axis=0, keepdims=True)
    return centre + float(scale) * (members - centre)


def predictions_from_members(candidates, members: np.ndarray, prop: str, model: str) -> list:
    """`Prediction`s (mean and population std over members) of an ensemble's rescaled members.

    Shapes: ``members`` (n_members, n) for the n ``candidates``.
    """
    from discovery.records import Prediction

    mean = members.mean(axis=0)
    std = members.std(axis=0)
    return [Prediction(candidate_id=c.id, property=prop, mean=float(m), std=float(s), model=model)
            for c, m, s in zip(candidates, mean, std, strict=True)]
