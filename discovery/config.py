"""The campaign file: pydantic models with defaults, validated before anything runs.

Every model forbids unknown keys and is frozen. The component sections (``generators``,
``surrogate``, ``mlip``, ``dft``, ``policy``) are discriminated unions over the kinds in
`discovery.registry`, so this module imports no component module; the schema is rebuilt whenever
a kind is registered (a plugin, a test). `load_config` applies ``--set key.path=value`` overrides
to the raw YAML *before* validation, so an override is checked like the file itself. Errors come
back as one `ConfigError` line: ``FILE: key.path: what was expected``.

Model folders of trained generators or surrogates (`discovery.lifecycle.TrainedModelFields`) are
resolved relative to the campaign file and checked when it is read (`discovery.lifecycle.
check_model_folder`): a folder that can serve neither as it is nor by training is refused before
anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from discovery import registry
from discovery.configbase import (MAX_CPUS, MAX_DFT_PER_ROUND, MAX_DFT_SLOTS, MAX_ROUNDS, Strict, apply_overrides,
                                  read_yaml_mapping, validate)
from discovery.configbase import flatten  # noqa: F401 - re-export
from discovery.errors import ConfigError
from discovery.lifecycle import check_model_folder, model_sources, resolve_model_paths
from discovery.policies.configs import GeneratorBanditConfig  # the loop's bandit, not a component kind
from discovery.filters import FilterConfig

__all__ = ["CampaignConfig", "load_config", "validate_config", "config_to_yaml", "flatten"]


def _check_element(symbol: str) -> str:
    from pymatgen.core.periodic_table import Element

    if not Element.is_valid_symbol(symbol):
        raise ValueError(f"unknown element {symbol!r}")
    return symbol


# ----------------------------------------------------------------------------- chemistry, data


class ReferencePhaseConfig(Strict):
    """A known competing phase built from a prototype, computed once to anchor the hull."""

    formula: str
    prototype: str

    @field_validator("formula")
    @classmethod
    def _formula(cls, v: str) -> str:
        from pymatgen.core import Composition

        try:
            comp = Composition(v)
        except Exception as exc:  # pymatgen raises several types for bad formulas
            raise ValueError(f"cannot parse formula {v!r}: {exc}") from None
        for el in comp.elements:
            _check_element(el.symbol)
        return v


class ChemistryConfig(Strict):
    """Which elements the campaign explores and how large its cells may get."""

    elements: list[str] = Field(default_factory=lambda: ["K", "Rb", "Mg", "Ca", "Cl"], min_length=2)
    max_atoms: int = Field(8, ge=1, le=200)
    reference_phases: list[ReferencePhaseConfig] = Field(default_factory=list)

    @field_validator("elements")
    @classmethod
    def _elements(cls, v: list[str]) -> list[str]:
        for s in v:
            _check_element(s)
        if len(set(v)) != len(v):
            raise ValueError("elements must be unique")
        return v


class CsvSourceConfig(Strict):
    """A CDVAE-format CSV (CIF strings in column ``cif``)."""

    path: Path
    max_rows: int | None = Field(None, ge=1)
    only_campaign_elements: bool = True


class ValidationConfig(Strict):
    """CAMD-style validation: known phases withheld from everything the campaign starts from (seeds
    and prototype decorations), to see whether it finds them again. A DFT result matching one
    (StructureMatcher) within the hit threshold of the campaign hull counts as *rediscovered*."""

    withhold: list[ReferencePhaseConfig] = Field(default_factory=list, max_length=100)


class DataConfig(Strict):
    """Seed structures: built-in prototypes, CDVAE CSVs and CIF folders."""

    prototypes: bool = True
    cdvae_csv: list[CsvSourceConfig] = Field(default_factory=list)
    cif_dirs: list[Path] = Field(default_factory=list)


# ----------------------------------------------------------------------------- loop settings


class CompositionFirstConfig(Strict):
    """Composition-first proposals: every generator whose kind proposes compositions (CondGAN,
    CondVAE) hands its formulas to every generator whose kind takes a composition (substitution,
    random_symmetric, CD-VAE, crystal GAN); each pair is one bandit arm
    (`discovery.campaign.allocation`)."""

    enabled: bool = True
    structure_generators: list[str] | None = Field(
        None, description="labels of the generators that build the structures; default: every one that can")
    compositions_per_arm: int = Field(3, ge=1, le=100, description="distinct formulas an arm asks for per round")


class ResourceConfig(Strict):
    """What one component's Ray actor asks the cluster for (per DFT slot for ``dft``)."""

    num_cpus: float | None = Field(None, ge=0, description="None: 1 per DFT slot, 0 for other components")
    num_gpus: float | None = Field(None, ge=0, description="None: 1 for a device: cuda component, else 0")
    memory_gb: float | None = Field(None, gt=0, description="memory Ray reserves for the actor")
    custom: dict[str, float] = Field(default_factory=dict, description="custom Ray resources, e.g. {gpu_node: 1}")


def _default_resources() -> dict[str, ResourceConfig]:
    return {"dft": ResourceConfig(num_cpus=1)}


