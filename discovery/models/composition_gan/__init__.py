"""Composition CondGAN with Metropolis-Hastings valence correction (Sawada, Morikawa, Fujii,
arXiv:1910.11499) and a conditional VAE comparator on the same input.

Modules (MODELS.md section 3):

- `config`: training configs with ``faithful`` and ``cpu`` presets (light);
- `kind`: the ``model`` kinds ``composition_gan`` and ``composition_vae`` (light);
- `data`: reading the composition table (formula, formation energy per atom);
- `features`: bag-of-atoms plus 58 composition-weighted element descriptors, min-max scaling;
- `networks`: CondGAN generator / discriminator with a property head, CondVAE (torch);
- `training`: WGAN-GP and VAE training loops (torch);
- `valence`: Metropolis-Hastings valence correction and the SMACT check;
- `model`: trained models that propose compositions for a target property;
- `trainer`: the lifecycle trainers (``discovery train composition_gan`` / ``composition_vae``).
"""
