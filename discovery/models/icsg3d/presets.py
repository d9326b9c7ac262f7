"""Configuration of ICSG3D (3-D UNet, Cond-DFC-VAE, property CGCNN) with its two presets.

`ICSG3DConfig` fills every size and schedule from the chosen preset before validation; keys the user
gives win (nested sections are merged key by key, so ``unet: {lr: 1e-3}`` only changes the rate).
Like every config of the package, the models forbid unknown keys and are frozen. This module imports
no torch.

**faithful** (the paper, Court et al., JCIM 2020, Table 6 and section 0.4 of MODELS.md):

- UNet: widths (32, 64), (64, 128), (128, 256), bottom 512; Adam lr 3e-6, batch 10, 50 epochs;
  inverse-frequency class weights as the paper intends (the released code never used them,
  MODELS.md finding 0.3 #4, see `discovery.models.icsg3d.unet3d`).
- VAE: filters (16, 32, 64, 128), latent 256, dense 256; alpha (perceptual) 1.0, beta (KL) 0.0005,
  Adam lr 1e-4, batch 20, 50 epochs. (The released code uses alpha 0.5, beta 3e-4, lr 5e-4.)
- CGCNN: one graph convolution, 64 hidden, 128 dense, lr 1e-3, batch 256 (Table 6; the released
  code uses 32), 60 epochs (released ``train_cgcnn.py``).
- Data: 10 rotated copies per structure (``--nrot 10``), every structure (``max_structures`` None,
  the paper has 7,189), grid 32, condition = formation-energy decile.

**cpu** (MODELS.md 1.7, for 2 cores; same losses, split, best-validation selection and constant-rate
Adam schedules as faithful, smaller and shorter). Budget: the whole training of 80 % of
perov_5/val.csv (3,030 structures) within 60 minutes on 2 cores (46 measured).

- Data: grid 32 (kept); 1 copy per structure (no rotated copies, ``n_rotations = 1``); the UNet
  and VAE see at most 1,000 structures (``max_structures``, a seeded subset of the training split,
  inside MODELS.md's 500-2,000), split 800 / 200 for their best-epoch selection. The CGCNN heads
  train on every training structure (they are cheap).
- UNet: widths / 8 = (4, 8), (8, 16), (16, 32), bottom 64 (MODELS.md 1.7 says / 4; halving again
  halves the step time); batch 4; 8 epochs; lr 1e-3: MODELS.md's 1e-4 was chosen for about 8,000
  steps, this run has 1,600 (in a 40-step trial on perov_5, 1e-3 lowered the training loss to 0.60
  where 1e-4 reached 0.70).
- VAE: filters (8, 16, 32, 64), latent 64, dense 256 (cheap: the encoder's flatten is only 32
  wide); batch 8; 40 epochs; alpha 0.5 and beta 3e-4, the released code's values; lr 2e-3, four
  times the released rate because the schedule is about 40 times shorter than the paper's: the
  output BatchNorm's scale and shift must grow to the size of the coordinate channels (0-9 A), and
  Adam moves them by about lr per step. Measured on 240 perov_5 structures (192 training maps,
  12 epochs): validation MSE 3.97 at lr 1e-3, 1.97 at 2e-3; 5e-3 diverged (MSE 2e4 after one epoch).
  Validation MSE at the last (and best) epoch: 0.085 with 25 epochs, 0.032 with 40 (still falling).
- Both networks: batch-norm statistics recalibrated on 256 training maps before every validation
  pass (``bn_recalibration_maps``, see `discovery.models.icsg3d.training`).
- CGCNN: 1 conv, 64 hidden, 128 dense, lr 1e-3, 30 epochs per property; batch 32 (the released
  code's value; MODELS.md 1.7 gives none) because a few thousand training graphs in batches of 256
  would give only a handful of updates per epoch.

Time arithmetic (step times measured on this project's 2-core machine with nothing else running;
under load from other jobs the same steps ran up to 5x slower):

- UNet, batch 4 at 32^3, widths / 8: about 0.45 s per training step; with 800 / 200 maps and the
  batch-norm recalibration about 105 s per epoch, 8 epochs = 870 s.
- VAE, batch 8 with its perceptual pass through the frozen UNet: about 45 s per epoch of 800
  maps (recalibration included); 40 epochs = 1,810 s.
- Reading the CSV (3,787 CIFs with canonical ids) 11-18 s; voxels for 1,000 structures 5 s; CGCNN
  heads 72 s for 4 properties x 30 epochs.
- Measured end to end (`benchmarks/icsg3d.py`): 2,768 s = 46 minutes. Earlier versions: 500
  structures, 5 + 8 epochs, VAE lr 5e-4 trained in 504 s but its VAE had not converged (held-out
  lattice MAE 2.2 A); 1,000 structures, 8 + 25 epochs, no recalibration: 1,817 s, lattice MAE 0.44 A
  (lattice read from the spread of the coordinate channels).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from discovery.configbase import Strict, with_preset

#: Format of every ICSG3D checkpoint file (UNet, VAE, CGCNN heads), read with ``weights_only=True``.
CHECKPOINT_FORMAT = "discovery.icsg3d"
CHECKPOINT_VERSION = 1

#: Properties the ICSG3D CGCNNs predict (MODELS.md 1.4); the VAE condition is a decile of one of them.
ConditionProperty = Literal["formation_energy_per_atom", "energy_per_atom", "band_gap", "bulk_modulus",
                            "shear_modulus", "dielectric_constant", "refractive_index", "eij_max"]
ICSG3D_PROPERTIES: tuple[str, ...] = get_args(ConditionProperty)
#: Property columns of the CDVAE data sets (perov_5: heat of formation and gaps; mp_20: hull energy).
CDVAE_PROPERTIES: tuple[str, ...] = ("heat_ref", "heat_all", "dir_gap", "ind_gap", "e_above_hull")
#: Columns the pipeline trains CGCNN heads for by default, when a data set has them.
KNOWN_PROPERTIES: tuple[str, ...] = (*ICSG3D_PROPERTIES, "poisson_ratio", *CDVAE_PROPERTIES)


class _ConvNetSchedule(Strict):
    """Schedule shared by the two voxel networks (Adam, best-validation epoch)."""

    lr: float = Field(..., gt=0)
    batch_size: int = Field(..., ge=1)
    epochs: int = Field(..., ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    bn_recalibration_maps: int = Field(
        256, ge=0, description="training maps whose exact batch-norm statistics replace the running "
                               "averages before every validation pass (0: keep the running averages)")


class UNetTrainConfig(_ConvNetSchedule):
    """Sizes and schedule of the segmentation UNet (`discovery.models.icsg3d.unet3d.UNet3D`)."""

    widths: tuple[tuple[int, int], ...] = Field(..., min_length=1,
                                                description="(first, second) conv widths per level")
    bottom: int = Field(..., ge=1)
    class_weights: Literal["inverse_frequency", "released"] = Field(
        "inverse_frequency",
        description="inverse_frequency: the paper's weights, background 0; released: the shipped code's "
                    "scalar 95 on every class")

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if any(w < 1 for pair in v for w in pair):
            raise ValueError("UNet widths must be >= 1")
        return v


class VAETrainConfig(_ConvNetSchedule):
    """Sizes, loss weights and schedule of the Cond-DFC-VAE (`discovery.models.icsg3d.cond_dfc_vae`)."""

    filters: tuple[int, ...] = Field(..., min_length=1)
    latent: int = Field(..., ge=1)
    dense: int = Field(256, ge=1, description="encoder hidden dense width before the mu/logvar heads")
    alpha: float = Field(..., ge=0, description="weight of the perceptual (UNet feature) loss")
    beta: float = Field(..., ge=0, description="weight of the KL divergence")

    @field_validator("filters")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(f < 1 for f in v):
            raise ValueError("VAE filters must be >= 1")
        return v


class PropertyCGCNNConfig(Strict):
    """The ICSG3D property predictor: CGCNN with one convolution and mean pooling (MODELS.md 1.4).

    Units: ``cutoff_a`` in A.
    """

    n_conv: int = Field(..., ge=1)
    atom_fea_len: int = Field(..., ge=1, description="hidden atom features")
    h_fea_len: int = Field(..., ge=1, description="dense layer after pooling")
    lr: float = Field(..., gt=0)
    batch_size: int = Field(..., ge=1)
    epochs: int = Field(..., ge=1)
    cutoff_a: float = Field(8.0, gt=0)
    max_neighbors: int = Field(12, ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)


ICSG3D_PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {
        "grid": 32,
        "n_rotations": 10,
        "max_structures": None,
        "unet": dict(widths=((32, 64), (64, 128), (128, 256)), bottom=512, lr=3e-6, batch_size=10,
                     epochs=50),
        "vae": dict(filters=(16, 32, 64, 128), latent=256, dense=256, alpha=1.0, beta=5e-4, lr=1e-4,
                    batch_size=20, epochs=50),
        "cgcnn": dict(n_conv=1, atom_fea_len=64, h_fea_len=128, lr=1e-3, batch_size=256, epochs=60),
    },
    "cpu": {
        "grid": 32,
        "n_rotations": 1,
        "max_structures": 1000,
        "unet": dict(widths=((4, 8), (8, 16), (16, 32)), bottom=64, lr=1e-3, batch_size=4, epochs=8),
        "vae": dict(filters=(8, 16, 32, 64), latent=64, dense=256, alpha=0.5, beta=3e-4, lr=2e-3,
                    batch_size=8, epochs=40),
        "cgcnn": dict(n_conv=1, atom_fea_len=64, h_fea_len=128, lr=1e-3, batch_size=32, epochs=30),
    },
}

_SECTIONS = ("unet", "vae", "cgcnn")


class ICSG3DConfig(Strict):
    """ICSG3D as a whole: data sizes, condition and the three networks, from a preset.

    ``grid`` must be a multiple of ``2 ** len(unet.widths)`` and of ``2 ** len(vae.filters)``
    (8 and 16 for the presets).
    """

    preset: Literal["faithful", "cpu"] = "cpu"
    grid: int = Field(..., ge=8, description="voxels per axis")
    n_rotations: int = Field(
        ..., ge=1, description="copies per structure: the original plus n - 1 random 90-degree rotations")
    max_structures: int | None = Field(
        ..., ge=1, description="structures the UNet and VAE train on (a seeded subset of the training "
                               "split); None: all of them")
    condition_property: str = Field(
        "formation_energy_per_atom", min_length=1,
        description="label column whose decile conditions the VAE (e.g. heat_ref for perov_5)")
    n_deciles: int = Field(10, ge=2, description="condition classes (quantile bins, one-hot)")
    head_properties: tuple[str, ...] | None = Field(
        None, description="CGCNN head properties; None: the condition property plus every column of "
                          "KNOWN_PROPERTIES the data set has")
    unet: UNetTrainConfig
    vae: VAETrainConfig
    cgcnn: PropertyCGCNNConfig

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return with_preset(data, ICSG3D_PRESETS, _SECTIONS)

    @model_validator(mode="after")
    def _grid_fits(self) -> ICSG3DConfig:
        for what, levels in (("unet.widths", len(self.unet.widths)), ("vae.filters", len(self.vae.filters))):
            if self.grid % 2 ** levels:
                raise ValueError(f"grid {self.grid} must be a multiple of {2 ** levels} "
                                 f"({levels} pooled levels in {what})")
        return self