class ExecutionConfig(Strict):
    """Where work runs: in this process or on Ray (a local instance or a cluster).

    ``resources`` sets what each component's actor asks Ray for, keyed ``dft`` (per slot),
    ``surrogate``, ``mlip``, ``generators`` (every generator) or a generator's label (``icsg3d``,
    ``substitution-1``); a component with ``device: cuda`` gets a GPU unless its entry says otherwise.
    DFT actors also ask for one unit of the custom resource ``dft_resource``, replacements included,
    so on a cluster they land only on DFT nodes (which the autoscaler starts when none is up);
    ``dft_resource: auto`` asks for it when running locally (where the campaign defines it) or when
    the cluster has it. A calculation's own memory cap is the oracle's ``memory_gb`` (enforced in its
    subprocess); ``resources.dft.memory_gb`` also reserves it with Ray, for clusters whose node
    types declare their memory.
    """

    backend: Literal["ray", "local"] = "ray"
    address: str | None = Field(None, description="Ray cluster address; default: a local instance")
    dft_slots: int = Field(2, ge=1, le=MAX_DFT_SLOTS, description="concurrent DFT calculations (one CPU each)")
    num_cpus: int | None = Field(None, ge=1, le=MAX_CPUS, description="CPUs of a local Ray instance")
    max_attempts: int = Field(2, ge=1, le=10, description="attempts per DFT calculation when a failure is "
                              "retryable (a lost worker or node, an out-of-memory kill, a timeout)")
    information_lag: int = Field(1, ge=0, le=10, description="round N is planned from the DFT results of rounds "
                                 "<= N-1-information_lag only (references count as round -1), whatever arrived "
                                 "since: the campaign's outcome then does not depend on timing, while round N-1's "
                                 "calculations still overlap round N's planning; 0: no overlap")
    dft_resource: str | None = Field("auto", description="custom Ray resource DFT actors ask for; null: none")
    resources: dict[str, ResourceConfig] = Field(default_factory=_default_resources)


class TrackingConfig(Strict):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="default: sqlite store in the campaign folder")
    experiment: str | None = Field(None, description="default: the campaign name")


class ObjectiveConfig(Strict):
    """What counts as a hit: a DFT-validated, novel crystal close to the campaign hull."""

    hit_e_above_hull_ev: float = Field(0.05, ge=0)


# ----------------------------------------------------------------------------- the campaign

#: The kind a component section gets when it names none, and the default section itself.
DEFAULT_KINDS = {"surrogate": "cgcnn_ensemble", "mlip": "chgnet", "dft": "gpaw", "policy": "ucb"}
DEFAULT_GENERATORS = ({"kind": "substitution"}, {"kind": "random_symmetric"})


GeneratorConfig = registry.component_field("generator")
SurrogateConfig = registry.component_field("surrogate", DEFAULT_KINDS["surrogate"])
MLIPConfig = registry.component_field("mlip", DEFAULT_KINDS["mlip"])
DFTConfig = registry.component_field("dft", DEFAULT_KINDS["dft"])
PolicyConfig = registry.component_field("policy", DEFAULT_KINDS["policy"])


class CampaignConfig(Strict):
    """One campaign: chemistry, data, components, budget and where things run.

    The component fields are validated against the registry (see the module docstring). Counts
    are bounded (`discovery.configbase.MAX_ROUNDS` and its neighbours); a campaign *file* must
    also state `REQUIRED_KEYS` (checked by `load_config`; the defaults here serve code and tests).
    """

    name: str = Field("campaign", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$",
                      description="a folder name: letters, digits, _ . - (not starting with a dot)")
    seed: int = Field(0, ge=0, lt=2**63)
    rounds: int = Field(3, ge=1, le=MAX_ROUNDS)
    dft_per_round: int = Field(4, ge=1, le=MAX_DFT_PER_ROUND)
    chemistry: ChemistryConfig = ChemistryConfig()
    data: DataConfig = DataConfig()
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [dict(g) for g in DEFAULT_GENERATORS], min_length=1, validate_default=True)
    filters: FilterConfig = FilterConfig()
    surrogate: SurrogateConfig = Field(
        default_factory=lambda: {"kind": DEFAULT_KINDS["surrogate"]}, validate_default=True)
    mlip: MLIPConfig = Field(default_factory=lambda: {"model": DEFAULT_KINDS["mlip"]}, validate_default=True)
    dft: DFTConfig = Field(default_factory=lambda: {"kind": DEFAULT_KINDS["dft"]}, validate_default=True)
    policy: PolicyConfig = Field(default_factory=lambda: {"kind": DEFAULT_KINDS["policy"]}, validate_default=True)
    objective: ObjectiveConfig = ObjectiveConfig()
    validation: ValidationConfig = ValidationConfig()
    bandit: GeneratorBanditConfig | None = Field(
        default_factory=lambda: GeneratorBanditConfig(min_share=0.2),
        description="share proposals among generator arms by DFT-confirmed hits; null: n_per_round each")
    composition_first: CompositionFirstConfig = CompositionFirstConfig()
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _phases_in_chemistry(self) -> CampaignConfig:
        from pymatgen.core import Composition

        allowed = set(self.chemistry.elements)
        references = {(Composition(p.formula).reduced_formula, p.prototype) for p in self.chemistry.reference_phases}
        for where, phases in (("chemistry.reference_phases", self.chemistry.reference_phases),
                              ("validation.withhold", self.validation.withhold)):
            for i, phase in enumerate(phases):
                extra = {e.symbol for e in Composition(phase.formula).elements} - allowed
                if extra:
                    raise ValueError(f"{where}.{i}: {phase.formula} has elements {sorted(extra)} "
                                     "outside chemistry.elements")
                if where == "validation.withhold" and (Composition(phase.formula).reduced_formula,
                                                       phase.prototype) in references:
                    raise ValueError(f"{where}.{i}: {phase.formula} ({phase.prototype}) is also a reference "
                                     "phase, so it cannot be withheld")
        return self

    def components(self) -> list[tuple[str, Any]]:
        """``(key path, config)`` of every component section (``generators.0``, ``surrogate``, ...)."""
        return [*((f"generators.{i}", g) for i, g in enumerate(self.generators)),
                ("surrogate", self.surrogate), ("mlip", self.mlip), ("dft", self.dft), ("policy", self.policy)]


