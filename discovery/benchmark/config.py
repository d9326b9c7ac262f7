"""`discovery benchmark` and `discovery tune` files: pydantic models, validated before anything runs.

Relative table paths are read from ``data_dir`` (default: ``$DISCOVERY_DATA_DIR``, else
``../shared/data`` next to the repository), so one benchmark file works on every machine that has
the shared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from discovery import registry
from discovery.config import ExecutionConfig, TrackingConfig
from discovery.configbase import Strict, apply_overrides, read_yaml_mapping, validate
from discovery.errors import ConfigError
from discovery.objective import Objective

#: The surrogate a benchmark fits when it names none (refit every batch, seconds per fit).
DEFAULT_SURROGATE = "forest"
PolicyConfig = registry.component_field("policy", "ucb")
SurrogateConfig = registry.component_field("surrogate", DEFAULT_SURROGATE)


class TableConfig(Strict):
    """The labelled pool: a CDVAE CSV, or a CIF folder plus a labels CSV (column ``file``)."""

    cdvae_csv: Path | None = None
    cif_dir: Path | None = None
    labels_csv: Path | None = None
    data_dir: Path | None = Field(None, description="base of relative paths; default the shared data")
    max_rows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> TableConfig:
        if (self.cdvae_csv is None) == (self.cif_dir is None):
            raise ValueError("give exactly one of cdvae_csv or cif_dir")
        if self.cif_dir is not None and self.labels_csv is None:
            raise ValueError("cif_dir needs labels_csv (a CSV with a 'file' column and property columns)")
        return self


class CheapFidelityConfig(Strict):
    """The simulated cheap fidelity the multi-fidelity policy may call: table value + bias + a fixed
    Gaussian error per candidate. ``cost`` is one cheap call relative to one oracle call."""

    noise_std: float = Field(0.15, ge=0)
    bias: float = 0.0
    cost: float = Field(0.01, ge=0)


class PolicyEntry(Strict):
    """One policy to compare, with the label it carries in tables and plots."""

    label: str = Field(..., pattern=r"^[A-Za-z0-9_.+-]+$")
    policy: PolicyConfig

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        """Accept the short form ``{kind: ucb, kappa: 2, label: ucb2}`` as well."""
        if isinstance(data, dict) and "policy" not in data:
            data = dict(data)
            label = data.pop("label", None)
            if label is None:
                label = str(data.get("kind", "ucb"))
                method = (data.get("diversity") or {}).get("method", "none")
                if method != "none":
                    label += f"+{method}"
            return {"label": label, "policy": data}
        return data


class BenchmarkConfig(Strict):
    """A retrospective campaign: every policy x every seed, on the same table and objectives."""

    name: str = Field("benchmark", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    n_seeds: int = Field(5, ge=1)
    table: TableConfig
    objectives: list[Objective] = Field(..., min_length=1)
    initial_fraction: float = Field(0.02, gt=0, lt=1)
    batch_size: int = Field(10, ge=1)
    budget: int = Field(300, ge=1, description="oracle calls per run after the initial set")
    random_until_recall: float = Field(
        0.9, ge=0, le=1, description="random runs past the budget until this recall (it is cheap), "
        "so AF50/AF90 against it are measured, not extrapolated")
    policies: list[PolicyEntry] = Field(..., min_length=1)
    surrogate: SurrogateConfig = Field(default_factory=lambda: {"kind": DEFAULT_SURROGATE}, validate_default=True)
    cheap: CheapFidelityConfig = CheapFidelityConfig()
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[PolicyEntry]) -> list[PolicyEntry]:
        labels = [p.label for p in v]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"policy labels must be unique; repeated: {dup} (add label: to tell them apart)")
        if "random" not in [p.policy.kind for p in v]:
            raise ValueError("must include {kind: random}: every factor is measured against it")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective]) -> list[Objective]:
        names = [o.name for o in v]
        if len(set(names)) != len(names):
            raise ValueError("objective names must be unique")
        return v

    @property
    def random_label(self) -> str:
        return next(p.label for p in self.policies if p.policy.kind == "random")


def validate_model(model: type[BaseModel], raw: dict[str, Any], source: str):
    """Validate a benchmark or tune file's mapping (one `ConfigError` line on failure)."""
    return validate(model, raw, source)


def resolve_table(table: TableConfig, base: Path, source: str) -> TableConfig:
    """Absolute, existing paths: relative ones from ``data_dir`` (default shared data), then from
    the config file's folder."""
    from discovery.data.loaders import default_data_dir

    data_dir = table.data_dir
    if data_dir is not None and not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    roots = [data_dir or default_data_dir(), base]
    update: dict[str, Any] = {}
    for key, is_dir in (("cdvae_csv", False), ("cif_dir", True), ("labels_csv", False)):
        p = getattr(table, key)
        if p is None:
            continue
        candidates = [p] if p.is_absolute() else [r / p for r in roots]
        found = next((c.resolve() for c in candidates if (c.is_dir() if is_dir else c.is_file())), None)
        if found is None:
            raise ConfigError(f"{source}: table.{key}: {'folder' if is_dir else 'file'} not found: {p} "
                              f"(looked in {', '.join(str(r) for r in roots)}; set table.data_dir or "
                              f"$DISCOVERY_DATA_DIR)")
        update[key] = found
    return table.model_copy(update=update)


def load_benchmark_config(path: str | Path, overrides: list[str] | None = None) -> BenchmarkConfig:
    """Read, override, validate a benchmark file and resolve its table paths.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    path = Path(path)
    raw = apply_overrides(read_yaml_mapping(path, "benchmark"), overrides, str(path))
    config = validate_model(BenchmarkConfig, raw, str(path))
    return config.model_copy(update={"table": resolve_table(config.table, path.parent, str(path))})
