"""Train the crystal GAN (cpu preset) on the Mg-Mn-O matrices and print its figures as ONE JSON line.

    .venv/bin/python benchmarks/crystal_gan.py [--data NPY] [--out DIR] [--reuse] [--eval-data NPY]
        [--preset cpu|faithful] [--set key=value ...] [--seed N] [--per-composition N]
        [--n-best-of N] [--relax-top K] [--threads N]

Training: ``discovery.models.crystal_gan.trainer.TRAINER`` with the held-out compositions removed
(default rule: Mg6Mn3O11 plus four seeded picks, see `discovery.models.crystal_gan.data`). With
``--eval-data NPY`` every composition of that file is held out of training instead, and its
structures are the known ones.

Figures (threshold decoder unless marked ``qnet_``):

- over ``--per-composition`` samples of every composition of the data file (held-out included):
  ``valid`` (a cell, and every distance >= 0.5 A: `discovery.structures.structural_problem`),
  ``counts_ok`` (decoded per-role counts equal the conditioned ones), ``valid_and_counts``,
  ``unique`` (distinct canonical ids among valid samples with the right counts), ``novel`` (of those,
  the share that StructureMatcher matches to no training structure of the same composition, over a
  sample of at most 300);
- held out: for each held-out composition, ``--n-best-of`` (100) structures are generated; the
  valid ones with the right counts get a CHGNet single-point energy, the ``--relax-top`` (10) lowest
  are relaxed with CHGNet's ``StructOptimizer`` (FIRE, fmax 0.05 eV/A, at most 500 steps) and the
  lowest relaxed energy per atom is the best generated; every known structure of the composition is
  relaxed the same way and the lowest is the best known. ``within_25mev`` is true when
  best generated - best known <= 0.025 eV/atom. (The pre-screen by single-point energy is our
  choice, to keep the relaxations affordable on 2 cores; relaxing all 100 would take hours.)
- throughput: valid samples with the right counts per second of generation + decoding + validity
  check (``--threads`` torch threads).

A figure, ``crystal_gan_benchmark.png`` in ``--out``: the sample figures per decoder and the
energy gap of every held-out composition.

Logs go to stderr; stdout gets the JSON line only.

Measured (``benchmarks/crystal_gan.py --out /tmp/bench/crystal_gan`` to train, then
``--reuse --relax-top 5 --relax-steps 250`` for the figures; one torch thread; the shared 2-core
machine had two or three other agents' jobs running, load average 5-7): training 3,583 s (60
epochs at 24-80 s each; 17 s per epoch alone, about 17 minutes), held out Mg6Mn3O11, Mg1Mn7O8,
Mg3Mn1O5, Mg3Mn4O8, Mg5Mn1O6.

- threshold decoder: valid 59.1 %, counts as conditioned 21.6 %, both 10.2 %, unique 100 %,
  novel 100 % (of the valid samples with the right counts), 25 such samples per second;
- Q-network decoder: valid 55.7 %, counts 23.2 %, both 11.2 %;
- held out, best of 100 (CHGNet, eV/atom, generated - known): Mg6Mn3O11 no valid sample with the
  right counts; Mg1Mn7O8 +0.180; Mg3Mn1O5 +0.011 (within 25 meV); Mg3Mn4O8 +0.134; Mg5Mn1O6
  +1.104: 1 of 5 within 25 meV/atom.

These are far below the issue's targets (90 % valid, 95 % counts, 60 % within 25 meV): with about
19,000 iterations the cpu preset is two orders of magnitude short of the paper's ~1.75 M, and the
count classifiers and the generator had not converged (see `discovery.models.crystal_gan.training`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("benchmarks.crystal_gan")


def _r(x, digits: int = 4):
    if isinstance(x, float | np.floating):
        return round(float(x), digits) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _r(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_r(v, digits) for v in x]
    return x


_KNOWN: dict = {}


def sample_metrics(model, data, train_keys, per_comp: int, rng, decoder: str, novelty_max: int = 300) -> dict:
    """Validity, counts, uniqueness, novelty and throughput over every composition of ``data``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from discovery.models.crystal_gan.representation import decode
    from discovery.structures import candidate_id, structural_problem

    groups = data.compositions()
    t0 = time.perf_counter()
    n = valid = counts_ok = both = 0
    good: list[tuple[tuple[int, ...], object]] = []
    for comp in groups:
        for dec in model.generate(comp, per_comp, rng, decoder=decoder):
            n += 1
            ok = dec.structure is not None and structural_problem(dec.structure, 0.5) is None
            cnt = dec.counts == tuple(comp)
            valid += ok
            counts_ok += cnt
            if ok and cnt:
                both += 1
                good.append((comp, dec.structure))
    elapsed = time.perf_counter() - t0
    ids = {candidate_id(s) for _, s in good}
    matcher = StructureMatcher()
    pick = rng.choice(len(good), size=min(novelty_max, len(good)), replace=False) if good else []
    novel = 0
    for i in pick:
        comp, s = good[int(i)]
        if comp not in _KNOWN:  # decoded training structures of the composition, once
            _KNOWN[comp] = [decode(m, model.blocks).structure for m in data.matrices[groups[comp]]] \
                if comp in train_keys else []
        known = _KNOWN[comp]
        novel += not any(matcher.fit(s, k) for k in known)
    return {"samples": n, "valid": valid / n, "counts_ok": counts_ok / n, "valid_and_counts": both / n,
            "unique": len(ids) / max(both, 1), "novel": novel / max(len(pick), 1),
            "valid_per_s": both / elapsed, "seconds": elapsed}