# ----------------------------------------------------------------------------- loading

#: What a campaign file must state itself (the model's defaults serve code and tests): its name,
#: which is its folder, and the elements it explores. An empty file would otherwise start a full
#: default campaign.
REQUIRED_KEYS = ("name", "chemistry.elements")


def validate_config(raw: dict[str, Any], source: str = "<config>") -> CampaignConfig:
    """Validate a raw campaign mapping (paths are taken as they are; see `load_config`)."""
    return validate(CampaignConfig, raw, source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> CampaignConfig:
    """Read, override and validate a campaign file, resolve its paths and check its model folders.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    path = Path(path)
    source = str(path)
    raw = read_yaml_mapping(path, "campaign")
    if overrides and "generators" not in raw and any(o.startswith("generators.") for o in overrides):
        raw["generators"] = [dict(g) for g in DEFAULT_GENERATORS]  # --set generators.0.x edits the default list
    raw = apply_overrides(raw, overrides, source)
    config = _resolve_paths(validate_config(raw, source), path.parent, source)
    _check_required(raw, source)
    return config


def _check_required(raw: dict[str, Any], source: str) -> None:
    """`REQUIRED_KEYS` are in the file (or an override); checked last, so a wrong value or path is
    reported before a missing key."""
    for dotted in REQUIRED_KEYS:
        node: Any = raw
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            raise ConfigError(f"{source}: {dotted}: required key is missing (a campaign file states at least "
                              f"{' and '.join(REQUIRED_KEYS)})")


def _resolve_paths(config: CampaignConfig, base: Path, source: str) -> CampaignConfig:
    """Make input paths absolute (relative to the campaign file), check that they exist, and check
    every model folder the components load."""
    csvs = []
    for i, csv in enumerate(config.data.cdvae_csv):
        p = (csv.path if csv.path.is_absolute() else base / csv.path).resolve()
        if not p.is_file():
            raise ConfigError(f"{source}: data.cdvae_csv.{i}.path: file not found: {csv.path}")
        csvs.append(csv.model_copy(update={"path": p}))
    dirs = []
    for i, d in enumerate(config.data.cif_dirs):
        p = (d if d.is_absolute() else base / d).resolve()
        if not p.is_dir():
            raise ConfigError(f"{source}: data.cif_dirs.{i}: folder not found: {d}")
        dirs.append(p)
    data = config.data.model_copy(update={"cdvae_csv": csvs, "cif_dirs": dirs})
    generators = [resolve_model_paths(g, base, source, f"generators.{i}") for i, g in enumerate(config.generators)]
    surrogate = resolve_model_paths(config.surrogate, base, source, "surrogate")
    config = config.model_copy(update={"data": data, "generators": generators, "surrogate": surrogate})
    _check_model_folders(config, source)
    return config


def _check_model_folders(config: CampaignConfig, source: str) -> None:
    """No two components train into one folder; every folder can serve its component."""
    trained_by: dict[Path, str] = {}
    users: dict[Path, str] = {}
    for where, component in config.components():
        for sub, fields in model_sources(component):
            key = f"{where}.{sub}" if sub else where
            folder = fields.checkpoint_dir
            # a folder one component trains into is that component's alone
            other = users.get(folder) if fields.train_data is not None else trained_by.get(folder)
            if other is not None and other != key:
                raise ConfigError(f"{source}: {key}.checkpoint_dir: {other} uses the same folder and one of them "
                                  "trains into it; give each its own checkpoint_dir")
            users.setdefault(folder, key)
            if fields.train_data is not None:
                trained_by.setdefault(folder, key)
            check_model_folder(fields, f"{source}: {key}")


def config_to_yaml(config: CampaignConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
