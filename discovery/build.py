"""What a worker needs to build one component in its own process, and the call that builds it.

Workers (local threads or Ray actors) receive a `ComponentSpec` and call `build_component` inside
their own process, so calculators and torch models are never shipped across processes. The
registry (`discovery.registry`) knows which factory a config belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from discovery import registry
from discovery.kinds import BuildContext


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

    @property
    def kind(self) -> str:
        return registry.kind_of(self.config).name

    @property
    def registered(self):
        """The component's `~discovery.kinds.Kind` (capabilities: GPU, fidelity, checkpoints)."""
        return registry.kind_of(self.config)

    def context(self) -> BuildContext:
        return BuildContext(elements=tuple(self.elements), max_atoms=self.max_atoms, seed=self.seed,
                            workdir=self.workdir)


def build_component(spec: ComponentSpec) -> Any:
    """Instantiate the component described by ``spec`` (call this inside the worker)."""
    return registry.build(spec.config, spec.context())
