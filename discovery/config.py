"""Campaign configuration: pydantic models with defaults, validated before anything runs.

Every model forbids unknown keys and is frozen. `load_config` applies ``--set key.path=value``
overrides to the raw YAML *before* validation, so an override is checked like the file itself.
Errors come back as one `ConfigError` line: ``FILE: key.path: what was expected``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from discovery.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class DataConfig(Strict):
    """Seed structures: built-in prototypes, CDVAE CSVs and CIF folders."""

    prototypes: bool = True
    cdvae_csv: list[CsvSourceConfig] = Field(default_factory=list)
    cif_dirs: list[Path] = Field(default_factory=list)


# ----------------------------------------------------------------------------- generators


class SubstitutionGeneratorConfig(Strict):
    """Ion substitution on known structures, weighted by pymatgen substitution probabilities."""

    kind: Literal["substitution"] = "substitution"
    n_per_round: int = Field(40, ge=1)
    max_substitutions: int = Field(2, ge=1, description="sites species swapped per child")
    hit_weight: float = Field(4.0, ge=1.0, description="sampling weight of DFT hits as parents (others: 1)")


class RandomSymmetricGeneratorConfig(Strict):
    """Random symmetric structures (pyxtal) for charge-balanced compositions of the campaign."""

    kind: Literal["random_symmetric"] = "random_symmetric"
    n_per_round: int = Field(20, ge=1)
    space_groups: list[int] | None = Field(None, description="default: all 230")
    volume_factor: float = Field(1.1, gt=0.3, lt=5.0)
    max_attempts: int = Field(10, ge=1)

    @field_validator("space_groups")
    @classmethod
    def _groups(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 1 <= g <= 230 for g in v):
            raise ValueError("space groups are numbers 1..230")
        return v


GeneratorConfig = Annotated[
    SubstitutionGeneratorConfig | RandomSymmetricGeneratorConfig, Field(discriminator="kind")
]


class FilterConfig(Strict):
    """Validity, de-duplication and novelty checks applied to every proposal."""

    min_distance_a: float = Field(0.5, gt=0.0)
    charge_neutral: bool = True
    novelty: bool = True
    matcher_ltol: float = 0.2
    matcher_stol: float = 0.3
    matcher_angle_tol: float = 5.0


# ----------------------------------------------------------------------------- surrogate

CGCNN_PRESETS: dict[str, dict[str, Any]] = {
    # Xie & Grossman, PRL 120, 145301 (2018), defaults of the released code.
    "faithful": dict(atom_fea_len=64, h_fea_len=128, n_conv=3, n_h=1, lr=0.01, batch_size=256,
                     max_epochs=30, weight_decay=0.0, patience=30),
    # Same architecture family, losses and early-stopping schedule, sized for 2 cores.
    "cpu": dict(atom_fea_len=32, h_fea_len=64, n_conv=2, n_h=1, lr=0.005, batch_size=16,
                max_epochs=300, weight_decay=0.0, patience=40),
}


class CGCNNEnsembleConfig(Strict):
    """An ensemble of CGCNN regressors (torch_geometric CGConv) predicting formation energy."""

    kind: Literal["cgcnn_ensemble"] = "cgcnn_ensemble"
    preset: Literal["cpu", "faithful"] = "cpu"
    property: Literal["formation_energy_per_atom"] = "formation_energy_per_atom"
    ensemble_size: int = Field(5, ge=1)
    atom_fea_len: int = Field(..., ge=1)
    h_fea_len: int = Field(..., ge=1)
    n_conv: int = Field(..., ge=1)
    n_h: int = Field(..., ge=1)
    lr: float = Field(..., gt=0)
    batch_size: int = Field(..., ge=1)
    max_epochs: int = Field(..., ge=1)
    weight_decay: float = Field(..., ge=0)
    patience: int = Field(..., ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=0.9)
    cutoff_a: float = Field(8.0, gt=0)
    max_neighbors: int = Field(12, ge=1)
    bootstrap: bool = True
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where members train and predict; not part of the checkpoint identity")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            preset = data.get("preset", "cpu")
            if preset in CGCNN_PRESETS:
                data = {**CGCNN_PRESETS[preset], **data}
        return data


# ----------------------------------------------------------------------------- oracles


class MLIPConfig(Strict):
    """CHGNet pre-relaxation and screening against CHGNet's own hull."""

    enabled: bool = True
    model: Literal["chgnet"] = "chgnet"
    fmax_ev_per_a: float = Field(0.05, gt=0)
    max_steps: int = Field(300, ge=1)
    top_k: int = Field(16, ge=1, description="candidates per round relaxed by the MLIP")
    max_e_above_hull_ev: float = Field(0.2, description="screen: drop candidates above this MLIP e_hull")


class GPAWConfig(Strict):
    """GPAW plane-wave PBE relaxation (FrechetCellFilter + BFGS), one calculation per subprocess.

    Units: energies eV, lengths A, k-point density in 1/A (ASE convention), times s.
    """

    kind: Literal["gpaw"] = "gpaw"
    xc: Literal["PBE", "LDA"] = "PBE"  # gpaw-data ships PBE and LDA setups only
    cutoff_ev: float = Field(600.0, ge=200)
    cutoff_ev_o_f: float = Field(800.0, ge=200, description="used when O or F is present (DFT.md)")
    kpt_density: float = Field(2.0, gt=0)
    kpt_density_metals: float = Field(4.0, gt=0, description="elemental metal references")
    smearing_ev: float = Field(0.05, gt=0)
    smearing_ev_molecules: float = Field(0.01, gt=0)
    relax: bool = True
    fmax_ev_per_a: float = Field(0.05, gt=0)
    max_steps: int = Field(40, ge=0)
    max_stress_gpa: float = Field(0.5, gt=0, description="post-check on residual stress")
    maxiter: int = Field(200, ge=5)
    spin: Literal["auto", "on", "off"] = "auto"
    timeout_s: float = Field(900.0, gt=0)
    memory_gb: float = Field(4.0, gt=0)
    max_volume_per_atom_a3: float = Field(150.0, gt=0, description="Cs metal has 117 A^3/atom")
    max_plane_waves: int = Field(60000, ge=100)


