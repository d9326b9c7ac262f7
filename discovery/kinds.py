"""How a component kind describes itself to the registry (`discovery.registry`).

A component package declares one `Kind` next to its config model, for example::

    KIND = Kind(role="generator", name="substitution", config=SubstitutionGeneratorConfig,
                factory="discovery.generators.substitution:build")

``factory`` is a ``"module:attribute"`` string (imported only when a worker builds the component,
so reading a campaign file never imports torch) or, for kinds registered at run time, the callable
itself. It is called as ``factory(config, context)`` with a `BuildContext`.

Roles:

- ``generator``, ``surrogate``, ``dft``, ``mlip``, ``policy``: components of a campaign, each
  chosen in the campaign file by its discriminator key (``kind``; ``model`` for the MLIP);
- ``model``: a trainable model family (``discovery train NAME``). Its ``factory`` returns the
  family's `~discovery.lifecycle.Trainer`, and its ``config`` is the training config (presets).

This module sits at the bottom of the house: component packages import it, it imports none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["generator", "surrogate", "dft", "mlip", "policy", "model"]
ROLES: tuple[str, ...] = ("generator", "surrogate", "dft", "mlip", "policy", "model")


@dataclass(frozen=True)
class BuildContext:
    """What a component may need from its campaign besides its own config.

    Attributes:
        elements: the campaign's elements (generators).
        max_atoms: the campaign's cell-size limit (generators).
        seed: entropy for the component's own random streams.
        workdir: folder for work files and checkpoints (oracles, surrogates).
        objective: the `~discovery.objective.Objective` a policy serves.
        rng: the policy's random stream.
        shared: a per-process cache that survives rebuilding a component (e.g. a descriptor cache
            reused by every surrogate a replay benchmark fits).
    """

    elements: tuple[str, ...] = ()
    max_atoms: int = 0
    seed: int | Any = 0
    workdir: Path | None = None
    objective: Any = None
    rng: Any = None
    shared: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Kind:
    """One registered component kind.

    Attributes:
        role: see the module docstring.
        name: the value of the discriminator key in config files (``kind: substitution``).
        config: the pydantic config model; it has a ``Literal[name]`` discriminator field.
        factory: ``"module:attribute"`` or a callable; ``factory(config, context)`` builds it.
        summary: one line for ``discovery kinds`` and error messages.
        needs_gpu: the component is only useful on a GPU (placement asks Ray for one).
        fidelity: for oracles, the fidelity of the numbers it returns.
        checkpoints: for surrogates, the campaign saves (and logs) a checkpoint after every fit
            (``save(path)``); refit-only surrogates such as forests leave it False.
        models: for generators and surrogates, the trainable model families (role ``model``) it
            loads: the first is the one its ``checkpoint_dir`` holds, the others what that model
            depends on (LCOM names its CD-VAE); shown by ``discovery kinds``.
        takes_composition: a generator that proposes structures for ``conditions["composition"]``
            (a formula), so a campaign can hand it the compositions of a composition model.
        proposes_compositions: a generator that also offers ``propose_compositions(n, conditions,
            rng) -> [{"composition": formula, ...}]`` (a composition model).
    """

    role: Role
    name: str
    config: type
    factory: str | Callable[..., Any]
    summary: str = ""
    needs_gpu: bool = False
    fidelity: str | None = None
    checkpoints: bool = False
    models: tuple[str, ...] = ()
    takes_composition: bool = False
    proposes_compositions: bool = False

    def resolve_factory(self) -> Callable[..., Any]:
        """The factory callable (imports its module when given as a string)."""
        return resolve(self.factory)


def resolve(target: str | Callable[..., Any]) -> Any:
    """Import ``"module:attribute"`` (dotted attributes allowed) or return ``target`` itself.

    Config strings never reach this function: targets come from `Kind` entries written in code or
    from installed packages' entry points, never from campaign files.
    """
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