def relax_best(structures, relaxer, steps: int, fmax: float) -> tuple[float, int]:
    """Lowest CHGNet-relaxed energy per atom (eV/atom) among ``structures`` and its index."""
    best, arg = math.inf, -1
    for i, s in enumerate(structures):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = relaxer.relax(s, fmax=fmax, steps=steps, verbose=False)
            e = float(r["trajectory"].energies[-1]) / len(s)
        except Exception as exc:  # a relaxation that blows up counts as no energy
            LOG.info("relaxation failed: %s", exc)
            continue
        if e < best:
            best, arg = e, i
    return best, arg


def held_out_energies(model, known: dict, n_best_of: int, top: int, rng, steps: int, fmax: float) -> dict:
    """Best CHGNet-relaxed generated vs known energy per held-out composition."""
    from chgnet.model import CHGNet, StructOptimizer

    from discovery.models.crystal_gan.data import composition_formula
    from discovery.structures import structural_problem

    with contextlib.redirect_stdout(sys.stderr):  # CHGNet prints its banner on stdout
        chgnet = CHGNet.load(verbose=False)
        relaxer = StructOptimizer(model=chgnet)
    out = {}
    for comp, known_structures in known.items():
        t0 = time.perf_counter()
        gen = [d.structure for d in model.generate(comp, n_best_of, rng)
               if d.structure is not None and d.counts == tuple(comp) and structural_problem(d.structure, 0.5) is None]
        entry = {"generated_valid": len(gen), "known": len(known_structures)}
        if gen:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                preds = chgnet.predict_structure(gen, task="e", batch_size=16)
            e0 = np.array([float(p["e"]) for p in preds])
            order = np.argsort(e0)[:top]
            best_gen, _ = relax_best([gen[i] for i in order], relaxer, steps, fmax)
        else:
            best_gen = math.inf
        best_known, _ = relax_best(known_structures, relaxer, steps, fmax)
        gap = best_gen - best_known
        entry.update(best_generated_ev=best_gen, best_known_ev=best_known, gap_ev=gap,
                     within_25mev=bool(math.isfinite(gap) and gap <= 0.025), seconds=time.perf_counter() - t0)
        out[composition_formula(comp, model.blocks)] = entry
        LOG.info("held out %s: %s", composition_formula(comp, model.blocks), entry)
    return out


