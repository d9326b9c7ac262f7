"""Composition models through the lifecycle and as campaign generators (composition first, then structures)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from discovery.errors import DataError
from discovery.generators.composition_gan import (CompositionGANGeneratorConfig, CompositionVAEGeneratorConfig,
                                                  build)
from discovery.generators.composition_structures import structures_for_composition
from discovery.kinds import BuildContext
from discovery.models.composition_gan.config import CompositionGANConfig, CompositionVAEConfig
from discovery.models.composition_gan.trainer import COMPOSITION_GAN_TRAINER, COMPOSITION_VAE_TRAINER

from composition_gan_helpers import synthetic_table

# trains small models and builds pyxtal structures: several seconds each
pytestmark = pytest.mark.slow


def test_structures_for_composition_uses_prototypes_and_pyxtal():
    out = structures_for_composition("SrTiO3", ["Sr", "Ti", "O"], 10, np.random.default_rng(0), n_random=1)
    labels = [label for _, label in out]
    assert "prototype:perovskite" in labels
    assert any(label.startswith("random_symmetric:") for label in labels)
    assert all(s.composition.reduced_formula == "SrTiO3" and len(s) <= 10 for s, _ in out)
    assert structures_for_composition("SrTiO3", ["Sr", "Ti", "O"], 10, np.random.default_rng(0),
                                      methods=("prototype",)) == out[:1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("composition")
    path = synthetic_table(tmp, n_copies=1)
    out = {}
    for trainer, cfg in ((COMPOSITION_GAN_TRAINER, CompositionGANConfig(preset="cpu", epochs=3, batch_size=8)),
                         (COMPOSITION_VAE_TRAINER, CompositionVAEConfig(preset="cpu", epochs=3, batch_size=8))):
        data = trainer.read_data(path, cfg)
        model = trainer.train(data, cfg, tmp / trainer.name, seed=0)
        assert trainer.name in trainer.describe(model)
        out[trainer.name] = tmp / trainer.name
    return out


def test_trainers_write_loadable_folders(trained):
    for name, folder in trained.items():
        manifest = json.loads((folder / f"{name}.json").read_text())
        assert manifest["kind"] == name and manifest["dim"] == len(manifest["featurizer"]["elements"]) + 58
        assert "NaCl" in manifest["training_formulas"]
        trainer = COMPOSITION_GAN_TRAINER if name == "composition_gan" else COMPOSITION_VAE_TRAINER
        model = trainer.load(folder)
        props = model.propose(-3.0, 16, np.random.default_rng(0), iterations=200)
        assert len(props) == 16 and all(p.target == -3.0 for p in props)
        assert all(set(p.raw) <= set(model.featurizer.elements) for p in props)


def test_damaged_folder_is_one_line(trained, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(trained["composition_gan"], folder)
    (folder / "composition_gan.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="sha256") as err:
        COMPOSITION_GAN_TRAINER.load(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no trained composition_vae"):
        COMPOSITION_VAE_TRAINER.load(tmp_path)


@pytest.mark.parametrize("config_cls", [CompositionGANGeneratorConfig, CompositionVAEGeneratorConfig])
def test_generator_records_the_composition_model_and_structure_step(trained, config_cls):
    name = config_cls.model_name
    gen = build(config_cls(checkpoint_dir=trained[name], random_per_composition=1, mh_iterations=200),
                BuildContext(elements=("Mg", "O", "Ca"), max_atoms=8))
    cands = gen.propose(3, {"composition": "MgO", "round": 1}, np.random.default_rng(0))
    assert 1 <= len(cands) <= 3
    for c in cands:
        assert c.formula == "MgO" and c.generator == name
        assert c.conditions["composition_model"] == name and c.conditions["target_formation_energy_ev"] == -3.0
        assert c.conditions["structure_generator"].split(":")[0] in ("prototype", "random_symmetric")
        assert c.conditions["round"] == 1
    # without a composition the model proposes within the campaign's elements
    formulas = gen.propose_compositions(5, {"target_formation_energy_ev": -2.5}, np.random.default_rng(1))
    for f in formulas:
        assert set(f["counts"]) <= {"Mg", "O", "Ca"} and f["target_formation_energy_ev"] == -2.5
