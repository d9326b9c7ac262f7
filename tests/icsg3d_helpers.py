"""Tiny ICSG3D training data and settings shared by the ICSG3D unit and contract tests."""

from __future__ import annotations

import csv
from pathlib import Path

from pymatgen.core import Lattice, Structure

#: ``--set`` overrides that make every network tiny and every stage one epoch long.
TINY = ["grid=32", "n_rotations=1", "n_deciles=4", "condition_property=heat_ref",
        "unet.widths=[[2, 2], [2, 4], [4, 4]]", "unet.bottom=4", "unet.epochs=1", "unet.batch_size=4",
        "vae.filters=[2, 2, 4, 4]", "vae.latent=4", "vae.dense=8", "vae.epochs=1", "vae.batch_size=4",
        "cgcnn.atom_fea_len=8", "cgcnn.h_fea_len=8", "cgcnn.epochs=2", "cgcnn.batch_size=4"]


#: Overrides of a small model that trains long enough on 8 perovskites to decode them again: its
#: targeted samples (z ~ N(mu_base, 0.1^2)) are valid crystals, so tests can follow ICSG3D
#: proposals into DFT (about 2 minutes on 2 cores).
MEMORIZE = [*[t for t in TINY if not t.startswith(("unet.", "vae."))],
            "unet.widths=[[4, 8], [8, 8], [8, 16]]", "unet.bottom=16", "unet.epochs=40", "unet.batch_size=4",
            "unet.lr=0.003", "vae.filters=[4, 8, 8, 16]", "vae.latent=8", "vae.dense=8", "vae.epochs=100",
            "vae.batch_size=4", "vae.lr=0.003"]
MEMORIZE_N = 8


def tiny_overrides() -> dict:
    """`TINY` as the nested mapping a campaign file's ``train:`` key takes."""
    from discovery.configbase import set_path, parse_overrides

    raw: dict = {}
    for key, value in parse_overrides(TINY, "tiny"):
        set_path(raw, key, value, "tiny")
    return raw


A_SITES, B_SITES = ("Sr", "Ba", "Ca", "Pb"), ("Ti", "Zr", "Sn", "Hf")


def perovskite(a_el: str, b_el: str, a: float) -> Structure:
    """Cubic ABO3 (Pm-3m) with lattice constant ``a`` (A)."""
    return Structure(Lattice.cubic(a), [a_el, b_el, "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def write_perovskite_csv(path: Path, n: int = 12) -> list[Structure]:
    """A CDVAE-format CSV of ``n`` cubic ABO3 perovskites with made-up heat_ref and dir_gap labels."""
    from pymatgen.io.cif import CifWriter

    rows, structures = [], []
    for i, (a_el, b_el) in enumerate((a, b) for a in A_SITES for b in B_SITES):
        if i >= n:
            break
        s = perovskite(a_el, b_el, 3.9 + 0.05 * i)
        structures.append(s)
        rows.append({"": i, "material_id": f"p{i}", "cif": str(CifWriter(s)), "formula": s.composition.reduced_formula,
                     "heat_ref": -1.0 + 0.2 * i, "dir_gap": max(0.0, 0.3 * i - 1.0)})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return structures


def train_tiny(folder: Path, n: int = 12, overrides: list[str] = TINY, **kwargs):
    """Write the CSV into ``folder`` and train the tiny model (or ``overrides``) into ``folder / "model"``."""
    from discovery.models.icsg3d.train import train_icsg3d
    from discovery.train_cli import config_from_args

    data = folder / "perov.csv"
    structures = write_perovskite_csv(data, n)
    config = config_from_args("icsg3d", "cpu", overrides)
    model = train_icsg3d(data, config, folder / "model", seed=0, **kwargs)
    return model, data, structures, config
