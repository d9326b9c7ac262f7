"""Composition-conditioned crystal GAN (Kim, Noh, Gu, Aspuru-Guzik, Jung, ACS Cent. Sci. 2020).

Modules (MODELS.md section 2):

- `config`: `CrystalGANConfig` with the ``faithful`` and ``cpu`` presets and the element blocks (light);
- `kind`: the ``model`` kind ``crystal_gan`` (light);
- `representation`: the 30 x 3 matrix, encoding and decoding (numpy + pymatgen);
- `data`: reading the ``.npy`` file, hold-out compositions, per-composition augmentation;
- `networks`: generator, WGAN-GP critic and Q-network (torch);
- `training`: the losses and the training loop (torch);
- `model`: the trained model (sampling and decoding);
- `trainer`: the lifecycle `~discovery.lifecycle.Trainer` (``discovery train crystal_gan``).
"""
