"""Campaign config: defaults, overrides and one-line errors that name file, key and expectation."""

from pathlib import Path

import pytest
import yaml

from discovery.config import CampaignConfig, load_config
from discovery.configbase import flatten
from discovery.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


#: What every campaign file must state (`discovery.config.REQUIRED_KEYS`).
REQUIRED = "name: t\nchemistry: {elements: [K, Rb, Mg, Ca, Cl]}\n"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_campaign_file_validates_and_states_every_section():
    cfg = load_config(REPO / "configs" / "campaign.yaml")
    assert cfg.dft.kind == "gpaw" and cfg.execution.backend == "ray"
    raw = yaml.safe_load((REPO / "configs" / "campaign.yaml").read_text())
    assert set(raw) == set(CampaignConfig.model_fields), "campaign.yaml should state every section"


def test_icsg3d_example_campaign_validates_where_its_training_data_exists():
    from discovery.generators.icsg3d import ICSG3DGeneratorConfig

    path = REPO / "configs" / "icsg3d_perovskites.yaml"
    data = (path.parent / yaml.safe_load(path.read_text())["generators"][1]["train_data"]).resolve()
    if not data.is_file():
        pytest.skip(f"{data} is absent (the shared Perov-5 data); the example trains on it")
    model = (REPO / "runs" / "icsg3d-perov5-cpu").resolve()
    if model.exists():
        pytest.skip(f"{model} exists: the check would compare against that model")
    cfg = load_config(path)
    icsg3d = cfg.generators[1]
    assert isinstance(icsg3d, ICSG3DGeneratorConfig) and icsg3d.preset == "cpu"
    assert icsg3d.checkpoint_dir == model and icsg3d.train_data == data
    assert icsg3d.training_config().condition_property == "heat_ref"


def test_presets_fill_model_sizes_and_explicit_keys_win(tmp_path):
    cfg = load_config(write(tmp_path, REQUIRED + "surrogate: {preset: faithful, lr: 0.002}\n"))
    assert cfg.surrogate.n_conv == 3 and cfg.surrogate.atom_fea_len == 64
    assert cfg.surrogate.lr == 0.002


def test_overrides_apply_before_validation(tmp_path):
    cfg = load_config(write(tmp_path, REQUIRED + "rounds: 2\n"), ["rounds=5", "dft.cutoff_ev=450", "policy.kappa=2.5",
                                                       "generators.0.n_per_round=3"])
    assert cfg.rounds == 5 and cfg.dft.cutoff_ev == 450 and cfg.policy.kappa == 2.5
    assert cfg.generators[0].n_per_round == 3
    with pytest.raises(ConfigError, match="rounds"):
        load_config(write(tmp_path, "rounds: 2\n"), ["rounds=zero"])


@pytest.mark.parametrize("text, expected", [
    ("rounds: [1, 2\n", "malformed YAML at line"),
    ("roundz: 3\n", "roundz: unknown key"),
    ("rounds: three\n", "rounds: Input should be a valid integer"),
    ("chemistry: {elements: [K, Xx, Cl]}\n", "chemistry.elements: unknown element 'Xx'"),
    ("dft: {kind: vasp}\n", "dft"),
    ("data: {cdvae_csv: [{path: missing.csv}]}\n", "data.cdvae_csv.0.path: file not found"),
    ("- a\n- b\n", "expected a mapping"),
    ("chemistry: {elements: [K, Cl], reference_phases: [{formula: NaCl, prototype: rocksalt}]}\n",
     "outside chemistry.elements"),
    ("rounds: 3\nseed: 1\nrounds: 4\n", "duplicate key 'rounds' at line 3"),
    ("name: ..\n", "name: String should match pattern"),
    ("rounds: 1000000000\n", "rounds: Input should be less than or equal to 10000 (got"),
    ("", "name: required key is missing"),
    ("name: t\nchemistry: {max_atoms: 4}\n", "chemistry.elements: required key is missing"),
    ("generators: [{kind: substitution, n_per_round: 100000000}]\n", "generators.0.n_per_round: Input should be less"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\nrounds: *f\n",
     "more than 200,000 values"),
    ("rounds: &r [1, 2]\nseed: &s [*r, *r]\nname: [*s, *s, *s]\n", "name: Input should be a valid string"),
])
def test_bad_input_gives_one_line_naming_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300 + len(str(path))
    assert msg.startswith(str(path))
    assert expected in msg


def test_missing_campaign_file(tmp_path):
    with pytest.raises(ConfigError, match="campaign file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen_and_flattens_for_mlflow():
    cfg = CampaignConfig()
    with pytest.raises(Exception):
        cfg.rounds = 4
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["dft.cutoff_ev"] == cfg.dft.cutoff_ev
    assert flat["generators.0.kind"] == "substitution"
