"""Train ICSG3D (cpu preset) on 80 % of perov_5/val.csv and print its figures as ONE JSON line.

    .venv/bin/python benchmarks/icsg3d.py [--data CSV] [--preset cpu|faithful] [--out DIR]
        [--max-structures N] [--device cpu|cuda] [--set key=value ...] [--reuse]

Training goes through `discovery.generators.icsg3d_pipeline.train_icsg3d` (seeded 80/20 split by
structure, condition ``heat_ref`` unless ``--set condition_property=...``). On the held-out 20 %:

- reconstruction (MODELS.md 1.6, `evaluate_reconstruction`): lattice MAE a/b/c (A), mean site EMD
  (A), mean |delta N_sites|, UNet non-zero recall, plus VAE MSE and StructureMatcher match rate;
- validity (1..40 sites, all distances >= 0.5 A) of ``--n-random`` random samples z ~ N(0, I), spread
  evenly over the deciles (1,000: 100 per decile, the paper's protocol), and of ``--n-targeted``
  samples z ~ N(mu_base, 0.5) around ``--n-bases`` held-out bases under their own deciles;
- CD-VAE generation metrics of the random samples against the held-out set
  (`discovery.metrics.generation`): structural and compositional validity, COV-R / COV-P with
  CD-VAE's Perov-5 thresholds (0.2, 4), EMD of density and of the number of elements. ``matminer``
  is not available, so COV uses our own simple fingerprints (a smeared neighbour-shell histogram
  instead of CrystalNN order parameters, Magpie-style statistics of eight pymatgen element
  properties instead of Magpie): COV is not comparable with the CD-VAE paper. For calibration the
  same COV of up to 1,000 *training* crystals against the held-out set is printed as
  ``reference_cov_recall`` / ``reference_cov_precision``;
- generation throughput: valid random samples per second of decoding (VAE, UNet, watershed,
  validity), and the total training wall time.

A figure, ``icsg3d_benchmark.png`` in ``--out``: decoded against true lattice lengths of the
held-out structures, the distribution of their site EMD, and the validity of random samples per
condition decile.

Logs go to stderr; stdout gets the JSON line only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _round(x, digits: int = 4):
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else None
    return x


def plot_benchmark(recon: dict, random, n_deciles: int, path: Path) -> Path:
    """Lattice parity, site-EMD histogram and random-sample validity per decile, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_emd, ax_val) = plt.subplots(1, 3, figsize=(15, 4.5))
    true, pred = recon["lattice_true"], recon["lattice_pred"]
    for k, axis in enumerate("abc"):
        ax_lat.scatter(true[:, k], pred[:, k], s=6, alpha=0.5,
                       label=f"{axis}: MAE {np.mean(np.abs(pred[:, k] - true[:, k])):.3f} A")
    if len(true):
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax_lat.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax_lat.set(xlabel="true length (A)", ylabel="decoded length (A)",
               title=f"lattice, {len(true)} held-out structures")
    ax_lat.legend()
    ax_emd.hist(recon["site_emds"], bins=40, color="tab:green")
    ax_emd.set(xlabel="site EMD (A)", ylabel="structures", title=f"site EMD, mean {recon['site_emd']:.3f} A")
    share = [float(random.valid[random.deciles == k].mean()) if np.any(random.deciles == k) else 0.0
             for k in range(n_deciles)]
    ax_val.bar(range(n_deciles), share, color="tab:blue")
    ax_val.set(xlabel="condition decile", ylabel="valid share", ylim=(0, 1),
               title=f"random samples: {random.valid.mean():.1%} valid")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    from discovery.data.loaders import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data_dir() / "perov_5" / "val.csv")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "icsg3d")
    p.add_argument("--max-structures", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-random", type=int, default=1000)
    p.add_argument("--n-targeted", type=int, default=1000)
    p.add_argument("--n-bases", type=int, default=100)
    p.add_argument("--max-test", type=int, default=None, help="evaluate on at most N held-out structures")
    p.add_argument("--reuse", action="store_true", help="evaluate the model already trained in --out")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("pymatgen", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")

    from discovery.generators.icsg3d_pipeline import (ICSG3DModel, check_device, evaluate_reconstruction,
                                                      load_training_data, train_icsg3d)
    from discovery.metrics.generation import coverage, generation_metrics
    from discovery.train_cli import icsg3d_config_from_args

    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0].strip() == "condition_property" for o in overrides):
        overrides.insert(0, "condition_property=heat_ref")
    config = icsg3d_config_from_args(args.preset, overrides, args.max_structures)
    device = check_device(args.device)
    data = load_training_data(args.data, config)

    if args.reuse:
        model = ICSG3DModel.load(args.out, device=device)
    else:
        model = train_icsg3d(data, config, args.out, seed=args.seed, device=device)
    train_wall = model.manifest["metrics"]["wall_s"]["total"]  # reading the CSV included

    by_id = {c.id: (c, i) for i, c in enumerate(data.candidates)}
    labels = data.labels[model.condition_property]
    test = [by_id[i] for i in model.manifest["split"]["test_ids"] if i in by_id][:args.max_test]
    train = [by_id[i] for i in model.manifest["split"]["train_ids"] if i in by_id]
    test_structures = [c.pmg for c, _ in test]
    test_labels = np.array([labels[i] for _, i in test])
    logging.info("evaluating on %d held-out structures", len(test))

    t = time.perf_counter()
    recon = evaluate_reconstruction(model, test_structures, test_labels, per_structure=True)
    recon_s = time.perf_counter() - t

    rng = np.random.default_rng(args.seed + 1)
    t = time.perf_counter()
    random = model.sample_random(args.n_random, None, rng)
    random_s = time.perf_counter() - t
    n_valid_random = int(random.valid.sum())

    voxelisable = [k for k, s in enumerate(test_structures) if model.featurize([s])[2][0]]
    bases = rng.choice(voxelisable, size=min(args.n_bases, len(voxelisable)), replace=False)
    per_base = max(1, args.n_targeted // max(len(bases), 1))
    t = time.perf_counter()
    targeted = model.sample_around([test_structures[k] for k in bases], per_base, rng, scale=0.5,
                                   deciles=model.decile_of(test_labels[bases]))
    targeted_s = time.perf_counter() - t

    gen = generation_metrics(random.structures, test_structures)
    ref_pick = rng.choice(len(train), size=min(1000, len(train)), replace=False)
    ref = coverage([train[k][0].pmg for k in ref_pick], [True] * len(ref_pick), test_structures)

    figure = plot_benchmark(recon, random, model.n_deciles, args.out / "icsg3d_benchmark.png")
    m = model.manifest["metrics"]
    result = {
        "data": str(args.data), "preset": config.preset, "device": device,
        "condition_property": model.condition_property, "n_train": len(train), "n_test": len(test),
        "n_voxel_structures": m["n_voxel_structures"], "n_training_maps": m["n_maps"],
        "lattice_mae_a": recon["lattice_mae_a"], "lattice_mae_b": recon["lattice_mae_b"],
        "lattice_mae_c": recon["lattice_mae_c"], "site_emd_a": recon["site_emd"],
        "n_sites_mae": recon["n_sites_mae"], "unet_nonzero_recall": recon["unet_nonzero_recall"],
        "vae_mse": recon["vae_mse"], "recon_match_rate": recon["match_rate"],
        "recon_valid_fraction": recon["valid_fraction"], "recon_skipped": recon["n_skipped"],
        "random_n": len(random), "random_validity": n_valid_random / max(len(random), 1),
        "targeted_n": len(targeted), "targeted_bases": int(len(bases)),
        "targeted_validity": float(targeted.valid.mean()) if len(targeted) else None,
        "gen_struct_validity": gen["struct_validity"], "gen_comp_validity": gen["comp_validity"],
        "gen_cov_recall": gen["cov_recall"], "gen_cov_precision": gen["cov_precision"],
        "gen_emd_density": gen["emd_density"], "gen_emd_n_elements": gen["emd_n_elements"],
        "reference_cov_recall": ref["cov_recall"], "reference_cov_precision": ref["cov_precision"],
        "valid_per_s": n_valid_random / random_s if random_s > 0 else None,
        "samples_per_s": len(random) / random_s if random_s > 0 else None,
        "targeted_samples_per_s": len(targeted) / targeted_s if targeted_s > 0 else None,
        "heads_val_mae": {k: v.get("val_mae") for k, v in m["heads"].items()},
        "train_wall_s": train_wall, "train_stage_wall_s": m["wall_s"], "recon_wall_s": recon_s,
        "model_version": model.version, "out": str(args.out), "figure": str(figure),
    }
    print(json.dumps({k: _round(v) if not isinstance(v, dict) else {a: _round(b) for a, b in v.items()}
                      for k, v in result.items()}))


if __name__ == "__main__":
    main()
