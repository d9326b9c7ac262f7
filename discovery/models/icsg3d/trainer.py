"""ICSG3D's entry in the trained-model lifecycle (`discovery.lifecycle.Trainer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from discovery.models.icsg3d.data import load_training_data
from discovery.models.icsg3d.model import MODEL_NAME, ICSG3DModel
from discovery.models.icsg3d.presets import ICSG3DConfig
from discovery.models.icsg3d.train import train_icsg3d


class ICSG3DTrainer:
    """``discovery train icsg3d`` and campaign training of ICSG3D models."""

    name = MODEL_NAME
    config_model = ICSG3DConfig
    stages = (("load", "data"), ("featurise", "voxels"), ("unet", "UNet"), ("vae", "VAE"),
              ("heads", "CGCNN heads"))

    def read_data(self, path: Path, config: ICSG3DConfig) -> Any:
        return load_training_data(path, config)

    def train(self, data: Any, config: ICSG3DConfig, out_dir: Path, *, tracker: Any, progress: Any,
              seed: int, device: str) -> ICSG3DModel:
        return train_icsg3d(data, config, out_dir, tracker=tracker, progress=progress, seed=seed, device=device)

    def load(self, folder: Path, device: str = "cpu") -> ICSG3DModel:
        return ICSG3DModel.load(folder, device=device)

    def describe(self, model: ICSG3DModel) -> str:
        m = model.manifest["metrics"]

        def fmt(value: Any, spec: str = ".3g") -> str:
            return "n/a" if value is None else format(value, spec)

        heads = ", ".join(f"{p} {fmt(v.get('val_mae'))}" for p, v in m["heads"].items())
        return (f"icsg3d trained in {m['wall_s']['total']:.0f} s: UNet val recall "
                f"{fmt(m['unet'].get('val_recall'))}, VAE val loss {fmt(m['vae'].get('val_loss'), '.4g')}, "
                f"CGCNN val MAE {heads or 'n/a'} (version {model.version})")


TRAINER = ICSG3DTrainer()
