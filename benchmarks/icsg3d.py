"""Train ICSG3D (cpu preset) on 80 % of perov_5/val.csv and print its figures as ONE JSON line.

    .venv/bin/python benchmarks/icsg3d.py [--data CSV] [--preset cpu|faithful] [--out DIR]
        [--max-structures N] [--device cpu|cuda] [--set key=value ...] [--reuse]
        [--dataset perov_5|carbon_24|mp_20] [--n-valid-sample N] [--n-jobs N]

Training goes through `discovery.models.icsg3d.train.train_icsg3d` (seeded 80/20 split by
structure, condition ``heat_ref`` unless ``--set condition_property=...``). On the held-out 20 %:

- reconstruction (MODELS.md 1.6, `evaluate_reconstruction`): lattice MAE a/b/c (A), mean site EMD
  (A), mean |delta N_sites|, UNet non-zero recall, plus VAE MSE and StructureMatcher match rate;
- validity (1..40 sites, all distances >= 0.5 A) of ``--n-random`` random samples z ~ N(0, I), spread
  evenly over the deciles (1,000: 100 per decile, the paper's protocol), and of ``--n-targeted``
  samples z ~ N(mu_base, 0.5) around ``--n-bases`` held-out bases under their own deciles;
- CD-VAE generation metrics of the random samples against the held-out set
  (`discovery.metrics.generation.generation_metrics`, CD-VAE's ``GenEval``): structural,
  compositional (SMACT) and overall validity over all samples; COV-R / COV-P with matminer's
  CrystalNN and Magpie fingerprints and CD-VAE's thresholds for ``--dataset`` (default: the data
  file's folder name when it is one of perov_5, carbon_24, mp_20, else perov_5), over all generated
  crystals as CD-VAE does (``gen_cov_*``; comparable with the CD-VAE paper) and over the valid ones
  only (``gen_cov_*_valid``); EMDs of density and number of elements and the fingerprint diversity
  of up to ``--n-valid-sample`` valid samples. Next to them, ``gen_simple_cov_*``: the project's
  earlier own-fingerprint COV of the valid samples (`discovery.metrics.simple_fingerprints`; not
  comparable with the paper). For calibration, the same two COVs of up to 1,000 *training* crystals
  against the held-out set: ``reference_cov_*`` (matminer) and ``reference_simple_cov_*``.
  CrystalNN fingerprints are cached in ``--out``/fingerprints.npz, so ``--reuse`` skips them;
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
    p.add_argument("--dataset", default=None, help="CD-VAE coverage thresholds: perov_5, carbon_24 or mp_20")
    p.add_argument("--n-valid-sample", type=int, default=1000, help="valid samples for EMDs (CD-VAE: 1000)")
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes for CrystalNN fingerprints")
    args = p.parse_args()
    from discovery.metrics.coverage import COV_CUTOFFS

    dataset = args.dataset or (args.data.parent.name if args.data.parent.name in COV_CUTOFFS else "perov_5")
    if dataset not in COV_CUTOFFS:
        p.error(f"--dataset must be one of {sorted(COV_CUTOFFS)}, not {dataset!r}")
    cutoffs = COV_CUTOFFS[dataset]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("pymatgen", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")

    from discovery.lifecycle import check_device
    from discovery.models.icsg3d.data import load_training_data
    from discovery.models.icsg3d.evaluation import evaluate_reconstruction
    from discovery.models.icsg3d.model import ICSG3DModel
    from discovery.models.icsg3d.train import train_icsg3d
    from discovery.metrics.generation import (FingerprintCache, compositionally_valid, coverage, generation_metrics,
                                              structurally_valid)
    from discovery.metrics.simple_fingerprints import simple_coverage
    from discovery.train_cli import config_from_args

    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0].strip() == "condition_property" for o in overrides):
        overrides.insert(0, "condition_property=heat_ref")
    config = config_from_args("icsg3d", args.preset, overrides, args.max_structures)
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

    cache = FingerprintCache(args.out / "fingerprints.npz")
    t = time.perf_counter()
    gen = generation_metrics(random.structures, test_structures, dataset=dataset,
                             n_valid_sample=args.n_valid_sample, seed=args.seed, n_jobs=args.n_jobs, cache=cache)
    valid = [structurally_valid(s) and compositionally_valid(s) for s in random.structures]
    gen_simple = simple_coverage(random.structures, valid, test_structures, *cutoffs)
    ref_pick = rng.choice(len(train), size=min(1000, len(train)), replace=False)
    ref_structures = [train[k][0].pmg for k in ref_pick]
    ref = coverage(ref_structures, test_structures, dataset=dataset, n_jobs=args.n_jobs, cache=cache)
    ref_simple = simple_coverage(ref_structures, [True] * len(ref_structures), test_structures, *cutoffs)
    cache.save()
    metrics_s = time.perf_counter() - t

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
        "cov_dataset": dataset, "cov_cutoffs": list(cutoffs),
        "gen_struct_validity": gen["struct_validity"], "gen_comp_validity": gen["comp_validity"],
        "gen_validity": gen["validity"], "gen_n_eval": gen["n_eval"],
        "gen_cov_recall": gen["cov_recall"], "gen_cov_precision": gen["cov_precision"],
        "gen_cov_recall_valid": gen["cov_recall_valid"], "gen_cov_precision_valid": gen["cov_precision_valid"],
        "gen_simple_cov_recall": gen_simple["cov_recall"], "gen_simple_cov_precision": gen_simple["cov_precision"],
        "gen_emd_density": gen["emd_density"], "gen_emd_n_elements": gen["emd_n_elements"],
        "gen_struct_div": gen["struct_div"], "gen_comp_div": gen["comp_div"],
        "reference_cov_recall": ref["cov_recall"], "reference_cov_precision": ref["cov_precision"],
        "reference_simple_cov_recall": ref_simple["cov_recall"],
        "reference_simple_cov_precision": ref_simple["cov_precision"],
        "metrics_wall_s": metrics_s,
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
