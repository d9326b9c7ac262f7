"""The crystal GAN's lifecycle trainer and campaign generator (roles, substitution, lineage)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from discovery.errors import DataError
from discovery.generators.crystal_gan import (CrystalGANGeneratorConfig, assign_roles, build, cell_counts,
                                              role_compositions)
from discovery.kinds import BuildContext
from discovery.models.crystal_gan.config import CrystalGANConfig
from discovery.models.crystal_gan.representation import encode
from discovery.models.crystal_gan.trainer import TRAINER

from crystal_gan_helpers import BLOCKS, TINY, spinel_like

# trains small models and builds pyxtal structures: several seconds each
pytestmark = pytest.mark.slow


def test_roles_and_cell_counts():
    assert assign_roles({"Ca": 1, "Ti": 1, "O": 3}, BLOCKS) == {"X": "O", "A": "Ca", "B": "Ti"}
    assert assign_roles({"Ti": 1, "O": 2}, BLOCKS) is None  # two elements cannot fill three roles
    species = {"A": "Ca", "B": "Ti", "X": "O"}
    assert cell_counts({"Ca": 1, "Ti": 1, "O": 3}, species, BLOCKS, 20) == [(1, 1, 3), (2, 2, 6), (3, 3, 9), (4, 4, 12)]
    assert cell_counts({"Ca": 2, "Ti": 2, "O": 6}, species, BLOCKS, 10) == [(1, 1, 3), (2, 2, 6)]
    pool = role_compositions(["Mg", "Mn", "O"], BLOCKS, 10)
    assert ({"A": "Mg", "B": "Mn", "X": "O"}, (1, 2, 4)) in pool  # MgMn2O4: Mg2+ and Mn3+
    assert all(sum(c) <= 10 for _, c in pool)
    wide = role_compositions(["Mg", "Mn", "O"], BLOCKS, 20)
    assert ({"A": "Mg", "B": "Mn", "X": "O"}, (1, 1, 12)) not in wide  # MgMnO12: no neutral states


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crystal_gan")
    rng = np.random.default_rng(7)
    comps = [(2, 4, 8), (1, 2, 4), (2, 2, 6)]
    path = tmp / "m.npy"
    np.save(path, np.array([encode(spinel_like(rng, c), BLOCKS) for c in comps for _ in range(2)]))
    config = CrystalGANConfig(preset="cpu", epochs=1, samples_per_composition=16, holdout=("Mg2Mn2O6",), **TINY)
    data = TRAINER.read_data(path, config)
    model = TRAINER.train(data, config, tmp / "model", seed=0)
    assert "crystal_gan (cpu)" in TRAINER.describe(model)
    return tmp / "model", data


def test_trainer_writes_a_loadable_folder(model_dir):
    folder, _ = model_dir
    manifest = json.loads((folder / "crystal_gan.json").read_text())
    assert manifest["holdout"] == ["Mg2Mn2O6"] and manifest["holdout_counts"] == [[2, 2, 6]]
    assert manifest["data"]["training_rows"] == 4 and manifest["data"]["augmented_rows"] == 32
    model = TRAINER.load(folder)
    out = model.generate((1, 2, 4), 3, np.random.default_rng(0), species={"A": "Ca"})
    assert len(out) == 3 and all(d.structure is None or "Ca" in d.structure.composition for d in out)
    # a damaged checkpoint is one line naming the file
    (folder / "crystal_gan.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="sha256") as err:
        TRAINER.load(folder)
    assert "\n" not in str(err.value)


def test_generator_substitutes_roles_and_records_lineage(tmp_path, model_dir):
    _, data = model_dir
    fresh = tmp_path / "model"  # its own folder: the test above damages the fixture's checkpoint
    config = CrystalGANConfig(preset="cpu", epochs=1, samples_per_composition=16, holdout=(), **TINY)
    TRAINER.train(data, config, fresh, seed=0)
    gen = build(CrystalGANGeneratorConfig(checkpoint_dir=fresh), BuildContext(elements=("Ca", "Ti", "O"), max_atoms=20))
    # stand in for a well trained generator: sample_matrices returns real Mg-Mn-O matrices of the asked counts
    rng = np.random.default_rng(1)

    def real_matrices(counts, _rng):
        mats = np.array([encode(spinel_like(rng, tuple(c)), BLOCKS) for c in counts])
        return mats, mats[:, 2:].sum(-1) > 0.4

    gen.model.sample_matrices = real_matrices
    cands = gen.propose(3, {"composition": "CaTiO3", "round": 2}, np.random.default_rng(0))
    assert len(cands) == 3
    for c in cands:
        assert c.formula == "CaTiO3" and c.generator == "crystal_gan"
        assert c.conditions["substitution"] == {"Mg": "Ca", "Mn": "Ti"}
        assert c.conditions["roles"] == {"X": "O", "A": "Ca", "B": "Ti"} and c.conditions["round"] == 2
        assert c.n_atoms <= 20
    assert gen.propose(2, {"composition": "TiO2"}, np.random.default_rng(0)) == []  # no A-B-X roles
    free = gen.propose(4, {}, np.random.default_rng(2))  # charge-balanced Ca-Ti-O counts of the campaign
    assert free and all(set(c.pmg.composition.get_el_amt_dict()) == {"Ca", "Ti", "O"} for c in free)
