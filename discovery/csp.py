"""``discovery csp FORMULA [...]``: crystal structure prediction with LCOM (Qi, Geng et al.).

    discovery csp NaCl Zn2O2 --lcom runs/lcom [--cdvae runs/cdvae] [--starts 8] [--steps 10]
        [--relax none|chgnet|gpaw] [--out runs/csp] [--json] [--seed 0]

Per formula (its amounts are one cell: ``Zn2O2`` is a 4-atom cell, ``NaCl`` a 2-atom one):

1. ``--starts`` K random starting structures: a random lattice (angles 60-120 degrees, lengths of
   random ratios scaled to the volume of the atoms' spheres at packing fraction 0.35) and random
   fractional coordinates (redrawn while two atoms are closer than 0.7 x the sum of their
   covalent radii), relaxed to the nearest local minimum by the ``--relax`` fidelity (the paper
   relaxes them with GPAW; ``none`` keeps them as drawn);
2. encode (CD-VAE posterior mean, standardised), T = ``--steps`` gradient steps down the LCOM
   ensemble-mean formation energy (default: the model's ``opt_steps``), composition fixed;
3. decode with CD-VAE Langevin dynamics, the atom count and atom types forced to the formula;
4. relax the decoded crystal with the same fidelity (``none``: as decoded), and take its energy
   per atom (``none``: a CHGNet single point).

The prediction for a formula is the lowest-energy sound result. Outputs in ``--out``: per formula
``<formula>/start-k.cif``, ``decoded-k.cif``, ``final-k.cif``, ``best.cif`` and ``trajectory.png``
(LCOM's predicted formation energy along each latent path; relaxed start vs final energies),
``csp.csv`` (one row per start) and ``csp.json``; an MLflow run (``sqlite:///<out>/mlflow.db``
unless ``--tracking-uri``; ``--no-tracking`` turns it off). Timings: encode + optimise + decode per
structure, and the same plus the final relaxation.

Bad input (unknown element, an atom count the CD-VAE cannot represent, a missing or mismatched model
folder) is a `ConfigError` / `DataError`: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from discovery.errors import ConfigError, DataError
from discovery.fileio import atomic_write, write_text_atomic
from discovery.models.lcom.starts import cell_atoms, random_start

logger = logging.getLogger(__name__)

RELAX_CHOICES = ("none", "chgnet", "gpaw")
#: Far beyond what the paper uses (a few starts, 10-40 steps); a slip of three zeros is refused.
MAX_STARTS, MAX_STEPS = 1_000, 10_000


# ----------------------------------------------------------------------------- fidelities


class Relaxer:
    """Relaxation and energies at one fidelity: ``relax(structures) -> [(structure or None,
    energy per atom or None)]``. ``none`` returns the structures with CHGNet single-point energies."""

    def __init__(self, kind: str, workdir: Path | None = None, fmax: float = 0.05, max_steps: int = 300):
        if kind not in RELAX_CHOICES:
            raise ConfigError(f"--relax {kind!r}: expected one of {', '.join(RELAX_CHOICES)}")
        self.kind, self.workdir = kind, workdir
        self.fmax, self.max_steps = fmax, max_steps
        self._oracle: Any = None
        self._chgnet: Any = None

    @property
    def fidelity(self) -> str:
        return {"none": "chgnet-single-point", "chgnet": "chgnet", "gpaw": "gpaw"}[self.kind]

    def _model(self) -> Any:
        if self._chgnet is None:
            import contextlib
            import io

            from chgnet.model import CHGNet

            with contextlib.redirect_stdout(io.StringIO()):
                self._chgnet = CHGNet.load()
        return self._chgnet

    def single_point(self, structure: Any) -> float | None:
        """CHGNet energy per atom of a structure as it is (None when CHGNet fails)."""
        try:
            return float(self._model().predict_structure(structure)["e"])
        except Exception as exc:  # pathological cells
            logger.info("CHGNet single point failed (%s)", exc)
            return None

    def relax(self, structures: Sequence[Any]) -> list[tuple[Any, float | None]]:
        if self.kind == "none":
            return [(s, self.single_point(s) if s is not None else None) for s in structures]
        from discovery.structures import make_candidate

        out = []
        for s in structures:
            if s is None:
                out.append((None, None))
                continue
            try:
                cand = make_candidate(s, "csp")
            except Exception as exc:  # a degenerate decoded cell spglib cannot read
                logger.info("csp: structure skipped (%s)", exc)
                out.append((None, None))
                continue
            ev = self._oracle_for().evaluate(cand)
            if ev.status != "ok" or ev.relaxed_structure is None:
                out.append((None, None))
                continue
            from pymatgen.core import Structure

            out.append((Structure.from_dict(ev.relaxed_structure), float(ev.energy_per_atom)))
        return out

    def _oracle_for(self) -> Any:
        if self._oracle is None:
            if self.kind == "chgnet":
                from discovery.oracles.chgnet_oracle import CHGNetOracle, MLIPConfig

                self._oracle = CHGNetOracle(MLIPConfig(fmax_ev_per_a=self.fmax, max_steps=self.max_steps))
            else:
                from discovery.oracles.gpaw_oracle import GPAWConfig, GPAWOracle

                self._oracle = GPAWOracle(GPAWConfig(), self.workdir)
        return self._oracle


# ----------------------------------------------------------------------------- the search


def predict_structures(model: Any, formula: str, atoms: Sequence[int], starts: Sequence[Any], steps: int,
                       rng: np.random.Generator, langevin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode ``starts``, take ``steps`` latent steps on ``model`` (an `LCOMModel`; 0 = CD-VAE's
    undirected reconstruction), decode with ``atoms`` forced. Returns ``decoded`` structures (None
    where no lattice came out), the latent ``path`` energies (steps + 1, K) and ``seconds``."""
    t0 = time.perf_counter()
    z = model.encode(list(starts))
    comp = model.conditions([formula] * len(starts))
    path, energies = model.optimize(z, comp, steps)
    decoded = model.decode(path[-1], [list(atoms)] * len(starts), rng, langevin)
    return {"decoded": decoded, "energies": energies, "seconds": time.perf_counter() - t0}


