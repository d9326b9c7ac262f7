"""CD-VAE (Xie, Fu, Ganea, Barzilay, Jaakkola, ICLR 2022): the crystal diffusion variational autoencoder.

Modules, one job each:

- `graphs`: canonical cells, the decoder's periodic radius graph, the encoder's CrystalNN graph (and
  its on-disk cache), DimeNet triplets with periodic image offsets;
- `encoder`: periodic DimeNet++ built from torch_geometric's DimeNet blocks;
- `decoder`: the denoising decoder (coordinate scores and atom-type logits);
- `model`: the `CDVAE` module (latent, heads, noise schedules, losses, Langevin sampling, latent
  optimisation);
- `presets`: `CDVAEConfig` with its ``cpu`` and ``faithful`` presets;
- `data`, `training`, `trainer`: reading CDVAE CSVs, the training loop, the lifecycle `TRAINER`;
- `wrapper`: `CDVAEModel`, a loaded model with encode / decode / reconstruct / generate / optimize
  returning pymatgen Structures;
- `kind`: the light ``MODEL_KIND`` declaration.

Importing this package imports nothing heavy; import the submodules you need.
"""
