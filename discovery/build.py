"""What a worker needs to build one component in its own process, and the call that builds it.

Workers (local threads or Ray actors) receive a `ComponentSpec` and call `build_component` inside
their own process, so calculators and torch models are never shipped across processes. The spec
carries the component's registered `~discovery.kinds.Kind` (looked up once, in the driver), so a
worker builds kinds registered at run time too (a plugin, a notebook, a test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from discovery import registry
from discovery.kinds import BuildContext, Kind


@dataclass(frozen=True)
class ComponentSpec:
    """Everything a worker needs to build one component in its own process.

    Attributes:
        role: "generator", "surrogate", "mlip" or "dft".
        config: the component's config model (of a registered kind).
        elements: the campaign's elements (generators).
        max_atoms: the campaign's cell-size limit (generators).
        seed: entropy for the component's own random streams.
        workdir: folder for work files and checkpoints.
        extra: what the driver learnt about the built component (e.g. an oracle's fingerprint).
    """

    role: str
    config: BaseModel
    elements: tuple[str, ...] = ()
    max_atoms: int = 0
    seed: int = 0
    workdir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    registered: Kind | None = None

    def __post_init__(self) -> None:
        if self.registered is None:  # the driver looks the kind up; workers reuse it
            object.__setattr__(self, "registered", registry.kind_of(self.config))

    @property
    def kind(self) -> str:
        return self.registered.name

    def context(self) -> BuildContext:
        return BuildContext(elements=tuple(self.elements), max_atoms=self.max_atoms, seed=self.seed,
                            workdir=self.workdir)


def build_component(spec: ComponentSpec) -> Any:
    """Instantiate the component described by ``spec`` (call this inside the worker)."""
    return spec.registered.resolve_factory()(spec.config, spec.context())