class EMTConfig(Strict):
    """ASE's EMT potential as a stand-in for DFT, for tests that say so in their name."""

    kind: Literal["emt"] = "emt"
    relax: bool = True
    fmax_ev_per_a: float = 0.05
    max_steps: int = 40
    timeout_s: float = 120.0
    memory_gb: float = 2.0
    delay_s: float = Field(0.0, ge=0, description="extra sleep, to emulate a slow calculation")


DFTOracleConfig = Annotated[GPAWConfig | EMTConfig, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- policy, execution


class DiversityConfig(Strict):
    """Constraints that keep a batch from spending its DFT on near-copies."""

    max_per_formula: int = Field(1, ge=1)
    min_embedding_distance: float = Field(0.0, ge=0, description="in the surrogate's embedding")


class PolicyConfig(Strict):
    """Acquisition over the surrogate's prediction of e_above_hull (lower is better)."""

    kind: Literal["random", "greedy", "ucb"] = "ucb"
    kappa: float = Field(1.0, ge=0, description="UCB exploration weight on the ensemble std")
    diversity: DiversityConfig = DiversityConfig()


class ExecutionConfig(Strict):
    backend: Literal["ray", "local"] = "ray"
    address: str | None = Field(None, description="Ray cluster address; default: a local instance")
    dft_slots: int = Field(2, ge=1, description="concurrent DFT calculations (one CPU each)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance")


class TrackingConfig(Strict):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="default: sqlite store in the campaign folder")
    experiment: str | None = Field(None, description="default: the campaign name")


class ObjectiveConfig(Strict):
    """What counts as a hit: a DFT-validated, novel crystal close to the campaign hull."""

    hit_e_above_hull_ev: float = Field(0.05, ge=0)


class CampaignConfig(Strict):
    """One campaign: chemistry, data, components, budget and where things run."""

    name: str = Field("campaign", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    rounds: int = Field(3, ge=1)
    dft_per_round: int = Field(4, ge=1)
    chemistry: ChemistryConfig = ChemistryConfig()
    data: DataConfig = DataConfig()
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [SubstitutionGeneratorConfig(), RandomSymmetricGeneratorConfig()],
        min_length=1,
    )
    filters: FilterConfig = FilterConfig()
    surrogate: CGCNNEnsembleConfig = Field(default_factory=lambda: CGCNNEnsembleConfig())
    mlip: MLIPConfig = MLIPConfig()
    dft: DFTOracleConfig = Field(default_factory=GPAWConfig)
    policy: PolicyConfig = PolicyConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_dft_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("dft"), dict) and "kind" not in data["dft"]:
            data = {**data, "dft": {"kind": "gpaw", **data["dft"]}}
        return data

    @model_validator(mode="after")
    def _phases_in_chemistry(self) -> CampaignConfig:
        from pymatgen.core import Composition

        allowed = set(self.chemistry.elements)
        for i, phase in enumerate(self.chemistry.reference_phases):
            extra = {e.symbol for e in Composition(phase.formula).elements} - allowed
            if extra:
                raise ValueError(
                    f"chemistry.reference_phases.{i}: {phase.formula} has elements {sorted(extra)} "
                    "outside chemistry.elements"
                )
        return self


# ----------------------------------------------------------------------------- loading


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{source}: --set {dotted}: no list item {key!r}")
            node = node[int(key)]
            continue
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict | list):
            raise ConfigError(f"{source}: --set {dotted}: {'.'.join(keys[:depth + 1])} is not a mapping")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: --set {dotted}: no list item {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(overrides: list[str] | None, source: str = "--set") -> list[tuple[str, Any]]:
    """Parse ``key.path=value`` strings; values are YAML scalars or flow collections."""
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: --set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: --set {key}: value is not valid YAML ({exc.problem})") from None
        parsed.append((key.strip(), value))
    return parsed


def _format_validation_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {err['input']!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def validate_config(raw: dict[str, Any], source: str = "<config>") -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> CampaignConfig:
    """Read, override and validate a campaign file.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: campaign file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for key, value in parse_overrides(overrides, source):
        top = key.split(".")[0]
        default = CampaignConfig.model_fields.get(top)
        if top not in raw and default is not None and default.default_factory is not None:
            # e.g. --set generators.0.n_per_round=3 edits the default generator list
            value_default = CampaignConfig().model_dump(mode="json")[top]
            if isinstance(value_default, list):
                raw[top] = value_default
        _set_path(raw, key, value, source)
    config = validate_config(raw, source)
    return _resolve_paths(config, path.parent, source)


def _resolve_paths(config: CampaignConfig, base: Path, source: str) -> CampaignConfig:
    """Make input paths absolute (relative to the campaign file) and check that they exist."""
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
    return config.model_copy(update={"data": data})


def config_to_yaml(config: CampaignConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested config into ``a.b.c`` keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = v
    return out
