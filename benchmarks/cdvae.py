"""Train CD-VAE on 80 % of a CDVAE CSV and print its figures as ONE JSON line (CD-VAE's own metrics).

    .venv/bin/python benchmarks/cdvae.py --data CSV [--preset cpu|faithful] [--out DIR] [--reuse]
        [--eval-data CSV] [--n-gen N] [--dataset perov_5|carbon_24|mp_20] [--set key=value ...]
        [--threads N] [--n-opt N] [--opt-steps N] [--max-eval N] [--no-recon-mean] [--seed N]

Training goes through the lifecycle trainer (`discovery.models.cdvae.trainer.TRAINER`, seeded 80/20
split by structure; ``dataset`` picks the preset's schedule for that data set and defaults to the
data file's folder name). ``--reuse`` evaluates the model already in ``--out``. The evaluation set
is the held-out 20 % of the split (the same crystals whose validation loss chose the top-1
checkpoint, as CD-VAE's validation set does), or every structure of ``--eval-data``.

- reconstruction (CD-VAE's ``recon`` + ``RecEval``, `discovery.metrics.reconstruction_metrics`):
  each evaluation crystal encoded, z drawn from its posterior (CD-VAE's ``scripts/evaluate.py``
  does this: ``recon_*``) and, a second time, z = mu (``recon_mean_*``; ``--no-recon-mean`` skips
  it), decoded by Langevin dynamics with the preset's settings; match rate and mean normalised
  RMS with StructureMatcher(stol 0.5, angle_tol 10, ltol 0.3);
- generation (CD-VAE's ``gen`` + ``GenEval``, `discovery.metrics.generation_metrics`): ``--n-gen``
  crystals from z ~ N(0, I); structural / compositional validity over all of them; COV-R / COV-P
  against the evaluation set with CD-VAE's thresholds for ``--dataset``; EMDs of density, number
  of elements and of the property as predicted by *this model's* property head (CD-VAE uses
  separately trained DimeNet++ property models, not available here, so ``emd_property`` is not
  comparable with the paper's); samples per second and valid samples per second of decoding;
- property optimisation (CD-VAE's ``opt`` + ``OptEval``; ``--n-opt 0`` skips it): the first
  ``--n-opt`` evaluation crystals encoded, ``--opt-steps`` Adam steps (lr 1e-3) on z lowering the
  property head, decoded at 10 points; each decoded crystal's property is again this model's
  head on its encoding (circular: CD-VAE scores with an independent model), and SR5/SR10/SR15
  use the 5th/10th/15th percentiles of the training split (``opt_sr*``) and CD-VAE's hard-coded
  full-data thresholds (``opt_sr*_paper``).

A figure, ``cdvae_benchmark.png`` in ``--out``: held-out crystals next to their reconstructions, a
gallery of generated crystals, the property of generated crystals (property head) against the
evaluation set's true values, the RMS distances of matched reconstructions and the headline numbers.

Logs go to stderr; stdout gets the JSON line only. Use ``--threads 2`` for timings on 2 cores.
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
log = logging.getLogger("benchmarks.cdvae")


def _round(x, digits: int = 5):
    if isinstance(x, float | np.floating):
        return round(float(x), digits) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


#: Oblique projection of Cartesian coordinates on the page (so that cubic cells do not overlap).
_PROJECTION = np.array([[1.0, 0.0], [0.0, 1.0], [0.38, 0.28]])


def _draw(ax, structure, title: str) -> None:
    """A crystal in oblique projection: its cell edges and its sites coloured by element."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    if structure is None:
        ax.text(0.5, 0.5, "not decodable", ha="center", va="center", transform=ax.transAxes)
        return
    import itertools

    import matplotlib.pyplot as plt

    lat = structure.lattice.matrix
    for a, b in itertools.combinations(itertools.product((0, 1), repeat=3), 2):
        if sum(x != y for x, y in zip(a, b, strict=True)) == 1:
            seg = np.array([a, b], dtype=float) @ lat @ _PROJECTION
            ax.plot(seg[:, 0], seg[:, 1], "k-", lw=0.5)
    cmap = plt.get_cmap("tab20")
    xy = structure.cart_coords @ _PROJECTION
    for (x, y), site in zip(xy, structure, strict=True):
        ax.scatter(x, y, s=40 + 2 * site.specie.Z, color=cmap(site.specie.Z % 20), edgecolor="k", lw=0.4)
    for el in structure.composition.elements:
        ax.scatter([], [], color=cmap(el.Z % 20), label=el.symbol, s=20)
    ax.legend(fontsize=5, loc="upper right", frameon=False)


