"""CD-VAE's user errors: one line naming the file or key (bad data, damaged model folders, presets)."""

from __future__ import annotations

import json

import pytest

from discovery.errors import ConfigError, DataError
from discovery.lifecycle import file_sha256, training_config
from discovery.models.cdvae.presets import CDVAEConfig
from discovery.models.cdvae.trainer import MANIFEST_FORMAT, TRAINER

CIF = """data_NaCl
_cell_length_a 5.6
_cell_length_b 5.6
_cell_length_c 5.6
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na Na1 0 0 0
Cl Cl1 0.5 0.5 0.5
"""


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def write_csv(path, header, rows):
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def config() -> CDVAEConfig:
    return training_config(CDVAEConfig, "cpu", {}, "test")


def test_data_without_cif_column(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["material_id", "structure"], [["x", CIF]])
    with pytest.raises(DataError) as exc:
        TRAINER.read_data(path, config())
    assert str(path) in one_line(exc) and "'cif'" in str(exc.value)


def test_data_that_is_unreadable_throughout(tmp_path):
    path = write_csv(tmp_path / "junk.csv", ["cif", "heat_ref"], [["not a cif", "1.0"], ["nor this", "2.0"]])
    with pytest.raises(DataError) as exc:
        TRAINER.read_data(path, config())
    assert str(path) in one_line(exc) and "no readable crystal" in str(exc.value)
    with pytest.raises(DataError) as exc:
        TRAINER.read_data(tmp_path / "missing.csv", config())
    assert "not found" in one_line(exc)


def test_named_property_column_must_exist(tmp_path):
    path = write_csv(tmp_path / "nacl.csv", ["cif", "heat_ref"], [[CIF, "0.1"], [CIF.replace("5.6", "5.9"), "0.2"]])
    data = TRAINER.read_data(path, config())
    assert data.property == "heat_ref" and len(data) == 2
    bad = training_config(CDVAEConfig, "cpu", {"property": "band_gap"}, "test")
    with pytest.raises(DataError) as exc:
        TRAINER.read_data(path, bad)
    assert "band_gap" in one_line(exc) and str(path) in str(exc.value)
    assert TRAINER.read_data(path, training_config(CDVAEConfig, "cpu", {"property": None}, "test")).property is None


def test_wrong_preset_and_unknown_keys():
    with pytest.raises(ConfigError) as exc:
        training_config(CDVAEConfig, "gpu", {}, "train")
    assert "preset 'gpu'" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        training_config(CDVAEConfig, "cpu", ["encoder.width=3"], "--set")
    assert "encoder.width" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        training_config(CDVAEConfig, "cpu", ["lr=-1"], "--set")
    assert "lr" in one_line(exc)


def fake_folder(folder, model_bytes: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(model_bytes)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "kind": "cdvae", "preset": "cpu",
                "config": config().model_dump(mode="json"), "seed": 0, "data": {}, "metrics": {},
                "files": {"model": {"path": "model.pt", "sha256": file_sha256(folder / "model.pt")}},
                "versions": {}}
    (folder / "cdvae.json").write_text(json.dumps(manifest))
    return folder


def test_corrupt_checkpoint_is_one_data_error(tmp_path):
    folder = fake_folder(tmp_path / "m", b"definitely not a torch file")
    with pytest.raises(DataError) as exc:
        TRAINER.load(folder)
    assert str(folder / "model.pt") in one_line(exc) and "not a readable torch checkpoint" in str(exc.value)
    (folder / "model.pt").write_bytes(b"changed after training")
    with pytest.raises(DataError) as exc:
        TRAINER.load(folder)
    assert "sha256" in one_line(exc)
    (folder / "cdvae.json").write_text("{not json")
    with pytest.raises(DataError) as exc:
        TRAINER.load(folder)
    assert "cdvae.json" in one_line(exc)
    with pytest.raises(DataError) as exc:
        TRAINER.load(tmp_path / "empty")
    assert "no trained cdvae model" in one_line(exc)


def test_generator_config_validation(tmp_path):
    from pydantic import ValidationError

    from discovery.generators.cdvae.kind import CDVAEGeneratorConfig

    cfg = CDVAEGeneratorConfig(checkpoint_dir=tmp_path, n_step_each=5, sample_batch_size=32)
    assert cfg.langevin_overrides() == {"n_step_each": 5, "batch_size": 32}
    with pytest.raises(ValidationError):
        CDVAEGeneratorConfig(checkpoint_dir=tmp_path, mode="diffuse")
    with pytest.raises(ValidationError, match="train_data"):
        CDVAEGeneratorConfig(checkpoint_dir=tmp_path, train={"epochs": 3})
    with pytest.raises(ValidationError, match="bogus"):
        CDVAEGeneratorConfig(checkpoint_dir=tmp_path, train_data=tmp_path, train={"bogus": 1})
