"""ICSG3D (Court, Yildirim, Jain, Cole, JCIM 2020): Cond-DFC-VAE + 3-D UNet + CGCNN heads on 32^3 voxel maps.

One module per job:

- `presets`: the training config (`ICSG3DConfig`) with the ``faithful`` and ``cpu`` presets;
- `unet3d`, `cond_dfc_vae`, `heads`: the networks (3-D UNet, conditional VAE, CGCNN property heads);
- `training`: fitting the UNet and the VAE (schedules, batch-norm recalibration, checkpoints);
- `data`: reading a CDVAE CSV and augmenting voxel maps;
- `train`: the whole training run (`train_icsg3d`) and its manifest;
- `model`: a trained model (`ICSG3DModel`): load, encode, decode, sample;
- `decode`: lattice read-out, recursive watershed, structures from segments;
- `evaluation`: reconstruction metrics of MODELS.md 1.6;
- `trainer` / `kind`: the lifecycle entry (`discovery train icsg3d`).

The campaign generator that samples from a trained model is `discovery.generators.icsg3d`.
"""
