"""The one registry of component kinds: what a campaign file may name, and how to build it.

Every kind is a `~discovery.kinds.Kind` declared next to its config model in its own package.
`BUILTIN` lists the built-in ones; installed packages add theirs through the entry-point group
``discovery.components`` (each entry point names a `Kind`, or a list or callable returning Kinds);
a test or notebook may call `register`. Everything else reads this module:

- the campaign schema and the benchmark schema validate their component sections through it
  (`component_field`, a discriminated union of the registered configs, `config_union`), so
  `discovery.config` imports no component module;
- `build` constructs a component from its config inside a worker;
- ``discovery train NAME`` lists and runs the trainers of role ``model`` (`trainer`);
- the contract tests are parametrised over `kinds`.

Adding a kind is one package (config + implementation + ``KIND``) plus one line in `BUILTIN` (or
one entry point in a plugin's ``pyproject.toml``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, ValidationError, WrapValidator
from pydantic_core import InitErrorDetails

from discovery.errors import ConfigError
from discovery.kinds import ROLES, BuildContext, Kind, resolve

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "discovery.components"

#: The built-in kinds, as ``"module:attribute"`` of a `Kind` (modules import nothing heavy).
BUILTIN: tuple[str, ...] = (
    # generators
    "discovery.generators.substitution:KIND",
    "discovery.generators.random_symmetric:KIND",
    "discovery.generators.icsg3d:KIND",
    "discovery.generators.crystal_gan:KIND",
    "discovery.generators.composition_gan:KINDS",
    "discovery.generators.cdvae.kind:GENERATOR_KIND",
    "discovery.generators.lcom.kind:GENERATOR_KIND",
    # surrogates
    "discovery.surrogates.cgcnn_config:KIND",
    "discovery.surrogates.forest:KIND",
    "discovery.surrogates.lcom.kind:KIND",
    # oracles
    "discovery.oracles.chgnet_oracle:KIND",
    "discovery.oracles.gpaw_oracle:KIND",
    "discovery.oracles.emt_oracle:KIND",
    # policies
    "discovery.policies.configs:KINDS",
    # trainable model families (`discovery train NAME`)
    "discovery.models.icsg3d.kind:MODEL_KIND",
    "discovery.models.crystal_gan.kind:MODEL_KIND",
    "discovery.models.composition_gan.kind:MODEL_KINDS",
    "discovery.models.cdvae.kind:MODEL_KIND",
    "discovery.models.lcom.kind:MODEL_KIND",
)

#: The key that names a component's kind in a config file, per role.
DISCRIMINATORS: dict[str, str] = {"mlip": "model"}

_lock = threading.RLock()
_kinds: dict[str, dict[str, Kind]] | None = None
_generation = 0  # bumped by every change, so cached schemas know when to rebuild


def discriminator(role: str) -> str:
    return DISCRIMINATORS.get(role, "kind")


def _as_kinds(obj: Any, source: str) -> list[Kind]:
    if callable(obj) and not isinstance(obj, Kind | type):
        obj = obj()
    items = obj if isinstance(obj, list | tuple) else [obj]
    for item in items:
        if not isinstance(item, Kind):
            raise TypeError(f"{source}: expected a discovery.kinds.Kind, got {type(item).__name__}")
    return list(items)


def _add(table: dict[str, dict[str, Kind]], kind: Kind, source: str) -> None:
    if kind.role not in ROLES:
        raise ValueError(f"{source}: unknown role {kind.role!r} (roles: {', '.join(ROLES)})")
    key = discriminator(kind.role)
    field = getattr(kind.config, "model_fields", {}).get(key)
    if kind.role != "model" and (field is None or field.default != kind.name):
        raise ValueError(f"{source}: {kind.config.__name__} needs a field {key}: Literal[{kind.name!r}] "
                         f"= {kind.name!r}")
    if kind.role == "model" and "preset" not in getattr(kind.config, "model_fields", {}):
        raise ValueError(f"{source}: the training config {kind.config.__name__} needs a 'preset' field")
    existing = table[kind.role].get(kind.name)
    if existing is not None and existing != kind:
        raise ValueError(f"{source}: a {kind.role} kind named {kind.name!r} is already registered")
    table[kind.role][kind.name] = kind


def _load() -> dict[str, dict[str, Kind]]:
    global _kinds
    with _lock:
        if _kinds is not None:
            return _kinds
        table: dict[str, dict[str, Kind]] = {role: {} for role in ROLES}
        for target in BUILTIN:
            for kind in _as_kinds(resolve(target), target):
                _add(table, kind, target)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            source = f"entry point {ep.name} ({ep.value})"
            scratch = {role: dict(kinds) for role, kinds in table.items()}
            try:
                for kind in _as_kinds(ep.load(), source):
                    _add(scratch, kind, source)
            except Exception as exc:  # a broken plugin (or a name clash) must not take the built-in kinds down
                log.warning("%s: not loaded (%s: %s)", source, type(exc).__name__, exc)
                continue
            table = scratch
        _kinds = table
        return table


def register(kind: Kind) -> Kind:
    """Add ``kind`` at run time (tests, notebooks); returns it. Re-registering the same Kind is a
    no-op; another Kind under a taken name is an error."""
    global _generation
    with _lock:
        _add(_load(), kind, f"register({kind.role}:{kind.name})")
        _generation += 1
    return kind


def unregister(role: str, name: str) -> None:
    """Remove a kind registered at run time (tests clean up after themselves)."""
    global _generation
    with _lock:
        _load()[role].pop(name, None)
        _generation += 1


def generation() -> int:
    """A number that changes whenever the registry does (cache key for derived schemas)."""
    _load()
    return _generation


def kinds(role: str) -> dict[str, Kind]:
    """Every registered kind of ``role`` by name."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return dict(_load()[role])


