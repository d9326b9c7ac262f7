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
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator,
                      field_validator, model_validator)
from pydantic_core import InitErrorDetails

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
    decile_weight: float = Field(
        1.0, ge=0.0, description="extra weight of labelled parents in the target formation-energy decile")


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


class ICSG3DGeneratorConfig(Strict):
    """ICSG3D (Cond-DFC-VAE + 3-D UNet on voxel maps), trained with ``discovery train icsg3d`` or here.

    ``checkpoint_dir`` is the model folder (with ``icsg3d.json``); ``preset`` names the model sizes
    the campaign wants. When the folder holds no model and ``train_data`` is given, the campaign
    trains one there before its workers start (`discovery.launch.train_generator_models`: the same
    run as the training command with ``preset`` and ``train`` as its ``--set`` overrides); a later
    start or ``--resume`` finds it and does not train again. A folder that holds a model of another preset
    or configuration is refused. Relative paths are taken from the campaign file's folder. See
    `discovery.generators.icsg3d` for modes and feedback.
    """

    kind: Literal["icsg3d"] = "icsg3d"
    checkpoint_dir: Path
    preset: Literal["cpu", "faithful"] | None = Field(
        None, description="model sizes (cpu or faithful); None: whatever checkpoint_dir holds")
    train_data: Path | None = Field(
        None, description="CDVAE CSV to train on when checkpoint_dir holds no model yet")
    train: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the preset for that training, e.g. "
                                          "{condition_property: heat_ref, vae: {epochs: 10}}")
    train_seed: int = Field(0, ge=0)
    n_per_round: int = Field(20, ge=1)
    mode: Literal["random", "targeted"] = "targeted"
    target_decile: int | None = Field(
        None, ge=0, description="condition decile to sample; default: the lowest (most stable) one")
    latent_scale: float = Field(0.5, gt=0, description="std of targeted samples around a base's latent mean")
    device: Literal["cpu", "cuda"] = "cpu"
    fine_tune_epochs: int = Field(0, ge=0, description="VAE epochs on confirmed hits after each update (0: off)")
    restrict_species: bool = Field(True, description="decode only the campaign's elements")

    @model_validator(mode="after")
    def _training_config(self) -> ICSG3DGeneratorConfig:
        if (self.train or self.train_seed) and self.train_data is None:
            raise ValueError("train and train_seed need train_data")
        if self.train_data is not None:
            self.training_config()
        return self

    def training_config(self):
        """The `ICSG3DConfig` a training here would use (preset, default cpu, plus ``train``)."""
        from discovery.models.icsg3d_presets import ICSG3DConfig

        if "preset" in self.train:
            raise ValueError("train.preset: use the generator's preset key")
        try:
            return ICSG3DConfig.model_validate({**self.train, "preset": self.preset or "cpu"})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(["train", *(str(x) for x in err["loc"])])
            more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise ValueError(f"{where}: {err['msg'].removeprefix('Value error, ')}{more}") from None


