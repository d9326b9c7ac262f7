"""ICSG3D's registry entry as a trainable model family (``discovery train icsg3d``)."""

from discovery.kinds import Kind
from discovery.models.icsg3d.presets import ICSG3DConfig

MODEL_KIND = Kind(role="model", name="icsg3d", config=ICSG3DConfig, factory="discovery.models.icsg3d.trainer:TRAINER",
                  summary="Cond-DFC-VAE + 3-D UNet + CGCNN heads on voxel maps (Court et al. 2020)")
