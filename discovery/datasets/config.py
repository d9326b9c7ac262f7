"""`DatasetConfig`: what `discovery.datasets.builder.build_dataset` makes (a YAML file; imports
nothing heavy).

A data set is every charge-balanced binary and (a seeded subset of) ternary composition of the
configured cations and anions, each as the project's prototypes that fit its stoichiometry and as
``random_per_composition`` pyxtal random symmetric structures, relaxed with CHGNet; formation
energies against CHGNet-relaxed elemental references. See `discovery.datasets.plan` for the
enumeration and `discovery.datasets.builder` for the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from discovery.configbase import Strict, read_yaml_mapping, validate

#: The 26 binary (and elemental) test compounds of Cheng et al. 2022 as used by LCOM; excluded from
#: training sets by default so a CSP benchmark on them is a test, not a recall.
CHENG26: tuple[str, ...] = (
    "LiF", "NaF", "KF", "RbF", "CsF", "LiCl", "NaCl", "KCl", "RbCl", "CsCl", "BeO", "MgO", "CaO", "SrO",
    "BaO", "ZnO", "CdO", "BeS", "MgS", "CaS", "SrS", "BaS", "ZnS", "CdS", "C", "Si")


def _symbols(values: list[str], key: str) -> list[str]:
    from pymatgen.core import Element

    out = []
    for v in values:
        if not isinstance(v, str) or not Element.is_valid_symbol(v):
            raise ValueError(f"{key}: unknown element {v!r}")
        if v not in out:
            out.append(v)
    return out


class RelaxSettings(Strict):
    """CHGNet relaxation of every structure (FIRE + FrechetCellFilter). Units: eV/A."""

    fmax_ev_per_a: float = Field(0.1, gt=0, description="force criterion (local minima, not tight ones)")
    max_steps: int = Field(120, ge=1, description="FIRE steps at most; an unconverged relaxation is kept "
                                                  "when its structure is sound")


class DatasetConfig(Strict):
    """A CHGNet-relaxed training set of small ionic crystals (CD-VAE CSV format).

    Units: energies eV/atom, volumes A^3/atom.
    """

    name: str = Field("dataset", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # a file name, never . or ..
    seed: int = Field(0, ge=0, description="every random choice (ternary subset, pyxtal structures)")
    cations: list[str] = Field(..., min_length=1, description="elements that may take a positive oxidation state")
    anions: list[str] = Field(..., min_length=1, description="elements that may take a negative oxidation state")
    ternary_anions: list[str] | None = Field(None, description="anions that may pair in a two-anion ternary "
                                                               "(None: every anion)")
    unary: list[str] = Field(default_factory=list, description="elements also included as elemental crystals")
    binaries: bool = True
    ternaries: bool = True
    max_ternaries: int | None = Field(200, ge=0, le=100_000, description="seeded subset of the charge-balanced ternaries "
                                                             "(None: all)")
    max_formula_atoms: int = Field(5, ge=1, le=20, description="atoms per formula unit at most")
    max_atoms: int = Field(8, ge=1, le=40, description="atoms per (primitive) cell at most")
    prototypes: bool = Field(True, description="the prototype library decorated with each composition")
    prototype_names: list[str] | None = Field(None, description="only these prototypes (None: the whole library)")
    random_per_composition: int = Field(8, ge=0, le=1_000, description="pyxtal random symmetric structures per composition")
    random_volume_factor: float = Field(1.1, gt=0, description="pyxtal's volume factor")
    exclude_formulas: list[str] = Field(default_factory=lambda: list(CHENG26),
                                        description="reduced formulas never planned nor written (default: the "
                                                    "26 CSP test compounds)")
    reference_random: int = Field(6, ge=1, le=1_000, description="random elemental structures relaxed for an element "
                                                       "without a built-in reference (S, B, ...); the lowest wins")
    relax: RelaxSettings = Field(default_factory=RelaxSettings)
    max_volume_per_atom: float = Field(80.0, gt=0, description="relaxed cells above this are dropped (exploded)")
    max_formation_energy: float = Field(2.0, description="relaxed structures above this are dropped (eV/atom)")
    dedup: bool = Field(True, description="StructureMatcher duplicates within a composition are dropped "
                                          "(the lowest energy is kept)")
    workers: int = Field(2, ge=1, le=256, description="CHGNet relaxations at a time (slots of the executor)")

    @field_validator("cations", "anions", "unary", "ternary_anions")
    @classmethod
    def _elements(cls, v: list[str] | None, info: Any) -> list[str] | None:
        return None if v is None else _symbols(v, info.field_name)

    @field_validator("exclude_formulas")
    @classmethod
    def _formulas(cls, v: list[str]) -> list[str]:
        from pymatgen.core import Composition

        out = []
        for f in v:
            try:
                out.append(Composition(f).reduced_formula)
            except Exception:  # pymatgen raises several types for a bad formula
                raise ValueError(f"exclude_formulas: {f!r} is not a formula") from None
        return sorted(set(out))

    @field_validator("prototype_names")
    @classmethod
    def _prototypes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        from discovery.data.prototypes import get_prototype
        from discovery.errors import DataError

        out = []
        for name in v:
            try:
                out.append(get_prototype(name).name)
            except DataError as exc:
                raise ValueError(str(exc)) from None
        return out

    @model_validator(mode="after")
    def _something(self) -> DatasetConfig:
        if not (self.binaries or self.ternaries or self.unary):
            raise ValueError("nothing to build: binaries, ternaries and unary are all off")
        if not (self.prototypes or self.random_per_composition):
            raise ValueError("nothing to build: prototypes off and random_per_composition 0")
        return self

    @property
    def excluded(self) -> frozenset[str]:
        return frozenset(self.exclude_formulas)


def load_dataset_config(path: str | Path, overrides: list[str] | None = None) -> DatasetConfig:
    """Read and validate a dataset YAML file (``--set key=value`` overrides applied first).

    Raises:
        ConfigError: missing or malformed file, unknown key or bad value (one line naming the file).
    """
    from discovery.configbase import apply_overrides

    path = Path(path)
    raw = read_yaml_mapping(path, "dataset config")
    raw = apply_overrides(raw, overrides, str(path))
    return validate(DatasetConfig, raw, str(path))
