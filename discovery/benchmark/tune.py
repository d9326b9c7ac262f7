"""`discovery tune`: sweep loop and model hyper-parameters on a replay benchmark (no DFT spent).

A tune file names a benchmark file, the objective and the policy (by its label there) to tune, and
a search space of dotted keys:

- ``policy.<field>`` changes the tuned policy's config (``policy.kappa``,
  ``policy.diversity.method``, ...);
- any other key changes the benchmark config (``batch_size``, ``surrogate.n_estimators``, ...).

Each trial replays the campaign for every listed seed in lockstep and reports the mean hits found
after each batch, with the oracle calls spent as ASHA's clock, so trials with different batch sizes
are compared at equal cost. `discovery.actors.tune` runs the trials on Ray Tune; this module holds
what does not need Ray: the config, applying a trial's parameters and writing the best config out.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from discovery.benchmark.config import (
    BenchmarkConfig,
    load_benchmark_config,
    validate_model,
)
from discovery.config import ExecutionConfig, TrackingConfig
from discovery.configbase import Strict, apply_overrides, read_yaml_mapping, set_path
from discovery.errors import ConfigError


class SearchDimension(Strict):
    """One axis of the search space: exactly one of the four forms."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDimension:
        given = [k for k in ("loguniform", "uniform", "randint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform, uniform, randint, choice")
        lo_hi = self.loguniform or self.uniform or self.randint
        if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"the lower end must be below the upper end, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs a positive lower end")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self

    def example(self) -> Any:
        """A value from the dimension (its lower end or first choice), to check a key up front."""
        if self.choice is not None:
            return self.choice[0]
        return (self.loguniform or self.uniform or self.randint)[0]


class ASHAConfig(Strict):
    """Asynchronous successive halving, with oracle calls as the clock."""

    grace_period_calls: int = Field(50, ge=1, description="calls before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2)


class TuneConfig(Strict):
    """A sweep over one policy of a benchmark."""

    name: str = Field("tune", pattern=r"^[A-Za-z0-9_.-]+$")
    benchmark: Path
    objective: str | None = Field(None, description="objective name; default: the benchmark's first")
    policy: str = Field(..., description="label of the benchmark policy to tune")
    space: dict[str, SearchDimension] = Field(..., min_length=1)
    num_samples: int = Field(8, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    scheduler: ASHAConfig = ASHAConfig()
    seed: int = Field(0, description="seed of the search algorithm's sampling")
    campaign: Path | None = Field(None, description="campaign file to write best_campaign.yaml from")
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()


def trial_config(base: BenchmarkConfig, tune: TuneConfig, params: dict[str, Any], source: str
                 ) -> BenchmarkConfig:
    """The benchmark config of one trial: the base with ``params`` applied, keeping only random and
    the tuned policy.

    Raises:
        ConfigError: a key or value the benchmark config does not accept.
    """
    raw = base.model_dump(mode="json")
    entry = next(p for p in raw["policies"] if p["label"] == tune.policy)
    for key, value in params.items():
        if key.startswith("policy."):
            set_path(entry["policy"], key.removeprefix("policy."), value, source)
        else:
            set_path(raw, key, value, source)
    raw["policies"] = [p for p in raw["policies"] if p["label"] in (tune.policy, base.random_label)]
    return validate_model(BenchmarkConfig, raw, source)


def load_tune_config(path: str | Path, overrides: list[str] | None = None
                     ) -> tuple[TuneConfig, BenchmarkConfig]:
    """Read and check a tune file and the benchmark it names; every search key is tried once.

    Raises:
        ConfigError: one line naming the file and the key.
    """
    path = Path(path)
    raw = apply_overrides(read_yaml_mapping(path, "tune"), overrides, str(path))
    tune = validate_model(TuneConfig, raw, str(path))
    bench_path = tune.benchmark if tune.benchmark.is_absolute() else path.parent / tune.benchmark
    base = load_benchmark_config(bench_path)
    labels = [p.label for p in base.policies]
    if tune.policy not in labels:
        raise ConfigError(f"{path}: policy: {tune.policy!r} is not a policy label of {bench_path} "
                          f"({', '.join(labels)})")
    if tune.policy == base.random_label:
        raise ConfigError(f"{path}: policy: random has nothing to tune")
    names = [o.name for o in base.objectives]
    if tune.objective is not None and tune.objective not in names:
        raise ConfigError(f"{path}: objective: {tune.objective!r} is not in {bench_path} ({', '.join(names)})")
    for key, dim in tune.space.items():  # a wrong key fails here, not in the middle of a sweep
        trial_config(base, tune, {key: dim.example()}, f"{path}: space.{key}")
    campaign = None
    if tune.campaign is not None:
        campaign = (tune.campaign if tune.campaign.is_absolute() else path.parent / tune.campaign).resolve()
        if not campaign.is_file():
            raise ConfigError(f"{path}: campaign: file not found: {tune.campaign}")
    update = {"benchmark": bench_path.resolve(), "campaign": campaign,
              "objective": tune.objective or names[0]}
    return tune.model_copy(update=update), base


def best_campaign(campaign_path: Path, trial: BenchmarkConfig, tune: TuneConfig) -> dict[str, Any]:
    """The campaign file with the tuned policy, the batch size (as ``dft_per_round``, when it was
    tuned) and, when the surrogate kinds agree, the tuned surrogate settings applied; validated like
    any campaign.

    Raises:
        ConfigError: the result is not a valid campaign.
    """
    from discovery.config import validate_config

    raw = copy.deepcopy(read_yaml_mapping(campaign_path, "campaign"))
    tuned = next(p for p in trial.policies if p.label == tune.policy)
    raw["policy"] = tuned.policy.model_dump(mode="json")
    if "batch_size" in tune.space:
        raw["dft_per_round"] = trial.batch_size
    surrogate_keys = [k.removeprefix("surrogate.") for k in tune.space if k.startswith("surrogate.")]
    campaign_surrogate = (raw.get("surrogate") or {}).get("kind", "cgcnn_ensemble")
    if surrogate_keys and campaign_surrogate == trial.surrogate.kind:
        tuned_surrogate = trial.surrogate.model_dump(mode="json")
        for key in surrogate_keys:
            set_path(raw.setdefault("surrogate", {}), key, _get_path(tuned_surrogate, key), str(campaign_path))
    validate_config(raw, f"{campaign_path} (with the best trial applied)")
    return raw


def _get_path(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node