GeneratorConfig = Annotated[
    SubstitutionGeneratorConfig | RandomSymmetricGeneratorConfig | ICSG3DGeneratorConfig,
    Field(discriminator="kind"),
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
    recalibrate: bool = Field(
        True, description="scale the ensemble std to fit the validation split (needs >= 5 labels)")
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
    """How a batch is spread out once candidates are scored (applied by every policy).

    ``method`` picks the rule among the top ``candidates_factor * k`` candidates by score:
    ``kcenter`` (greedy k-center in the embedding, starting from the best score), ``dpp`` (greedy MAP
    of a determinantal point process, quality = exp(standardised score), RBF similarity),
    ``min_distance`` (walk by score, skip those closer than ``min_distance`` to a chosen one) or
    ``none`` (score order). ``max_per_formula`` holds in every method. Embeddings are the
    surrogate's (`Posterior.embeddings`); without them every method falls back to score order.
    """

    method: Literal["none", "kcenter", "dpp", "min_distance"] = "none"
    candidates_factor: int = Field(5, ge=1, description="diversify among the top factor * k by score")
    min_distance: float = Field(0.0, ge=0, description="in embedding units (method min_distance)")
    dpp_bandwidth: float | None = Field(
        None, gt=0, description="RBF length scale in embedding units; default: median pairwise distance")
    max_per_formula: int = Field(1, ge=1)


class RandomPolicyConfig(Strict):
    """Uniformly random batch (the baseline; needs no surrogate)."""

    kind: Literal["random"] = "random"
    diversity: DiversityConfig = DiversityConfig()


class GreedyPolicyConfig(Strict):
    """Highest utility of the predicted means."""

    kind: Literal["greedy"] = "greedy"
    diversity: DiversityConfig = DiversityConfig()


class UCBPolicyConfig(Strict):
    """Upper confidence bound on the utility: mean + kappa * std."""

    kind: Literal["ucb"] = "ucb"
    kappa: float = Field(1.0, ge=0, description="exploration weight on the utility's std")
    diversity: DiversityConfig = DiversityConfig()


class EIPolicyConfig(Strict):
    """Expected improvement of the utility over an incumbent (Gaussian closed form)."""

    kind: Literal["ei"] = "ei"
    incumbent: Literal["threshold", "best"] = Field(
        "threshold", description="threshold: utility 0 (the hit boundary); best: best labelled utility")
    xi: float = Field(0.0, ge=0, description="required margin over the incumbent, in utility units")
    diversity: DiversityConfig = DiversityConfig()


class PIPolicyConfig(Strict):
    """Probability that the utility beats an incumbent (Gaussian closed form)."""

    kind: Literal["pi"] = "pi"
    incumbent: Literal["threshold", "best"] = "threshold"
    xi: float = Field(0.0, ge=0)
    diversity: DiversityConfig = DiversityConfig()


class ThompsonPolicyConfig(Strict):
    """Batch Thompson sampling: one posterior draw per batch slot."""

    kind: Literal["thompson"] = "thompson"
    diversity: DiversityConfig = DiversityConfig()


class ConstraintPolicyConfig(Strict):
    """Probability that every bound of the objective holds (window constraints on several properties)."""

    kind: Literal["constraint"] = "constraint"
    diversity: DiversityConfig = DiversityConfig()


class MultiFidelityPolicyConfig(Strict):
    """Cost-aware selection: screen with a cheap oracle, fuse with the surrogate, then UCB."""

    kind: Literal["multi_fidelity"] = "multi_fidelity"
    screen_factor: int = Field(5, ge=1, description="cheap calls per batch slot")
    kappa: float = Field(1.0, ge=0)
    cheap_noise_std: float = Field(
        0.1, ge=0, description="prior std of cheap - expensive, in property units, until 5 pairs are seen")
    cheap_cost: float = Field(0.01, ge=0, description="cost of one cheap call per expensive call (reporting)")
    diversity: DiversityConfig = DiversityConfig()


class GeneratorBanditConfig(Strict):
    """Sharing a proposal budget among generator arms ("generator|condition") by their DFT hit rate."""

    kind: Literal["thompson", "ucb1"] = "thompson"
    min_share: float = Field(0.05, ge=0, lt=1, description="budget share every arm gets, so none starves")
    prior_hits: float = Field(1.0, gt=0, description="Beta prior pseudo-count of hits")
    prior_misses: float = Field(1.0, gt=0, description="Beta prior pseudo-count of misses")
    exploration: float = Field(1.0, ge=0, description="UCB1 bonus weight")


BanditConfig = GeneratorBanditConfig

_POLICY_CONFIGS = (RandomPolicyConfig, GreedyPolicyConfig, UCBPolicyConfig, EIPolicyConfig, PIPolicyConfig,
                   ThompsonPolicyConfig, ConstraintPolicyConfig, MultiFidelityPolicyConfig)
_POLICY_KINDS = {cls.model_fields["kind"].default for cls in _POLICY_CONFIGS}


def _default_policy_kind(data: Any) -> Any:
    """``policy: {kappa: 2.0}`` (no kind) means UCB, as before the union existed."""
    if isinstance(data, dict) and "kind" not in data:
        return {"kind": "ucb", **data}
    return data


def _drop_policy_tag(data: Any, handler: Any) -> Any:
    """Report ``policy.kappa``, not ``policy.ucb.kappa``: the union's tag is not a key the user wrote."""
    try:
        return handler(data)
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            loc = err["loc"]
            if loc and loc[0] in _POLICY_KINDS:
                loc = loc[1:]
            details.append(InitErrorDetails(type=err["type"], loc=loc, input=err.get("input"),
                                            ctx=err.get("ctx", {})))
        try:
            stripped = ValidationError.from_exception_data(exc.title, details)
        except Exception:  # an error type pydantic cannot rebuild: keep the original
            raise exc from None
        raise stripped from None


PolicyConfig = Annotated[
    RandomPolicyConfig | GreedyPolicyConfig | UCBPolicyConfig | EIPolicyConfig | PIPolicyConfig
    | ThompsonPolicyConfig | ConstraintPolicyConfig | MultiFidelityPolicyConfig,
    Field(discriminator="kind"), BeforeValidator(_default_policy_kind), WrapValidator(_drop_policy_tag),
]


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
    surrogate: Annotated[CGCNNEnsembleConfig | ForestSurrogateConfig, Field(discriminator="kind")] = Field(
        default_factory=lambda: CGCNNEnsembleConfig())
    mlip: MLIPConfig = MLIPConfig()
    dft: DFTOracleConfig = Field(default_factory=GPAWConfig)
    policy: PolicyConfig = Field(default_factory=UCBPolicyConfig)
    objective: ObjectiveConfig = ObjectiveConfig()
    bandit: GeneratorBanditConfig | None = Field(
        default_factory=lambda: GeneratorBanditConfig(min_share=0.2),
        description="share proposals among generators by DFT-confirmed hits; null: n_per_round each")
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, data: Any) -> Any:
        """``dft:`` without a kind is GPAW, ``surrogate:`` without one the CGCNN ensemble."""
        for key, kind in (("dft", "gpaw"), ("surrogate", "cgcnn_ensemble")):
            if isinstance(data, dict) and isinstance(data.get(key), dict) and "kind" not in data[key]:
                data = {**data, key: {"kind": kind, **data[key]}}
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


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file is an empty mapping), or `ConfigError` in one
    line naming the file."""
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: {what} file not found")
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
    return copy.deepcopy(raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> CampaignConfig:
    """Read, override and validate a campaign file.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    path = Path(path)
    source = str(path)
    raw = read_yaml_mapping(path, "campaign")
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
    generators = [_resolve_generator_paths(g, i, base, source) for i, g in enumerate(config.generators)]
    folders: dict[Path, int] = {}
    for i, gen in enumerate(generators):
        if isinstance(gen, ICSG3DGeneratorConfig):
            j = folders.setdefault(gen.checkpoint_dir, i)
            if j != i and (gen.train_data is not None or generators[j].train_data is not None):
                raise ConfigError(f"{source}: generators.{i}.checkpoint_dir: generators.{j} uses the same folder and "
                                  "one of them trains into it; give each its own checkpoint_dir")
    for i, gen in enumerate(generators):
        if isinstance(gen, ICSG3DGeneratorConfig):
            from discovery.generators.icsg3d import check_model_folder

            check_model_folder(gen, f"{source}: generators.{i}")
    return config.model_copy(update={"data": data, "generators": generators})


def _resolve_generator_paths(gen: Any, i: int, base: Path, source: str) -> Any:
    """ICSG3D model folders and training data, relative to the campaign file; the data must exist."""
    if not isinstance(gen, ICSG3DGeneratorConfig):
        return gen

    def absolute(p: Path) -> Path:
        return (p if p.is_absolute() else base / p).resolve()

    train_data = None
    if gen.train_data is not None:
        train_data = absolute(gen.train_data)
        if not train_data.is_file():
            raise ConfigError(f"{source}: generators.{i}.train_data: file not found: {gen.train_data}")
    return gen.model_copy(update={"checkpoint_dir": absolute(gen.checkpoint_dir), "train_data": train_data})


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