def get_kind(role: str, name: str) -> Kind:
    """The kind ``name`` of ``role``.

    Raises:
        ConfigError: no such kind (the message lists the known ones).
    """
    found = _load()[role].get(name)
    if found is None:
        known = ", ".join(sorted(_load()[role])) or "none"
        raise ConfigError(f"unknown {role} kind {name!r}; registered: {known}")
    return found


def kind_of(config: Any) -> Kind:
    """The registered kind whose config class ``config`` is an instance of."""
    for role_kinds in _load().values():
        for kind in role_kinds.values():
            if type(config) is kind.config:
                return kind
    raise ConfigError(f"{type(config).__name__} is not the config of a registered kind")


def build(config: Any, context: BuildContext | None = None) -> Any:
    """Build the component ``config`` describes (call this inside the worker that hosts it)."""
    kind = kind_of(config)
    return kind.resolve_factory()(config, context or BuildContext())


def trainer(name: str) -> Any:
    """The `~discovery.lifecycle.Trainer` of the model family ``name``."""
    return get_kind("model", name).resolve_factory()


# ----------------------------------------------------------------------------- schema unions


def _strip_tags(tags: Iterable[str]) -> Callable[[Any, Any], Any]:
    """A wrap validator that reports ``generators.0.n_per_round``, not ``generators.0.substitution.
    n_per_round``: the union's tag is not a key the user wrote."""
    names = set(tags)

    def validate(data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            details = []
            for err in exc.errors():
                loc = tuple(err["loc"])
                if loc and loc[0] in names:
                    loc = loc[1:]
                details.append(InitErrorDetails(type=err["type"], loc=loc, input=err.get("input"),
                                                ctx=err.get("ctx", {})))
            try:
                stripped = ValidationError.from_exception_data(exc.title, details)
            except Exception:  # an error type pydantic cannot rebuild: keep the original
                raise exc from None
            raise stripped from None

    return validate


def config_union(role: str, default: str | None = None) -> Any:
    """The discriminated union of every registered config of ``role`` (for pydantic fields).

    ``default``: the kind assumed when a mapping has no discriminator key (``policy: {kappa: 2}``
    means UCB).
    """
    role_kinds = kinds(role)
    key = discriminator(role)
    models = tuple(k.config for k in role_kinds.values())
    if not models:
        raise ValueError(f"no {role} kinds registered")

    def add_default(data: Any) -> Any:
        if default is not None and isinstance(data, dict) and key not in data:
            return {key: default, **data}
        return data

    from pydantic import BeforeValidator

    if len(models) == 1:
        return Annotated[models[0], BeforeValidator(add_default)]
    union = Union[models]  # noqa: UP007 - a runtime tuple of types
    return Annotated[union, Field(discriminator=key), BeforeValidator(add_default),
                     WrapValidator(_strip_tags(role_kinds))]


_adapters: dict[tuple[str, str | None], tuple[int, Any]] = {}


def _adapter(role: str, default: str | None) -> Any:
    """A cached ``TypeAdapter`` of `config_union` (rebuilt when the registry changes)."""
    from pydantic import TypeAdapter

    key = (role, default)
    cached = _adapters.get(key)
    if cached is None or cached[0] != generation():
        cached = (generation(), TypeAdapter(config_union(role, default)))
        _adapters[key] = cached
    return cached[1]


def component_field(role: str, default: str | None = None) -> Any:
    """A pydantic field type that validates a component config of ``role`` against the registry
    *at validation time*, so kinds registered after the schema was defined (plugins, tests) are
    accepted; errors keep the user's key path (``generators.0.n_per_round``).

    ``default``: the kind assumed when the mapping names none.
    """

    def validate(value: Any, handler: Any) -> Any:
        if isinstance(value, BaseModel) and any(type(value) is k.config for k in kinds(role).values()):
            return value
        return _adapter(role, default).validate_python(value)

    def serialize(value: Any) -> Any:
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    from pydantic import PlainSerializer

    return Annotated[Any, WrapValidator(validate), PlainSerializer(serialize)]


def validate_component(role: str, raw: Any, source: str, where: str, default: str | None = None) -> BaseModel:
    """Validate one component config outside a campaign (e.g. a benchmark's surrogate).

    Raises:
        ConfigError: one line naming ``source`` and ``where``.
    """
    from discovery.configbase import format_validation_error

    try:
        return _adapter(role, default).validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, where)) from None
