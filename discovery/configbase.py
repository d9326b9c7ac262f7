"""What every configuration model shares: the strict base class, YAML reading, ``--set`` overrides
and one-line validation errors.

This module sits at the bottom of the house (it imports no other `discovery` module), so the config
models that live next to their components (`discovery.generators`, `discovery.models`, ...) and the
campaign schema (`discovery.config`) all build on it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from discovery.errors import ConfigError

#: The longest piece of user input an error message quotes (a value can be huge: a YAML alias
#: bomb, a pasted file).
MAX_QUOTED_CHARS = 80
#: Bounds on what a config file may expand to: bytes read, YAML nodes built (aliases count every
#: time they are used, so an alias bomb stops here) and nesting depth.
MAX_CONFIG_BYTES = 2_000_000
MAX_YAML_NODES = 200_000
MAX_YAML_DEPTH = 64
#: Upper bounds on the counts a campaign sets. Far above any campaign that can finish (10,000 rounds
#: of DFT is years of cluster time), low enough that a slip (three zeros too many) is refused up
#: front instead of allocating or planning for it.
MAX_ROUNDS = 10_000
MAX_DFT_PER_ROUND = 10_000
MAX_DFT_SLOTS = 10_000
MAX_CPUS = 100_000
MAX_PROPOSALS_PER_ROUND = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and documents that expand beyond
    `MAX_YAML_NODES` nodes or `MAX_YAML_DEPTH` levels (alias bombs), before anything is built."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._nodes = 0

    def construct_document(self, node: Any) -> Any:
        self._check(node, 0, set())
        return super().construct_document(node)

    def _check(self, node: Any, depth: int, active: set[int]) -> None:
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
        if depth > MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        if id(node) in active:
            raise yaml.YAMLError("a recursive alias")
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        line = key.start_mark.line + 1
                        raise yaml.YAMLError(f"duplicate key {quote(key.value)} at line {line}")
                    seen.add(key.value)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            active.add(id(node))
            for child in node.value:
                for sub in child if isinstance(child, tuple) else (child,):
                    self._check(sub, depth + 1, active)
            active.discard(id(node))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with `_BoundedLoader`'s limits (duplicate keys, alias bombs, depth).

    Raises:
        yaml.YAMLError: the text breaks one of the limits or is not YAML.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NestedValueError(ValueError):
    """A validator's error about a key *inside* the value it checks (e.g. ``train.vae.epoch``):
    `format_validation_error` appends ``key`` to the error's location."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def quote(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error line stays one short line."""
    text = repr(value) if not isinstance(value, dict | list) or len(value) < 20 else f"<{type(value).__name__} " \
                                                                                      f"of {len(value)} items>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_preset(data: Any, presets: dict[str, dict[str, Any]], sections: tuple[str, ...] = ()) -> Any:
    """``data`` (a config mapping) with every key it leaves out taken from its ``preset``'s table
    (default ``cpu``); the nested ``sections`` are merged key by key. Keys the user gives win.
    Anything else (not a mapping, an unknown preset) is returned as is for validation to report."""
    if not isinstance(data, dict):
        return data
    preset = data.get("preset", "cpu")
    if preset not in presets:
        return data
    base = copy.deepcopy(presets[preset])
    merged = {**base, **data}
    for section in sections:
        user = data.get(section)
        if isinstance(user, dict) and isinstance(base.get(section), dict):
            merged[section] = {**base[section], **user}
    return merged


def format_validation_error(source: str, exc: ValidationError, prefix: str = "") -> str:
    """The first error of ``exc`` as ``SOURCE: key.path: what was expected (+n more)``.

    Union tags that pydantic puts into error locations (the ``kind`` of a component) are not keys
    the user wrote; the registry strips them from the unions it builds (`registry._strip_tags`).
    """
    err = exc.errors()[0]
    parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    loc = ".".join(x for x in (prefix, ".".join(parts)) if x) or "(top level)"
    msg = err["msg"]
    nested = (err.get("ctx") or {}).get("error")
    if isinstance(nested, NestedValueError):
        loc = f"{loc}.{nested.key}" if loc != "(top level)" else nested.key
        msg = nested.message
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        key = str(ctx.get("discriminator", "kind")).strip("'")
        loc = f"{loc}.{key}"
        msg = f"unknown kind {quote(ctx.get('tag'))} (expected one of {ctx.get('expected_tags')})"
    elif err["type"] == "union_tag_not_found":
        ctx = err.get("ctx") or {}
        key = str(ctx.get("discriminator", "kind")).strip("'")
        msg = f"required key {key!r} is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {quote(err['input'])})"
    msg = msg.removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def validate(model: type[BaseModel], raw: Any, source: str, prefix: str = "") -> Any:
    """``model.model_validate(raw)``, or `ConfigError` in one line naming ``source`` and the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, prefix)) from None


def set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"`` (list items by index), creating
    mappings on the way.

    Raises:
        ConfigError: an index that is not there, or a step through something that is not a mapping.
    """
    keys = dotted.split(".")
    node: Any = tree
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{source}: --set {dotted}: no list item {key!r}")
            node = node[int(key)]
            continue
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict | list):
            raise ConfigError(f"{source}: --set {dotted}: {'.'.join(keys[:depth + 1])} is not a mapping")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: --set {dotted}: no list item {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(overrides: list[str] | None, source: str = "--set") -> list[tuple[str, Any]]:
    """Parse ``key.path=value`` strings; values are YAML scalars or flow collections."""
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: --set {quote(item)}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: --set {key}: value is not valid YAML "
                              f"({getattr(exc, 'problem', None) or exc})") from None
        parsed.append((key.strip(), value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None, source: str) -> dict[str, Any]:
    """``raw`` with every ``key.path=value`` override applied (a copy)."""
    out = copy.deepcopy(raw)
    for key, value in parse_overrides(overrides, source):
        set_path(out, key, value, source)
    return out


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file is an empty mapping), or `ConfigError` in one
    line naming the file."""
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: {what} file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {path.stat().st_size:,} bytes; a {what} file is at most {MAX_CONFIG_BYTES:,}")
    try:
        raw = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return copy.deepcopy(raw)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested config into ``a.b.c`` keys (for MLflow params and config comparisons)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = v
    return out