def run_csp(model: Any, formulas: Sequence[str], out_dir: Path, *, starts: int = 8, steps: int | None = None,
            relax: str = "chgnet", seed: int = 0, langevin: dict[str, Any] | None = None, tracker: Any = None,
            progress: Callable[[str, int, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run CSP for every formula (see the module docstring); returns the ``csp.json`` content.

    Raises:
        ConfigError: a bad formula (checked for all formulas before any work).
    """
    import contextlib

    import scipy.linalg  # noqa: F401 - load its BLAS before limiting it (one thread: see datasets.builder)
    from threadpoolctl import threadpool_limits

    from discovery.structures import space_group_symbol, structural_problem

    parsed = [cell_atoms(f, model.max_atoms) for f in formulas]
    steps = model.config.opt_steps if steps is None else int(steps)
    if starts < 1 or steps < 0:
        raise ConfigError(f"--starts {starts} / --steps {steps}: expected at least 1 start and 0 steps")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    relaxer = Relaxer(relax, out_dir / "gpaw")
    results: dict[str, Any] = {"relax": relax, "fidelity": relaxer.fidelity, "starts": starts, "steps": steps,
                               "seed": seed, "lcom": model.version, "formulas": {}}
    rows = []
    with threadpool_limits(1) if relax != "gpaw" else contextlib.nullcontext():
        for n, (text, (formula, atoms)) in enumerate(zip(formulas, parsed, strict=True)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), n]))
            folder = out_dir / text
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            drawn = [random_start(atoms, rng) for _ in range(starts)]
            relaxed = relaxer.relax(drawn)
            # a start whose relaxation failed goes on as drawn (recorded as start_relaxed: false)
            start_structures = [r[0] if r[0] is not None else d for r, d in zip(relaxed, drawn, strict=True)]
            t_start = time.perf_counter() - t0
            pred = predict_structures(model, formula, atoms, start_structures, steps, rng, langevin)
            t1 = time.perf_counter()
            finals = relaxer.relax(pred["decoded"])
            t_final = time.perf_counter() - t1
            entries = []
            for k in range(starts):
                final, energy = finals[k]
                sound = final is not None and energy is not None and structural_problem(final, 0.5) is None \
                    and len(final) == len(atoms) and final.composition.reduced_formula == formula
                entries.append({"start": k, "start_energy": relaxed[k][1], "start_relaxed": relaxed[k][0] is not None,
                                "predicted_path": pred["energies"][:, k].tolist(),
                                "decoded": pred["decoded"][k] is not None, "energy_per_atom": energy if sound else None,
                                "sound": bool(sound)})
                for name, s in (("start", start_structures[k]), ("decoded", pred["decoded"][k]), ("final", final)):
                    if s is not None:
                        write_text_atomic(folder / f"{name}-{k}.cif", s.to(fmt="cif"))
            ok = [k for k, e in enumerate(entries) if e["sound"]]
            best = min(ok, key=lambda k: entries[k]["energy_per_atom"]) if ok else None
            if best is not None:
                write_text_atomic(folder / "best.cif", finals[best][0].to(fmt="cif"))
            summary = {"formula": formula, "atoms": len(atoms), "best_start": best,
                       "best_energy_per_atom": entries[best]["energy_per_atom"] if best is not None else None,
                       "best_spacegroup": space_group_symbol(finals[best][0]) if best is not None else None,
                       "n_sound": len(ok), "seconds_start_relax": t_start,
                       "seconds_per_structure_optimise": pred["seconds"] / starts,
                       "seconds_per_structure_with_relax": (pred["seconds"] + t_final) / starts, "entries": entries}
            results["formulas"][text] = summary
            plot_trajectory(folder / "trajectory.png", text, entries, relaxer.fidelity)
            for e in entries:
                rows.append({"formula": text, "start": e["start"], "start_energy_per_atom": e["start_energy"],
                             "predicted_start": e["predicted_path"][0], "predicted_end": e["predicted_path"][-1],
                             "energy_per_atom": e["energy_per_atom"], "sound": e["sound"], "best": e["start"] == best})
            if tracker is not None:
                tracker.log_metrics({f"{formula}.best_energy_per_atom": summary["best_energy_per_atom"] or math.nan,
                                     f"{formula}.seconds_per_structure": summary["seconds_per_structure_optimise"]},
                                    step=n)
            if progress is not None:
                progress("csp", n + 1, len(formulas), {"formula": text})
    _write_table(out_dir / "csp.csv", rows)
    write_text_atomic(out_dir / "csp.json", json.dumps(results, indent=1, default=_json_default))
    return results


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_write(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_trajectory(path: Path, formula: str, entries: list[dict[str, Any]], fidelity: str = "chgnet") -> None:
    """LCOM's predicted formation energy along each latent path (left) and the energies (at
    ``fidelity``) of each start and its final structure (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for e in entries:
        ax1.plot(range(len(e["predicted_path"])), e["predicted_path"], lw=1)
    ax1.set_xlabel("latent step")
    ax1.set_ylabel("LCOM formation energy (eV/atom)")
    ax1.set_title(f"{formula}: latent paths")
    for e in entries:
        if e["start_energy"] is not None and e["energy_per_atom"] is not None:
            ax2.plot([0, 1], [e["start_energy"], e["energy_per_atom"]], "o-", lw=1)
    ax2.set_xticks([0, 1], ["start", "final"])
    ax2.set_ylabel("energy (eV/atom)")
    ax2.set_title(f"energies ({fidelity})")
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=90)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- command line


def add_csp_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``csp``; returns its parser."""
    p = subparsers.add_parser("csp", help="crystal structure prediction with LCOM on CD-VAE latents")
    p.add_argument("formulas", nargs="+", metavar="FORMULA", help="one cell's atoms, e.g. NaCl or Zn2O2")
    p.add_argument("--lcom", type=Path, required=True, help="trained LCOM folder (discovery train lcom)")
    p.add_argument("--cdvae", type=Path, default=None, help="its CD-VAE folder (default: the one LCOM names)")
    p.add_argument("--starts", type=int, default=8, help="random starting structures per formula (default 8)")
    p.add_argument("--steps", type=int, default=None, help="latent steps (default: the model's opt_steps)")
    p.add_argument("--relax", default="chgnet", choices=RELAX_CHOICES, help="fidelity of relaxations (default chgnet)")
    p.add_argument("--out", type=Path, default=Path("runs/csp"), help="output folder (default runs/csp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///<out>/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    return p


def check_gpaw(symbols: set[str]) -> None:
    """Refuse ``--relax gpaw`` before anything is written when GPAW or a PAW setup is missing.

    Raises:
        OracleSetupError: GPAW does not import, or an element has no PBE setup.
    """
    import importlib.util

    from discovery.errors import OracleSetupError
    from discovery.oracles.gpaw_oracle import GPAWConfig, setup_available

    if importlib.util.find_spec("gpaw") is None:
        raise OracleSetupError("--relax gpaw: GPAW is not installed (see DFT.md)")
    xc = GPAWConfig().xc
    missing = sorted(s for s in symbols if not setup_available(s, xc))
    if missing:
        raise OracleSetupError(f"--relax gpaw: no {xc} PAW setup for {', '.join(missing)} (install gpaw-data)")


def cmd_csp(args, console) -> int:
    """Run ``discovery csp``; returns the exit code.

    Raises:
        ConfigError, DataError: bad formula, missing or mismatched model folders (one line).
    """
    from discovery.models.lcom.trainer import TRAINER

    if not 1 <= args.starts <= MAX_STARTS:
        raise ConfigError(f"--starts {args.starts}: expected 1 to {MAX_STARTS}")
    if args.steps is not None and not 0 <= args.steps <= MAX_STEPS:
        raise ConfigError(f"--steps {args.steps}: expected 0 to {MAX_STEPS}")
    if not Path(args.lcom).is_dir():
        raise DataError(f"--lcom {args.lcom}: no such model folder")
    if args.cdvae is not None and not Path(args.cdvae).is_dir():
        raise DataError(f"--cdvae {args.cdvae}: no such model folder")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a folder")
    model = TRAINER.load(args.lcom, cdvae_dir=args.cdvae)
    cells = [cell_atoms(f, model.max_atoms) for f in args.formulas]
    seen: dict[tuple[str, int], str] = {}
    for text, (formula, atoms) in zip(args.formulas, cells, strict=True):
        if (formula, len(atoms)) in seen:
            raise ConfigError(f"{text}: the same cell as {seen[formula, len(atoms)]}; give each formula once")
        seen[formula, len(atoms)] = text
    if args.relax == "gpaw":
        from pymatgen.core import Element

        check_gpaw({Element.from_Z(z).symbol for _, atoms in cells for z in atoms})
    held = getattr(args, "held_logs", None)
    if held is not None:
        held.show()
    from discovery.protocols import NullTracker

    tracker: Any = NullTracker()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_tracking:
        from discovery.tracking.mlflow_tracker import MlflowTracker

        uri = args.tracking_uri or f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
        artifacts = None if args.tracking_uri else (args.out / "mlartifacts").resolve().as_uri()
        tracker = MlflowTracker(uri, experiment="csp", run_name=args.out.resolve().name, artifact_location=artifacts)
        tracker.log_params({"formulas": " ".join(args.formulas), "starts": args.starts, "steps": args.steps,
                            "relax": args.relax, "seed": args.seed, "lcom": str(args.lcom), "lcom_version": model.version,
                            "cdvae": model.manifest["cdvae"]["dir"]})
    status = "FAILED"
    try:
        results = run_csp(model, args.formulas, args.out, starts=args.starts, steps=args.steps, relax=args.relax,
                          seed=args.seed, tracker=tracker)
        for name in ("csp.csv", "csp.json"):
            tracker.log_artifact(str(args.out / name))
        for f in args.formulas:
            tracker.log_artifact(str(args.out / f / "trajectory.png"), f)
        status = "FINISHED"
    finally:
        tracker.close(status)
    if args.json:
        print(json.dumps(results, default=_json_default))
    else:
        _print_table(results, console)
    return 0


def _print_table(results: dict[str, Any], console) -> None:
    from rich.table import Table

    table = Table(title=f"CSP ({results['starts']} starts, {results['steps']} latent steps, relax {results['relax']})")
    for col in ("formula", "atoms", "best E (eV/atom)", "space group", "sound", "s/structure", "s/structure + relax"):
        table.add_column(col, justify="left" if col == "formula" else "right")
    for text, r in results["formulas"].items():
        e = r["best_energy_per_atom"]
        table.add_row(text, str(r["atoms"]), "n/a" if e is None else f"{e:.4f}", str(r["best_spacegroup"]),
                      str(r["n_sound"]), f"{r['seconds_per_structure_optimise']:.2f}",
                      f"{r['seconds_per_structure_with_relax']:.2f}")
    console.print(table)
