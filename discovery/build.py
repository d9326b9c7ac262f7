"""The one place that turns config models into concrete components.

Workers (local threads or Ray actors) receive a `ComponentSpec` and call `build_component`
inside their own process, so calculators and torch models are never shipped across processes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# kind of component -> config "kind" -> "module:Class". A static table: config strings are
# looked up here, never evaluated.
REGISTRY: dict[str, dict[str, str]] = {
    "generator": {
        "substitution": "discovery.generators.substitution:SubstitutionGenerator",
        "random_symmetric": "discovery.generators.random_symmetric:RandomSymmetricGenerator",
        "icsg3d": "discovery.generators.icsg3d:ICSG3DGenerator",
    },
    "surrogate": {
        "cgcnn_ensemble": "discovery.surrogates.cgcnn_ensemble:CGCNNEnsembleSurrogate",
        "forest": "discovery.surrogates.forest:ForestEnsembleSurrogate",
    },
    "mlip": {"chgnet": "discovery.oracles.chgnet_oracle:CHGNetOracle"},
    "dft": {
        "gpaw": "discovery.oracles.gpaw_oracle:GPAWOracle",
        "emt": "discovery.oracles.emt_oracle:EMTOracle",
    },
}


@dataclass(frozen=True)
class ComponentSpec:
    """Everything a worker needs to build one component in its own process.

    Attributes:
        role: "generator", "surrogate", "mlip" or "dft".
        config: the component's config model.
        elements: the campaign's elements (generators).
        max_atoms: the campaign's cell-size limit (generators).
        seed: entropy for the component's own random streams.
        workdir: folder for work files and checkpoints.
    """

    role: str
    config: BaseModel
    elements: tuple[str, ...] = ()
    max_atoms: int = 0
    seed: int = 0
    workdir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return getattr(self.config, "kind", None) or getattr(self.config, "model")


def component_class(role: str, kind: str) -> type:
    module, _, name = REGISTRY[role][kind].partition(":")
    return getattr(importlib.import_module(module), name)


def build_component(spec: ComponentSpec) -> Any:
    """Instantiate the component described by ``spec`` (call this inside the worker)."""
    cls = component_class(spec.role, spec.kind)
    if spec.role == "generator":
        return cls(spec.config, list(spec.elements), spec.max_atoms)
    if spec.role == "surrogate":
        if spec.kind == "forest":  # refit every round; nothing to checkpoint
            return cls(spec.config, seed=spec.seed)
        return cls(spec.config, seed=spec.seed, checkpoint_dir=spec.workdir)
    if spec.role == "mlip":
        return cls(spec.config)
    if spec.role == "dft":
        return cls(spec.config, spec.workdir)
    raise ValueError(f"unknown component role {spec.role!r}")


# ----------------------------------------------------------------------------- campaign wiring


def seed_candidates(config) -> list:
    """Known structures the campaign starts from: prototypes and the configured datasets."""
    from discovery.data import loaders, prototypes
    from discovery.structures import make_candidate

    elements = config.chemistry.elements
    seeds = []
    if config.data.prototypes:
        seeds += [make_candidate(s, "seed:prototype") for s in
                  prototypes.seed_structures(elements, config.chemistry.max_atoms)]
    for src in config.data.cdvae_csv:
        loaded = loaders.load_cdvae_csv(src.path, max_rows=src.max_rows,
                                        elements=elements if src.only_campaign_elements else None)
        _report_load(src.path, loaded, "rows")
        seeds += loaded.candidates
    for folder in config.data.cif_dirs:
        loaded = loaders.load_cif_dir(folder, elements=elements)
        _report_load(folder, loaded, "files")
        seeds += loaded.candidates
    return seeds


def _report_load(source, loaded, unit: str) -> None:
    """Log what a dataset gave; a dataset that is corrupt throughout is a user error."""
    import logging

    from discovery.errors import DataError

    if loaded.n_corrupt and not loaded.candidates:
        raise DataError(f"{source}: all {loaded.n_corrupt} {unit} are unreadable ({loaded.errors[0]})")
    logging.getLogger(__name__).info("%s: %d structures loaded, %d corrupt %s skipped%s", source,
                                     len(loaded.candidates), loaded.n_corrupt, unit,
                                     f" (first: {loaded.errors[0]})" if loaded.errors else "")


def reference_candidates(config) -> list:
    """Elemental references and the campaign's reference phases, computed once per campaign."""
    from discovery.data import prototypes
    from discovery.structures import make_candidate

    refs = []
    for symbol in config.chemistry.elements:
        structure, hint = prototypes.elemental_reference(symbol)
        refs.append(make_candidate(structure, "reference", conditions={"calc": hint, "role": "element"}))
    for phase in config.chemistry.reference_phases:
        structure = prototypes.build_reference_phase(phase.formula, phase.prototype)
        refs.append(make_candidate(structure, "reference",
                                   conditions={"role": "phase", "prototype": phase.prototype}))
    return refs
