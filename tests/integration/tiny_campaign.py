"""A campaign small enough for CI: Na-K-Cl, cells of at most 4 atoms, GPAW at the CI settings of
DFT.md (400 eV, k density 1.5, loose relaxations), 3 rounds x 2 DFT relaxations on 2 slots; the
third round has enough DFT labels for the CGCNN ensemble to train."""

import yaml

TINY = {
    "name": "tiny",
    "seed": 0,
    "rounds": 3,
    "dft_per_round": 2,
    "chemistry": {"elements": ["Na", "K", "Cl"], "max_atoms": 4,
                  "reference_phases": [{"formula": "NaCl", "prototype": "rocksalt"},
                                       {"formula": "KCl", "prototype": "rocksalt"}]},
    "generators": [{"kind": "substitution", "n_per_round": 12},
                   {"kind": "random_symmetric", "n_per_round": 8}],
    "surrogate": {"ensemble_size": 2, "max_epochs": 40},
    "mlip": {"top_k": 6, "max_steps": 100, "max_e_above_hull_ev": 0.5},
    "dft": {"kind": "gpaw", "cutoff_ev": 400, "kpt_density": 1.5, "kpt_density_metals": 2.0,
            "fmax_ev_per_a": 0.1, "max_steps": 8, "maxiter": 60, "max_stress_gpa": 5.0,
            "timeout_s": 300, "memory_gb": 3.0},
    "execution": {"backend": "ray", "dft_slots": 2, "num_cpus": 2},
}


def write_tiny(path, **changes):
    cfg = {**TINY, **changes}
    path.write_text(yaml.safe_dump(cfg))
    return path
