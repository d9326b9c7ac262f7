"""Crystal structure prediction on the 26 compounds of Cheng et al. 2022 (LCOM's benchmark): LCOM, its
supervised ablation (SL), CD-VAE decoding without optimisation and random search. ONE JSON line per
method on stdout (logs on stderr), a figure ``csp26.png`` and every detail in ``csp26.json``.

    .venv/bin/python benchmarks/csp26.py [--out runs/csp26] [--dataset-config configs/datasets/csp_binaries.yaml]
        [--starts 8] [--steps T] [--cdvae-set key=value ...] [--lcom-set key=value ...] [--ray] [--gpaw]
        [--eval-data CSV] [--formulas LiF NaCl ...] [--seed 0]

End to end from what is cached in ``--out`` (each step is skipped when its output is there):

1. the training set (`discovery.datasets.build_dataset`, default config ``csp_binaries``; the 26
   formulas are excluded and the benchmark checks that none is in the CSV);
2. CD-VAE, cpu preset (``discovery.models.cdvae``), on it (``--cdvae-set`` overrides);
3. LCOM (conservative) and SL (``conservative: false``), cpu preset (``--lcom-set`` overrides);
4. the known ground states (DFT.md: rock salt for the alkali halides, MgO, CaO, SrO, BaO, CdO,
   MgS, CaS, SrS, BaS; CsCl (B2) for CsCl; wurtzite for BeO, ZnO, CdS; zinc blende for BeS, ZnS;
   diamond for C, Si; 2 atoms per cell, 4 for wurtzite) relaxed with CHGNet;
5. per formula ``--starts`` K random starting cells of that atom count relaxed with CHGNet (shared
   by LCOM, SL and the decoding baseline), then per method: encode, T latent steps (0 for the
   decoding baseline), decode with composition and atom count forced, relax with CHGNet; random
   search relaxes 2K random cells (the same number of CHGNet relaxations as the others spend);
6. each method's prediction for a formula is its lowest-energy sound result (finals only).

Criteria per formula, against the CHGNet-relaxed ground state (E: CHGNet energy per atom):

- ``paper``: (E - E_gs) / |E_gs| <= 0.2 (LCOM's criterion, there with GPAW energies relative to
  atomic references; CHGNet's total energies are on a similar scale). ``paper_formation``: the same
  ratio with formation energies (CHGNet elemental references of the data set), a stricter reading;
- ``strict``: the relaxed prediction matches the ground-state prototype (StructureMatcher,
  pymatgen's default tolerances) or lies at most 10 meV/atom above it.

With ``--gpaw`` every prediction and every ground state is also relaxed with GPAW (the oracle's
defaults: PBE, 600/800 eV, k density 2, BFGS 40 steps) and the criteria are evaluated on GPAW
energies (``gpaw_*``). Timings per structure: encode + optimise + decode (wall time of the batch
over K), and the same plus the CHGNet relaxation of the result (sum of single-core relaxation times
over K). ``--eval-data`` replaces the 26 by a CSV with columns ``formula`` (one cell, e.g. Zn2O2)
and ``cif`` (its known ground state).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("csp26")

#: (formula as one cell, known ground-state prototype) of Cheng et al.'s 26 (DFT.md section 1).
CHENG26 = [("LiF", "rocksalt"), ("NaF", "rocksalt"), ("KF", "rocksalt"), ("RbF", "rocksalt"), ("CsF", "rocksalt"),
           ("LiCl", "rocksalt"), ("NaCl", "rocksalt"), ("KCl", "rocksalt"), ("RbCl", "rocksalt"),
           ("CsCl", "cscl"), ("Be2O2", "wurtzite"), ("MgO", "rocksalt"), ("CaO", "rocksalt"), ("SrO", "rocksalt"),
           ("BaO", "rocksalt"), ("Zn2O2", "wurtzite"), ("CdO", "rocksalt"), ("BeS", "zincblende"),
           ("MgS", "rocksalt"), ("CaS", "rocksalt"), ("SrS", "rocksalt"), ("BaS", "rocksalt"),
           ("ZnS", "zincblende"), ("Cd2S2", "wurtzite"), ("C2", "diamond"), ("Si2", "diamond")]
METHODS = ("LCOM", "SL", "CDVAE-decode", "random")


def ground_state(formula: str, prototype: str) -> Any:
    from pymatgen.core import Composition

    from discovery.data.references import build_reference_phase, elemental_reference

    comp = Composition(formula)
    if prototype == "diamond":
        structure, _ = elemental_reference(comp.reduced_formula)
    else:
        structure = build_reference_phase(comp.reduced_formula, prototype)
    if len(structure) != int(comp.num_atoms):
        raise ValueError(f"{formula}: the {prototype} cell has {len(structure)} atoms, not {int(comp.num_atoms)}")
    return structure


class Relaxations:
    """CHGNet relaxations through a project executor (``workers`` components), cached on disk."""

    def __init__(self, folder: Path, workers: int, ray: bool, fmax: float = 0.05, max_steps: int = 300):
        from discovery.build import ComponentSpec
        from discovery.datasets.worklog import WorkLog
        from discovery.oracles.chgnet_oracle import MLIPConfig

        self.cache = WorkLog(folder / "relaxations.jsonl", f"chgnet fmax={fmax} max_steps={max_steps}")
        spec = ComponentSpec(role="mlip", config=MLIPConfig(fmax_ev_per_a=fmax, max_steps=max_steps))
        if ray:
            from discovery.actors.executor import RayExecutor

            self.executor, self.workers = RayExecutor(address="local"), workers
        else:
            import scipy.linalg  # noqa: F401
            from threadpoolctl import threadpool_limits

            from discovery.executor import LocalExecutor

            threadpool_limits(1)
            self.executor, self.workers = LocalExecutor(), 1
        self.names = [f"chgnet-{k}" for k in range(self.workers)]
        self.executor.start({n: spec for n in self.names}, spec, 1)

    @staticmethod
    def key(structure: Any) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(structure.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:24]

    def relax(self, structures: list[Any]) -> list[tuple[Any, float | None, float]]:
        """``(relaxed structure or None, energy per atom or None, seconds)`` per input (None in, None out)."""
        from pymatgen.core import Structure

        from discovery.records import Candidate

        todo = {}
        for s in structures:
            if s is not None and self.key(s) not in self.cache:
                todo[self.key(s)] = s
        items = list(todo.items())
        step = 4 * self.workers
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            batches = [chunk[k::self.workers] for k in range(self.workers)]
            calls = [(self.names[k], "evaluate_many", ([Candidate(id=key, structure=s.as_dict(), formula=s.composition
                                                                  .reduced_formula, generator="csp26")
                                                        for key, s in batch],))
                     for k, batch in enumerate(batches) if batch]
            for batch, evals in zip([b for b in batches if b], self.executor.call_many(calls), strict=True):
                for (key, _), ev in zip(batch, evals, strict=True):
                    ok = ev.status == "ok" and ev.relaxed_structure is not None
                    self.cache.append({"job": key, "status": "ok" if ok else "failed",
                                       "energy_per_atom": ev.energy_per_atom if ok else None,
                                       "structure": ev.relaxed_structure if ok else None,
                                       "wall_s": ev.provenance.wall_s if ev.provenance else 0.0})
        out = []
        for s in structures:
            rec = self.cache.results.get(self.key(s)) if s is not None else None
            if rec is None or rec["status"] != "ok":
                out.append((None, None, float(rec["wall_s"]) if rec else 0.0))
            else:
                out.append((Structure.from_dict(rec["structure"]), float(rec["energy_per_atom"]), float(rec["wall_s"])))
        return out

    def close(self) -> None:
        self.executor.shutdown()


def ensure_models(args: argparse.Namespace) -> tuple[Path, Path, Path, Path, dict[str, Any]]:
    """Dataset, CD-VAE, LCOM and SL folders under ``--out`` (built when missing)."""
    from discovery.datasets.builder import build_dataset
    from discovery.datasets.config import load_dataset_config
    from discovery.lifecycle import training_config
    from discovery.models.cdvae.presets import CDVAEConfig
    from discovery.models.cdvae.trainer import TRAINER as CDVAE
    from discovery.models.lcom.presets import LCOMConfig
    from discovery.models.lcom.trainer import TRAINER as LCOM

    out = args.out
    data_dir = out / "dataset"
    config = load_dataset_config(args.dataset_config, args.dataset_set)
    if not (data_dir / "dataset.json").is_file():
        executor = None
        if args.ray:
            from discovery.actors.executor import RayExecutor

            executor = RayExecutor(address="local")  # a fresh instance, never a running cluster
        t = time.perf_counter()
        build_dataset(config, data_dir, executor=executor, progress=_progress("dataset"))
        log.info("dataset built in %.0f s", time.perf_counter() - t)
    manifest = json.loads((data_dir / "dataset.json").read_text())
    from discovery.datasets.builder import config_hash

    _same_settings(data_dir, manifest.get("config_hash"), config_hash(config), "--dataset-config/--dataset-set")
    csv_path = data_dir / manifest["csv"]["path"]
    cdvae_dir = out / "cdvae"
    cfg = training_config(CDVAEConfig, "cpu", args.cdvae_set, "csp26 --cdvae-set")
    if (cdvae_dir / "cdvae.json").is_file():
        _same_settings(cdvae_dir, json.loads((cdvae_dir / "cdvae.json").read_text())["config"],
                       cfg.model_dump(mode="json"), "--cdvae-set")
    else:
        t = time.perf_counter()
        CDVAE.train(CDVAE.read_data(csv_path, cfg), cfg, cdvae_dir, tracker=None, progress=_progress("cdvae"),
                    seed=args.seed, device="cpu")
        log.info("CD-VAE trained in %.0f s", time.perf_counter() - t)
    folders = {}
    for name, conservative in (("lcom", True), ("sl", False)):
        folder = out / name
        cfg = training_config(LCOMConfig, "cpu", [*args.lcom_set, f"conservative={str(conservative).lower()}",
                                                  f"cdvae_dir={cdvae_dir.resolve()}"], "csp26 --lcom-set")
        if (folder / "lcom.json").is_file():
            _same_settings(folder, json.loads((folder / "lcom.json").read_text())["config"],
                           cfg.model_dump(mode="json"), "--lcom-set")
        else:
            t = time.perf_counter()
            LCOM.train(LCOM.read_data(csv_path, cfg), cfg, folder, tracker=None, progress=_progress(name),
                       seed=args.seed, device="cpu")
            log.info("%s trained in %.0f s", name, time.perf_counter() - t)
        folders[name] = folder
    return csv_path, cdvae_dir, folders["lcom"], folders["sl"], manifest


def _same_settings(folder: Path, stored: Any, wanted: Any, option: str) -> None:
    """A cached step is reused only when it was made with the settings asked for now."""
    if stored != wanted:
        sys.exit(f"csp26: {folder} was made with other settings than {option} ask for now; "
                 f"use another --out or delete that folder")


def _progress(stage: str):
    last = {"t": 0.0}

    def report(step: str, done: int, total: int, info: dict[str, Any]) -> None:
        if time.perf_counter() - last["t"] > 30 or done == total:
            last["t"] = time.perf_counter()
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()}
            log.info("%s %s %d/%d %s", stage, step, done, total, shown)

    return report


def formation(energy: float | None, structure: Any, refs: dict[str, Any]) -> float | None:
    if energy is None or structure is None:
        return None
    comp = structure.composition.fractional_composition
    return energy - sum(float(x) * refs[str(el)]["energy_per_atom"] for el, x in comp.items())


def judge(best: Any, energy: float | None, gs: Any, e_gs: float, refs: dict[str, Any], matcher: Any) -> dict[str, Any]:
    """Both criteria for one prediction against the relaxed ground state."""
    from discovery.structures import space_group_symbol

    if best is None or energy is None:
        return {"energy": None, "gap": None, "rel_gap": None, "paper": False, "paper_formation": False,
                "match": False, "strict": False}
    gap = energy - e_gs
    ef, ef_gs = formation(energy, best, refs), formation(e_gs, gs, refs)
    match = bool(matcher.fit(best, gs))
    return {"energy": energy, "gap": gap, "rel_gap": gap / abs(e_gs), "paper": gap / abs(e_gs) <= 0.2,
            "paper_formation": (ef - ef_gs) / abs(ef_gs) <= 0.2 if ef_gs else None, "match": match,
            "strict": match or gap <= 0.010, "spacegroup": space_group_symbol(best)}


def targets(args: argparse.Namespace) -> list[tuple[str, Any]]:
    if args.eval_data is None:
        chosen = [t for t in CHENG26 if not args.formulas or t[0] in args.formulas
                  or _reduced(t[0]) in args.formulas]
        return [(f, ground_state(f, p)) for f, p in chosen]
    import csv

    from discovery.data.loaders import parse_cif

    with open(args.eval_data, newline="") as fh:
        return [(row["formula"], parse_cif(row["cif"])) for row in csv.DictReader(fh)]


def _reduced(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


def run(args: argparse.Namespace) -> dict[str, Any]:
    from discovery.csp import predict_structures
    from discovery.models.lcom.starts import cell_atoms, random_start
    from discovery.models.lcom.trainer import TRAINER
    from discovery.structures import (
        space_group_symbol,
        structural_problem,
        structure_matcher,
    )

    csv_path, cdvae_dir, lcom_dir, sl_dir, data_manifest = ensure_models(args)
    refs = data_manifest["references"]
    chosen = targets(args)
    in_training = _training_formulas(csv_path) & {_reduced(f) for f, _ in chosen}
    if in_training and not args.allow_overlap:
        sys.exit(f"csp26: the training set holds test formulas {sorted(in_training)}; rebuild it with them "
                 f"excluded (or pass --allow-overlap to measure anyway)")
    models = {"LCOM": TRAINER.load(lcom_dir), "SL": TRAINER.load(sl_dir)}
    steps = models["LCOM"].config.opt_steps if args.steps is None else args.steps
    relax = Relaxations(args.out / "relax", args.workers, args.ray)
    matcher = structure_matcher()
    results: dict[str, Any] = {m: {} for m in METHODS}
    timing = {m: {"optimise": [], "relax": []} for m in METHODS}
    ground: dict[str, Any] = {}
    try:
        for formula, gs_start in chosen:
            reduced, atoms = cell_atoms(formula, models["LCOM"].max_atoms)
            (gs, e_gs, _), = relax.relax([gs_start])
            ground[formula] = {"energy": e_gs, "spacegroup": space_group_symbol(gs)}
            rng = np.random.default_rng(np.random.SeedSequence([args.seed, *map(ord, formula)]))
            drawn = [random_start(atoms, rng) for _ in range(2 * args.starts)]
            relaxed = relax.relax(drawn)
            starts = [r[0] if r[0] is not None else d for r, d in zip(relaxed[:args.starts], drawn, strict=False)]
            for index, method in enumerate(METHODS):
                if method == "random":
                    finals = relaxed
                    timing[method]["relax"].append(sum(r[2] for r in relaxed) / len(relaxed))
                else:
                    model = models["SL" if method == "SL" else "LCOM"]
                    pred = predict_structures(model, reduced, atoms, starts, 0 if method == "CDVAE-decode" else steps,
                                              np.random.default_rng(np.random.SeedSequence(
                                                  [args.seed, index, *map(ord, formula)])))
                    finals = relax.relax(pred["decoded"])
                    timing[method]["optimise"].append(pred["seconds"] / args.starts)
                    timing[method]["relax"].append(pred["seconds"] / args.starts
                                                   + sum(r[2] for r in finals) / args.starts)
                sound = [(s, e) for s, e, _ in finals if s is not None and e is not None and len(s) == len(atoms)
                         and s.composition.reduced_formula == reduced and structural_problem(s, 0.5) is None]
                best, energy = min(sound, key=lambda t: t[1]) if sound else (None, None)
                results[method][formula] = {**judge(best, energy, gs, e_gs, refs, matcher), "n_sound": len(sound)}
                if best is not None:
                    folder = args.out / "predictions" / method
                    folder.mkdir(parents=True, exist_ok=True)
                    best.to(filename=str(folder / f"{formula}.cif"))
            log.info("%s: E_gs %.4f; %s", formula, e_gs, {m: (None if results[m][formula]["gap"] is None else
                                                              round(results[m][formula]["gap"], 3),
                                                              results[m][formula]["strict"]) for m in METHODS})
    finally:
        relax.close()
    summary = {"ground_states": ground, "results": results, "steps": steps, "starts": args.starts,
               "training_formulas_among_26": sorted(in_training), "dataset": data_manifest["counts"],
               "models": {k: v.manifest["metrics"] for k, v in models.items()},
               "cdvae": json.loads((cdvae_dir / "cdvae.json").read_text())["metrics"]}
    if args.gpaw:
        summary["gpaw"] = gpaw_energies(args, results, ground, dict(chosen))
    summary["timing"] = {m: {k: float(np.mean(v)) if v else None for k, v in t.items()} for m, t in timing.items()}
    return summary


def _training_formulas(csv_path: Path) -> set[str]:
    import csv

    with open(csv_path, newline="") as fh:
        return {row["formula"] for row in csv.DictReader(fh)}


def gpaw_energies(args: argparse.Namespace, results: dict[str, Any], ground: dict[str, Any],
                  starts: dict[str, Any]) -> dict[str, Any]:
    """GPAW relaxations of every prediction and ground state (oracle defaults), and the criteria on them."""
    from pymatgen.core import Structure

    from discovery.oracles.gpaw_oracle import GPAWConfig, GPAWOracle
    from discovery.structures import make_candidate

    oracle = GPAWOracle(GPAWConfig(), args.out / "gpaw")

    def energy(path: Path) -> float | None:
        if not path.is_file():
            return None
        ev = oracle.evaluate(make_candidate(Structure.from_file(path), "csp26"))
        return ev.energy_per_atom if ev.status == "ok" else None

    out: dict[str, Any] = {}
    for formula in ground:
        (args.out / "gpaw-gs").mkdir(parents=True, exist_ok=True)
        gs_path = args.out / "gpaw-gs" / f"{formula}.cif"
        if not gs_path.is_file():
            starts[formula].to(filename=str(gs_path))
        e_gs = energy(gs_path)
        out[formula] = {"ground_state": e_gs}
        for method in METHODS:
            e = energy(args.out / "predictions" / method / f"{formula}.cif")
            ok = e is not None and e_gs is not None
            out[formula][method] = {"energy": e, "paper": ok and (e - e_gs) / abs(e_gs) <= 0.2,
                                    "strict": ok and e - e_gs <= 0.010}
    return out


def figure(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formulas = list(summary["ground_states"])
    fig, ax = plt.subplots(figsize=(12, 3.8))
    for k, method in enumerate(METHODS):
        gaps = [summary["results"][method][f]["gap"] for f in formulas]
        xs = np.arange(len(formulas)) + (k - 1.5) * 0.2
        ax.bar(xs, [1000 * g if g is not None else np.nan for g in gaps], width=0.2, label=method)
    ax.axhline(10, color="k", lw=0.8, ls="--")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xticks(np.arange(len(formulas)), formulas, rotation=60)
    ax.set_ylabel("E - E_gs (meV/atom, CHGNet)")
    ax.legend(ncols=4, fontsize=8)
    ax.set_title("CSP on Cheng et al.'s 26: best relaxed prediction against the known ground state")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "csp26")
    p.add_argument("--dataset-config", type=Path, default=REPO / "configs" / "datasets" / "csp_binaries.yaml")
    p.add_argument("--dataset-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cdvae-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lcom-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--starts", type=int, default=8, help="random starts per formula (random search: twice as many)")
    p.add_argument("--steps", type=int, default=None, help="latent steps (default: the LCOM model's opt_steps)")
    p.add_argument("--formulas", nargs="*", default=None, help="a subset of the 26")
    p.add_argument("--eval-data", type=Path, default=None, help="CSV of formula + ground-state cif instead of the 26")
    p.add_argument("--gpaw", action="store_true", help="also relax predictions and ground states with GPAW")
    p.add_argument("--ray", action="store_true", help="relax on a local Ray instance (--workers processes)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-overlap", action="store_true", help="measure even when test formulas are in the training set")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("pymatgen", "pyxtal", "mlflow", "ray", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run(args)
    (args.out / "csp26.json").write_text(json.dumps(summary, indent=1, default=str))
    figure(summary, args.out / "csp26.png")
    n = len(summary["ground_states"])
    for method in METHODS:
        r = summary["results"][method]
        line = {"method": method, "energies": "chgnet", "n": n, "starts": args.starts, "steps": 0 if method in ("CDVAE-decode", "random")
                else summary["steps"],
                "success_paper": sum(bool(x["paper"]) for x in r.values()),
                "success_paper_formation": sum(bool(x["paper_formation"]) for x in r.values()),
                "success_strict": sum(bool(x["strict"]) for x in r.values()),
                "matched_prototype": sum(bool(x["match"]) for x in r.values()),
                "seconds_per_structure_optimise": summary["timing"][method]["optimise"],
                "seconds_per_structure_with_relax": summary["timing"][method]["relax"],
                "strict_failures": sorted(f for f, x in r.items() if not x["strict"]),
                "training_formulas_among_26": summary["training_formulas_among_26"],
                "dataset_structures": summary["dataset"]["structures"]}
        if "gpaw" in summary:
            line["gpaw_success_paper"] = sum(bool(v[method]["paper"]) for v in summary["gpaw"].values())
            line["gpaw_success_strict"] = sum(bool(v[method]["strict"]) for v in summary["gpaw"].values())
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
