"""LCOM: a conservative objective model (COMs) of formation energy on CD-VAE latents, latent
optimisation and composition-forced decoding (crystal structure prediction).

`presets` (config, no torch), `kind` (registry entry), `conservative` (the COMs loss, adversarial
search, latent descent; generic tensors), `features` (composition vectors), `trainer` (the
lifecycle `Trainer`, encodes a CSV with a CD-VAE), `wrapper` (`LCOMModel`).
"""