def plot(metrics: dict, held: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = ["valid", "counts_ok", "valid_and_counts", "unique", "novel"]
    width = 0.38
    for k, (dec, m) in enumerate(metrics.items()):
        axes[0].bar(np.arange(len(keys)) + k * width, [m[key] for key in keys], width, label=dec)
    axes[0].set_xticks(np.arange(len(keys)) + width / 2, keys, rotation=20)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("samples of every composition")
    axes[0].legend()
    names = list(held)
    gaps = [held[n]["gap_ev"] * 1000 if math.isfinite(held[n]["gap_ev"]) else np.nan for n in names]
    axes[1].bar(names, gaps, color=["tab:green" if held[n]["within_25mev"] else "tab:red" for n in names])
    axes[1].axhline(25, color="k", ls="--", lw=1)
    axes[1].set_ylabel("best generated - best known (meV/atom, CHGNet)")
    axes[1].tick_params(axis="x", rotation=30)
    axes[1].set_title("held-out compositions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    from discovery.data.loaders import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data_dir() / "mgmno" / "mgmno_structures.npy")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "crystal_gan")
    p.add_argument("--reuse", action="store_true", help="evaluate the model already trained in --out")
    p.add_argument("--eval-data", type=Path, default=None, help="held-out structures (.npy); all held out")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-composition", type=int, default=20)
    p.add_argument("--n-best-of", type=int, default=100)
    p.add_argument("--relax-top", type=int, default=10)
    p.add_argument("--relax-steps", type=int, default=500)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from discovery.lifecycle import training_config
    from discovery.models.crystal_gan.data import composition_formula, load_matrices
    from discovery.models.crystal_gan.representation import Blocks, decode
    from discovery.models.crystal_gan.trainer import TRAINER

    overrides = list(args.overrides)
    config = training_config(TRAINER.config_model, args.preset, overrides, "benchmarks/crystal_gan.py")
    blocks = Blocks.from_config(config.blocks)
    eval_data = None
    if args.eval_data is not None:
        eval_data = load_matrices(args.eval_data, blocks, config.row_threshold)
        train_all = load_matrices(args.data, blocks, config.row_threshold)
        present = [composition_formula(c, blocks) for c in eval_data.compositions() if c in train_all.compositions()]
        config = config.model_copy(update={"holdout": tuple(present)})
    t0 = time.perf_counter()
    if args.reuse and (args.out / "crystal_gan.json").is_file():
        model = TRAINER.load(args.out)
        data = TRAINER.read_data(args.data, model.config)
    else:
        data = TRAINER.read_data(args.data, config)
        model = TRAINER.train(data, config, args.out, seed=args.seed,
                              progress=lambda s, d, t, i: LOG.info("%s %d/%d %s", s, d, t, i))
    train_s = time.perf_counter() - t0
    holdout = set(model.holdout)
    train_keys = {k for k in data.compositions() if k not in holdout}
    rng = np.random.default_rng(args.seed)
    metrics = {dec: sample_metrics(model, data, train_keys, args.per_composition, rng, dec,
                                   novelty_max=300 if dec == "threshold" else 100)
               for dec in ("threshold", "qnet")}
    LOG.info("sample metrics: %s", metrics)
    if eval_data is not None:
        known = {c: [decode(eval_data.matrices[i], blocks).structure for i in idx]
                 for c, idx in eval_data.compositions().items()}
    else:
        groups = data.compositions()
        known = {c: [decode(data.matrices[i], blocks).structure for i in groups[c]] for c in model.holdout}
    torch.set_num_threads(1)
    held = held_out_energies(model, known, args.n_best_of, args.relax_top, rng, args.relax_steps, args.fmax)
    png = plot(metrics, held, args.out / "crystal_gan_benchmark.png")
    within = sum(h["within_25mev"] for h in held.values())
    result = {
        "benchmark": "crystal_gan", "preset": model.config.preset, "data": str(args.data),
        "eval_data": str(args.eval_data) if args.eval_data else None, "train_s": model.manifest["metrics"].get(
            "train_s", train_s), "epochs": model.config.epochs,
        **{k: metrics["threshold"][k] for k in ("valid", "counts_ok", "valid_and_counts", "unique", "novel")},
        "valid_per_s": metrics["threshold"]["valid_per_s"],
        **{f"qnet_{k}": metrics["qnet"][k] for k in ("valid", "counts_ok", "valid_and_counts", "unique", "novel")},
        "held_out": held, "within_25mev": within, "held_out_compositions": len(held),
        "within_25mev_share": within / max(len(held), 1), "threads": args.threads, "figure": str(png),
    }
    print(json.dumps(_r(result)))


if __name__ == "__main__":
    main()
