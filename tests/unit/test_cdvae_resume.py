"""An interrupted CD-VAE training resumes from its last checkpoint (real cpu-preset training on 8
perov-5 structures)."""

from __future__ import annotations

import json

import pytest

from discovery.lifecycle import training_config
from discovery.models.cdvae.data import read_cdvae_data
from discovery.models.cdvae.presets import CDVAEConfig
from discovery.models.cdvae.trainer import TRAINER

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]


def test_interrupted_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    config = training_config(CDVAEConfig, "cpu", {"epochs": 6, "val_every": 2, "batch_size": 8, "max_structures": 10},
                             "test")
    data = read_cdvae_data(data_dir / "perov_5" / "val.csv", config, max_rows=12)

    class Interrupt(Exception):
        pass

    def stop_after_three(stage, done, total, info):
        if stage == "train" and done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        TRAINER.train(data, config, tmp_path, seed=0, progress=stop_after_three)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "cdvae.json").exists()
    seen = []
    model = TRAINER.train(data, config, tmp_path, seed=0,
                          progress=lambda s, d, t, i: seen.append(d) if s == "train" else None)
    assert seen == [3, 4, 5, 6]  # continued after the validation of epoch 2, not from 1
    assert [int(r["epoch"]) for r in model.manifest["history"]] == [1, 2, 3, 4, 5, 6]
    # another seed is another training: it starts from epoch 1
    seen.clear()
    TRAINER.train(data, config, tmp_path, seed=1, progress=lambda s, d, t, i: seen.append(d) if s == "train" else None)
    assert seen[0] == 1
    assert json.loads((tmp_path / "cdvae.json").read_text())["seed"] == 1
