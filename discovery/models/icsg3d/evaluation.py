"""ICSG3D's reconstruction metrics (MODELS.md 1.6) on held-out crystals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from discovery.featurize.deciles import one_hot
from discovery.models.icsg3d.model import ICSG3DModel


def evaluate_reconstruction(model: ICSG3DModel, structures: Sequence, labels: Sequence[float] | None = None,
                            batch_size: int = 64, per_structure: bool = False) -> dict[str, Any]:
    """Reconstruction metrics of MODELS.md 1.6 on held-out crystals.

    Each structure is voxelised (in the frame of `~discovery.featurize.voxels.prepare_structure`),
    encoded with its own decile (from ``labels``; else the CGCNN's prediction), decoded from
    z = mu, segmented and rebuilt.

    Args:
        model: the trained model.
        structures: reference crystals; those that cannot be voxelised are counted and skipped.
        labels: condition-property label per structure.
        batch_size: structures voxelised at a time (bounds memory).
        per_structure: also return ``lattice_true`` and ``lattice_pred`` (n_ok, 3) arrays in A and the
            list ``site_emds`` (for plots).

    Returns:
        ``n``, ``n_skipped``, ``lattice_mae_a``/``_b``/``_c`` (A), ``site_emd`` (mean matched site
        distance in A over decoded structures), ``n_sites_mae`` (mean |N_true - N_pred|, N_pred = 0
        when nothing decodes), ``unet_nonzero_recall`` (species argmax of the UNet on the *true* maps,
        over atom voxels), ``vae_mse``, ``decoded_fraction``, ``valid_fraction`` and ``match_rate``
        (`discovery.metrics.reconstruction.cdvae_matcher`, CD-VAE's reconstruction criterion).
    """
    import torch

    from discovery.models.icsg3d.decode import site_emd
    from discovery.models.icsg3d.unet3d import nonzero_recall_counts

    structures = list(structures)
    labels_arr = None if labels is None else np.asarray(labels, dtype=np.float64)
    abs_err, emds, dn, mse_sum, mse_n = [], [], [], 0.0, 0
    true_abc, pred_abc = [], []
    correct = atoms = 0
    n_ok = decoded = valid = matched = 0
    from discovery.metrics.reconstruction import cdvae_matcher

    matcher = cdvae_matcher()
    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        voxels, prepared, ok = model._voxelise(chunk)
        if not voxels:
            continue
        x = np.stack([v.x for v in voxels])
        species = np.stack([v.species for v in voxels])
        dec = model._deciles_for(prepared, None if labels_arr is None
                                 else model.decile_of(labels_arr[start:start + batch_size][ok]))
        mu, _ = model.encode_maps(x, dec)
        samples = model.decode(mu, one_hot(dec, model.n_deciles))
        with torch.inference_mode():
            for s0 in range(0, len(x), model._batch):
                xb = torch.as_tensor(x[s0:s0 + model._batch], device=model.device)
                species_logits, _ = model.unet(xb)
                c, a = nonzero_recall_counts(species_logits, torch.as_tensor(species[s0:s0 + model._batch],
                                                                             device=model.device))
                correct += c
                atoms += a
                cb = torch.as_tensor(one_hot(dec[s0:s0 + model._batch], model.n_deciles), device=model.device)
                x_hat = model.vae.decode(torch.as_tensor(mu[s0:s0 + model._batch], device=model.device), cb)
                mse_sum += float(((x_hat - xb) ** 2).mean(dim=(1, 2, 3, 4)).sum().item())
                mse_n += len(xb)
        for p, s, abc, ok_valid in zip(prepared, samples.structures, samples.lattice_abc, samples.valid,
                                       strict=True):
            n_ok += 1
            abs_err.append(np.abs(np.asarray(p.lattice.abc) - abc))
            true_abc.append(np.asarray(p.lattice.abc))
            pred_abc.append(np.asarray(abc))
            dn.append(abs(len(p) - (len(s) if s is not None else 0)))
            if s is not None:
                decoded += 1
                emd = site_emd(s, p)
                if math.isfinite(emd):
                    emds.append(emd)
            if ok_valid:
                valid += 1
                try:
                    matched += bool(matcher.fit(p, s))
                except Exception:  # pymatgen raises on degenerate cells
                    pass
    n = len(structures)
    err = np.asarray(abs_err) if abs_err else np.full((1, 3), np.nan)
    details = {} if not per_structure else {
        "lattice_true": np.asarray(true_abc).reshape(-1, 3), "lattice_pred": np.asarray(pred_abc).reshape(-1, 3),
        "site_emds": list(emds)}
    return {**details,
        "n": n,
        "n_skipped": n - n_ok,
        "lattice_mae_a": float(np.mean(err[:, 0])),
        "lattice_mae_b": float(np.mean(err[:, 1])),
        "lattice_mae_c": float(np.mean(err[:, 2])),
        "site_emd": float(np.mean(emds)) if emds else math.nan,
        "n_sites_mae": float(np.mean(dn)) if dn else math.nan,
        "unet_nonzero_recall": correct / atoms if atoms else math.nan,
        "vae_mse": mse_sum / mse_n if mse_n else math.nan,
        "decoded_fraction": decoded / n_ok if n_ok else math.nan,
        "valid_fraction": valid / n_ok if n_ok else math.nan,
        "match_rate": matched / n_ok if n_ok else math.nan,
    }