def plot_benchmark(true, recon, generated, gen_prop, eval_prop, prop_name, rms_dists, summary: str,
                   path: Path) -> Path:
    """Reconstructions, a gallery of generated crystals, the property histogram, the RMS
    distribution of matched reconstructions and the headline numbers, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 11))
    grid = fig.add_gridspec(3, 6)
    for k in range(3):
        _draw(fig.add_subplot(grid[0, 2 * k]), true[k] if k < len(true) else None,
              f"held-out: {true[k].composition.reduced_formula}" if k < len(true) else "")
        _draw(fig.add_subplot(grid[0, 2 * k + 1]), recon[k] if k < len(recon) else None,
              f"reconstructed: {recon[k].composition.reduced_formula}" if k < len(recon) and recon[k] else "")
    shown = [s for s in generated if s is not None][:6]
    for k in range(6):
        _draw(fig.add_subplot(grid[1, k]), shown[k] if k < len(shown) else None,
              f"generated: {shown[k].composition.reduced_formula}" if k < len(shown) else "")
    ax = fig.add_subplot(grid[2, :3])
    finite_eval = np.asarray(eval_prop, float)[np.isfinite(eval_prop)] if len(eval_prop) else np.array([])
    if len(gen_prop) or len(finite_eval):
        allv = np.concatenate([np.asarray(gen_prop, float), finite_eval])
        bins = np.linspace(np.percentile(allv, 0.5), np.percentile(allv, 99.5), 40)
        ax.hist(finite_eval, bins=bins, alpha=0.6, density=True, label="evaluation set (DFT)")
        ax.hist(gen_prop, bins=bins, alpha=0.6, density=True, label="generated (property head)")
        ax.legend()
    ax.set(xlabel=prop_name or "property", ylabel="density", title="property: generated vs data")
    ax = fig.add_subplot(grid[2, 3:5])
    matched = [r for r in rms_dists if r is not None]
    if matched:
        ax.hist(matched, bins=30, color="tab:green")
    ax.set(xlabel="normalised RMS distance", ylabel="matched reconstructions",
           title=f"reconstruction: {len(matched)} of {len(rms_dists)} matched")
    ax = fig.add_subplot(grid[2, 5])
    ax.axis("off")
    ax.text(0.0, 1.0, summary, va="top", ha="left", fontsize=8, family="monospace", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    from discovery.data.loaders import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data_dir() / "perov_5" / "val.csv")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="model folder (default runs/benchmarks/cdvae-<dataset>)")
    p.add_argument("--reuse", action="store_true", help="evaluate the model already trained in --out")
    p.add_argument("--eval-data", type=Path, default=None, help="evaluate on every structure of this CSV")
    p.add_argument("--n-gen", type=int, default=1000, help="random samples (CD-VAE: 10,000; MODELS.md 4.7 cpu: 1,000)")
    p.add_argument("--dataset", default=None, help="perov_5, carbon_24 or mp_20 (schedule and COV thresholds)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 for timings on this machine)")
    p.add_argument("--n-opt", type=int, default=100, help="optimisation runs (CD-VAE: 100; 0 skips)")
    p.add_argument("--opt-steps", type=int, default=5000, help="Adam steps per run (CD-VAE: 5,000)")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on at most N structures")
    p.add_argument("--n-valid-sample", type=int, default=1000, help="valid samples for EMDs (CD-VAE: 1,000)")
    p.add_argument("--no-recon-mean", action="store_true", help="skip the second reconstruction from z = mu")
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes for CrystalNN fingerprints")
    args = p.parse_args()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("pymatgen", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from discovery.lifecycle import check_device, training_config
    from discovery.metrics.coverage import COV_CUTOFFS
    from discovery.metrics.fingerprints import FingerprintCache
    from discovery.metrics.generation import (
        CDVAE_SR_THRESHOLDS,
        best_of_runs,
        generation_metrics,
        optimization_success_rates,
    )
    from discovery.metrics.reconstruction import reconstruction_metrics
    from discovery.metrics.validity import compositionally_valid, structurally_valid
    from discovery.models.cdvae.data import read_cdvae_data
    from discovery.models.cdvae.presets import CDVAEConfig
    from discovery.models.cdvae.trainer import TRAINER

    dataset = args.dataset or (args.data.parent.name if args.data.parent.name in COV_CUTOFFS else "perov_5")
    if dataset not in COV_CUTOFFS:
        p.error(f"--dataset must be one of {sorted(COV_CUTOFFS)}, not {dataset!r}")
    out = args.out or REPO / "runs" / "benchmarks" / f"cdvae-{dataset}"
    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0].strip() == "dataset" for o in overrides):
        overrides.insert(0, f"dataset={dataset}")
    config = training_config(CDVAEConfig, args.preset, overrides, "benchmarks/cdvae.py")
    device = check_device(args.device)
    t = time.perf_counter()
    data = TRAINER.read_data(args.data, config)
    read_s = time.perf_counter() - t
    if args.reuse:
        model = TRAINER.load(out, device)
    else:
        def progress(stage, done, total, info):
            if stage == "train":
                log.info("epoch %d/%d %s", done, total, {k: round(v, 4) for k, v in info.items()})

        model = TRAINER.train(data, config, out, tracker=None, progress=progress, seed=args.seed, device=device)
    m = model.manifest["metrics"]
    train_wall = float(m["wall_seconds"]) + (0.0 if args.reuse else read_s)

    if args.eval_data is not None:
        eval_data = read_cdvae_data(args.eval_data, config)
        eval_structures = eval_data.structures
        eval_prop = eval_data.property_values() if eval_data.property == model.property else np.full(len(eval_data),
                                                                                                     np.nan)
    else:
        index = {cid: k for k, cid in enumerate(data.ids)}
        held = [index[c] for c in model.manifest["split"]["val"] if c in index]
        eval_structures = [data.structures[k] for k in held]
        eval_prop = data.property_values()[held]
    eval_structures = eval_structures[:args.max_eval]
    eval_prop = np.asarray(eval_prop)[:args.max_eval]
    log.info("evaluating on %d structures (%s)", len(eval_structures), args.eval_data or "held-out 20 %")
    rng = np.random.default_rng(args.seed + 1)
    cache = FingerprintCache(out / "fingerprints.npz")

    t = time.perf_counter()
    recon = model.reconstruct(eval_structures, rng, from_mean=False)
    recon_s = time.perf_counter() - t
    rec = reconstruction_metrics(recon, eval_structures, n_jobs=args.n_jobs, cache=cache)
    log.info("reconstruction (posterior draw): match %.4f, rmse %s (%.0f s)", rec["match_rate"], rec["rmse"], recon_s)
    rec_mean = None
    if not args.no_recon_mean:
        recon_mu = model.reconstruct(eval_structures, rng, from_mean=True)
        rec_mean = reconstruction_metrics(recon_mu, eval_structures, n_jobs=args.n_jobs, cache=cache)
        log.info("reconstruction (z = mu): match %.4f, rmse %s", rec_mean["match_rate"], rec_mean["rmse"])

    t = time.perf_counter()
    generated = model.generate(args.n_gen, rng)
    gen_s = time.perf_counter() - t

    def property_fn(structures):
        if model.property is None:
            return [math.nan] * len(structures)
        mu, _ = model.encode(structures)
        return model.predict_property(mu)

    gen = generation_metrics(generated, eval_structures, dataset=dataset, n_valid_sample=args.n_valid_sample,
                             seed=args.seed, property_fn=property_fn if model.property else None,
                             n_jobs=args.n_jobs, cache=cache)
    log.info("generation: %s", {k: gen[k] for k in ("struct_validity", "comp_validity", "cov_recall",
                                                         "cov_precision")})
    gen_valid = [s for s in generated if s is not None and structurally_valid(s)]
    gen_prop = property_fn(gen_valid[:1000]) if model.property and gen_valid else []

    opt: dict[str, float | None] = {}
    if args.n_opt > 0 and model.property is not None:
        starts = eval_structures[:args.n_opt]
        t = time.perf_counter()
        batches = model.optimize(starts, steps=args.opt_steps, lr=1e-3, rng=rng, n_saved=10)
        opt_s = time.perf_counter() - t
        decoded = [s for batch in batches for s in batch]  # step-major, CD-VAE's layout
        valid = [s is not None and structurally_valid(s) and compositionally_valid(s) for s in decoded]
        values = np.full(len(decoded), np.nan)
        ok = [k for k, v in enumerate(valid) if v]
        if ok:
            values[ok] = property_fn([decoded[k] for k in ok])
        best = best_of_runs(values, valid, len(starts))
        train_values = model.manifest.get("train_property") or None
        ours = optimization_success_rates(best, train_values=train_values) if train_values else {}
        paper = optimization_success_rates(best, thresholds=CDVAE_SR_THRESHOLDS[dataset])
        start_values = property_fn(starts)
        opt = {**{f"opt_{k.lower()}": v for k, v in ours.items()},
               **{f"opt_{k.lower()}_paper": v for k, v in paper.items()},
               "opt_runs": len(starts), "opt_valid": float(np.mean(valid)),
               "opt_mean_start_property": float(np.mean(start_values)),
               "opt_mean_best_property": float(np.mean(best[np.isfinite(best)])) if np.isfinite(best).any() else None,
               "opt_wall_s": opt_s}
    cache.save()

    n_gen = len(generated)
    summary = "\n".join([
        f"{dataset}, {model.config.preset} preset",
        f"train {model.manifest['data']['n_train']}, eval {len(eval_structures)}", "",
        f"recon match {rec['match_rate']:.3f}" + (f" (mu {rec_mean['match_rate']:.3f})" if rec_mean else ""),
        f"recon RMSE {rec['rmse'] if rec['rmse'] is None else round(rec['rmse'], 4)}",
        f"valid struct {gen['struct_validity']:.3f}", f"valid comp {gen['comp_validity']:.3f}",
        f"COV-R {gen['cov_recall']:.3f}", f"COV-P {gen['cov_precision']:.3f}",
        f"valid/s {gen['n_valid'] / gen_s if gen_s > 0 else 0:.2f} ({args.threads} thr)",
        f"training {train_wall / 60:.1f} min"])
    figure = plot_benchmark(eval_structures[:3], recon[:3], generated, gen_prop, eval_prop, model.property,
                            rec["rms_dists"], summary, out / "cdvae_benchmark.png")
    result = {
        "data": str(args.data), "eval_data": str(args.eval_data) if args.eval_data else "held-out 20 %",
        "dataset": dataset, "preset": model.config.preset, "device": device, "threads": args.threads,
        "n_train": model.manifest["data"]["n_train"], "n_eval": len(eval_structures),
        "property": model.property, "epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"),
        "best_val_loss": m.get("best_val_loss"), "train_wall_s": train_wall, "train_loop_s": m.get("train_seconds"),
        "recon_match_rate": rec["match_rate"], "recon_rmse": rec["rmse"], "recon_n_valid": rec["n_valid"],
        "recon_wall_s": recon_s,
        "recon_mean_match_rate": rec_mean["match_rate"] if rec_mean else None,
        "recon_mean_rmse": rec_mean["rmse"] if rec_mean else None,
        "gen_n": n_gen, "gen_struct_validity": gen["struct_validity"], "gen_comp_validity": gen["comp_validity"],
        "gen_validity": gen["validity"], "gen_cov_recall": gen["cov_recall"], "gen_cov_precision": gen["cov_precision"],
        "gen_cov_recall_valid": gen["cov_recall_valid"], "gen_cov_precision_valid": gen["cov_precision_valid"],
        "gen_emd_density": gen["emd_density"], "gen_emd_n_elements": gen["emd_n_elements"],
        "gen_emd_property_head": gen["emd_property"], "gen_n_eval": gen["n_eval"],
        "gen_struct_div": gen["struct_div"], "gen_comp_div": gen["comp_div"],
        "gen_wall_s": gen_s, "samples_per_s": n_gen / gen_s if gen_s > 0 else None,
        "valid_samples_per_s": gen["n_valid"] / gen_s if gen_s > 0 else None,
        "langevin": model.config.langevin.model_dump(),
        **opt,
        "model_version": model.version, "out": str(out), "figure": str(figure),
    }
    print(json.dumps({k: _round(v) if not isinstance(v, dict) else {a: _round(b) for a, b in v.items()}
                      for k, v in result.items()}))


if __name__ == "__main__":
    main()
