"""The trained-model lifecycle shared by every generator or surrogate that trains.

A trainable model family (ICSG3D, CD-VAE, the GANs) registers a `Kind` of role ``model``
whose factory returns a `Trainer`. Everything else is generic:

- ``discovery train NAME --data --preset --out [--set ...]`` (`discovery.train_cli`) reads the data
  with `Trainer.read_data`, validates the preset with `training_config`, then calls `Trainer.train`;
- a campaign component that loads such a model has a config with the `TrainedModelFields`
  (``checkpoint_dir``, ``preset``, ``train_data``, ``train``, ``train_seed``, ``device``); when the
  campaign file is read, `check_model_folder` refuses a folder that cannot serve it, and before the
  workers start, `discovery.launch` trains every folder that `needs_training` (once: later starts
  and ``--resume`` find the manifest);
- every model folder holds a manifest ``<name>.json`` (`write_manifest`), written last and
  atomically, so a folder with a manifest holds a whole model and a training cut short leaves none.

Manifest keys every family writes (`MANIFEST_KEYS`): ``format``, ``version``, ``kind``,
``preset``, ``config`` (the full training config), ``seed``, ``data`` (``path``, ``sha256``, row
counts), ``metrics``, ``files`` (part -> ``{path, sha256}``) and ``versions`` (package versions).
Families add their own keys (ICSG3D: decile edges, bases, split ids).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field, ValidationError, model_validator

from discovery.configbase import NestedValueError, Strict, flatten, format_validation_error, parse_overrides, set_path
from discovery.errors import ConfigError, DataError
from discovery.fileio import write_text_atomic

#: ``progress(stage, done, total, info)``: a training stage's progress (epochs, structures, ...).
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]
PRESETS: tuple[str, ...] = ("cpu", "faithful")
MANIFEST_KEYS = ("format", "version", "kind", "preset", "config", "seed", "data", "metrics", "files", "versions")


class Trainer(Protocol):
    """What a trainable model family provides (returned by its ``model`` kind's factory).

    Attributes:
        name: the family (``discovery train NAME``); its manifest is ``NAME.json``.
        config_model: the training config; it has a ``preset`` field (``cpu`` or ``faithful``)
            whose values fill every key the user did not set.
        stages: ``(stage, label)`` pairs in training order, for progress bars.
    """

    name: str
    config_model: type
    stages: tuple[tuple[str, str], ...]

    def read_data(self, path: Path, config: Any) -> Any:
        """Read and check the training data (before anything is written).

        Raises:
            DataError: one line naming the file when the data cannot train this model.
        """

    def train(self, data: Any, config: Any, out_dir: Path, *, tracker: Any, progress: ProgressFn | None,
              seed: int, device: str) -> Any:
        """Train, write the model folder (manifest last) and return the loaded model."""

    def load(self, folder: Path, device: str = "cpu") -> Any:
        """Load a model folder.

        Raises:
            DataError: one line naming the file when the folder is missing or damaged.
        """

    def describe(self, model: Any) -> str:
        """One line on what the trained model achieved (printed by ``discovery train``)."""


# ----------------------------------------------------------------------------- small file helpers


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (`discovery.fileio.atomic_write`), so readers never see half a file."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def json_number(x: Any) -> Any:
    """``x`` with NaN/inf replaced by None and numpy scalars by Python numbers, recursively."""
    if isinstance(x, Mapping):
        return {str(k): json_number(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_number(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "shape", None) == ():
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def cpu_only(family: str, device: str) -> None:
    """Refuse a GPU for a family whose networks run on the CPU only (rather than run there silently
    while a GPU sits reserved).

    Raises:
        ConfigError: ``device`` is not ``cpu``.
    """
    if device != "cpu":
        raise ConfigError(f"{family}: trains and samples on the CPU only (small networks); use device: cpu")


def check_device(device: str) -> str:
    """``device`` if it can be used here.

    Raises:
        ConfigError: CUDA requested on a machine without a GPU, or an unknown device.
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected cpu or cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device cuda: no CUDA GPU is available here (use device: cpu)")
    return device


def package_versions() -> dict[str, str]:
    """Versions of the packages a trained model depends on (recorded in every manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("crystal-discovery", "torch", "torch-geometric", "pymatgen", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(folder: str | Path, name: str, manifest: dict[str, Any]) -> Path:
    """Write ``folder/<name>.json`` (last, atomically) after checking the common keys are there."""
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest of {name} lacks {missing}")
    return write_json_atomic(Path(folder) / f"{name}.json", json_number(manifest))


def read_manifest(folder: str | Path, name: str, fmt: str | None = None) -> dict[str, Any]:
    """The manifest of the model folder ``folder`` (``<name>.json``).

    Raises:
        DataError: missing, unreadable, not a mapping, or of another ``format``.
    """
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise DataError(f"{path}: no trained {name} model here (train one with `discovery train {name}`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {name} manifest ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a {name} manifest (a {type(manifest).__name__}, expected a mapping)")
    if fmt is not None and manifest.get("format") != fmt:
        raise DataError(f"{path}: not a {name} manifest (format {manifest.get('format')!r}, expected {fmt!r})")
    return manifest


def verify_file(folder: Path, manifest_name: str, part: str, entry: Any) -> Path:
    """The checkpoint file of ``part`` listed in a manifest, present and with the recorded sha256.

    Raises:
        DataError: the file is missing or is not the one the manifest recorded.
    """
    rel = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(f"{folder / manifest_name}: files.{part}: not a file inside the model folder")
    file = folder / rel
    if not file.is_file():
        raise DataError(f"{file}: {part} checkpoint not found (listed in {manifest_name})")
    want = entry.get("sha256")
    if want and file_sha256(file) != want:
        raise changed_file_error(file, manifest_name)
    return file


def changed_file_error(file: Path, manifest_name: str) -> DataError:
    """The error for a model file whose sha256 is not the one its manifest recorded: damaged or cut
    short when it is not a whole zip archive (torch and numpy checkpoints are), else a file of
    another training run."""
    import zipfile

    if not zipfile.is_zipfile(file):
        return DataError(f"{file}: damaged or cut short (not a whole checkpoint file; sha256 differs from the one "
                         f"recorded in {manifest_name}); train the model again or restore the folder")
    return DataError(f"{file}: sha256 differs from the one recorded in {manifest_name}; "
                     "the checkpoint belongs to another training run")


# ----------------------------------------------------------------------------- training configs


def training_config(config_model: type, preset: str, overrides: Mapping[str, Any] | list[str] | None,
                    source: str, prefix: str = "") -> Any:
    """The training config of ``preset`` with ``overrides`` (a mapping, or ``key.path=value``
    strings), validated.

    Raises:
        ConfigError: unknown preset, ``preset`` among the overrides, an unknown key or a bad value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"{source}: preset {preset!r}: expected one of {', '.join(PRESETS)}")
    raw: dict[str, Any] = {}
    if isinstance(overrides, list):
        for key, value in parse_overrides(overrides, source):
            set_path(raw, key, value, source)
    else:
        raw = {k: v for k, v in (overrides or {}).items()}
    if "preset" in raw:
        raise ConfigError(f"{source}: {prefix + '.' if prefix else ''}preset: set the preset itself, not "
                          "as an override")
    raw["preset"] = preset
    try:
        return config_model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, prefix)) from None


class TrainedModelFields(Strict):
    """Config fields of a component that loads a trained model from a folder (or trains it there).

    Subclasses set `model_name` (the ``model`` kind, also the manifest's name) and
    `training_model` (that family's training config class).

    ``checkpoint_dir`` is the model folder. ``preset`` is the model size the campaign wants (None:
    whatever the folder holds). With ``train_data``, a folder without a model is trained before
    the campaign's workers start, with ``preset`` (default cpu) plus ``train`` as overrides and
    ``train_seed``. Relative paths are taken from the campaign file's folder.
    """

    model_name: ClassVar[str] = ""
    training_model: ClassVar[type | None] = None

    checkpoint_dir: Path
    preset: Literal["cpu", "faithful"] | None = Field(
        None, description="model sizes (cpu or faithful); None: whatever checkpoint_dir holds")
    train_data: Path | None = Field(None, description="data to train on when checkpoint_dir holds no model yet")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset for that training")
    train_seed: int = Field(0, ge=0)
    device: Literal["cpu", "cuda"] = "cpu"

    def check_built_on(self, manifest: dict[str, Any]) -> None:
        """Check the models a trained model is built on (LCOM: its CD-VAE folder), from its
        manifest, before anything starts; nothing to check by default.

        Raises:
            DataError: such a model is missing or is another one.
        """

    @model_validator(mode="after")
    def _training_config(self):
        if (self.train or self.train_seed) and self.train_data is None:
            raise ValueError("train and train_seed need train_data")
        if self.train_data is not None:
            self.training_config()
        return self

    def training_config(self) -> Any:
        """The training config a training here would use (``preset``, default cpu, plus ``train``)."""
        if self.training_model is None:
            raise TypeError(f"{type(self).__name__} sets no training_model")
        if "preset" in self.train:
            raise NestedValueError("train.preset", "set the component's preset key, not train.preset")
        try:
            return self.training_model.model_validate({**self.train, "preset": self.preset or "cpu"})
        except ValidationError as exc:
            where, _, message = format_validation_error("", exc, "train").removeprefix(": ").partition(": ")
            raise NestedValueError(where, message) from None


def model_sources(config: Any, where: str = "") -> list[tuple[str, TrainedModelFields]]:
    """``(key path, fields)`` of every trained model a component config loads: the config itself
    when it has `TrainedModelFields`, and nested fields that have them (e.g. a model that is
    built on another one's latent space), nested ones first (they train first)."""
    out: list[tuple[str, TrainedModelFields]] = []
    if not hasattr(config, "model_fields"):
        return out
    for key in type(config).model_fields:
        value = getattr(config, key, None)
        if isinstance(value, TrainedModelFields):
            out += model_sources(value, f"{where}.{key}" if where else key)
    if isinstance(config, TrainedModelFields):
        out.append((where, config))
    return out


def _path_fields(model: type | None) -> set[str]:
    """Names of a training config's fields that hold a path (``Path`` or ``Path | None``)."""
    import typing

    fields = getattr(model, "model_fields", {}) or {}
    return {name for name, f in fields.items() if f.annotation is Path or Path in typing.get_args(f.annotation)}


def resolve_model_paths(config: Any, base: Path, source: str, where: str) -> Any:
    """``config`` with the model folder and training data of every model source made absolute
    (relative to ``base``); the training data must exist.

    Raises:
        ConfigError: a ``train_data`` file that is not there.
    """
    if not hasattr(config, "model_fields"):
        return config

    def absolute(p: Path) -> Path:
        return (p if p.is_absolute() else base / p).resolve()

    update: dict[str, Any] = {}
    for key in type(config).model_fields:
        value = getattr(config, key, None)
        if isinstance(value, TrainedModelFields):
            update[key] = resolve_model_paths(value, base, source, f"{where}.{key}")
    if isinstance(config, TrainedModelFields):
        update["checkpoint_dir"] = absolute(config.checkpoint_dir)
        paths = _path_fields(config.training_model)  # e.g. LCOM's train: {cdvae_dir: ...}
        if any(k in paths for k in config.train):
            update["train"] = {k: str(absolute(Path(v))) if k in paths and isinstance(v, str | Path) else v
                               for k, v in config.train.items()}
        if config.train_data is not None:
            data = absolute(config.train_data)
            if not data.exists():
                raise ConfigError(f"{source}: {where}.train_data: file not found: {config.train_data}")
            update["train_data"] = data
    return config.model_copy(update=update) if update else config


def has_model(fields: TrainedModelFields) -> bool:
    """The folder holds a finished model (its manifest)."""
    return (fields.checkpoint_dir / f"{fields.model_name}.json").is_file()


def needs_training(fields: TrainedModelFields) -> bool:
    """The campaign asks for training (``train_data``) and the folder holds no model yet."""
    return fields.train_data is not None and not has_model(fields)


def check_model_folder(fields: TrainedModelFields, where: str) -> None:
    """Refuse a model folder that cannot serve ``fields`` before anything starts.

    The folder must hold a model or ``train_data`` must be given; an existing model must be of the
    requested ``preset`` and, when ``train_data`` is given, of exactly the training configuration,
    seed and data (sha256) the campaign asks for.

    Raises:
        ConfigError: one line starting with ``where``.
    """
    name = fields.model_name
    manifest_path = fields.checkpoint_dir / f"{name}.json"
    if not manifest_path.is_file():
        if fields.train_data is None:
            raise ConfigError(f"{where}.checkpoint_dir: no trained {name} model in {fields.checkpoint_dir} "
                              f"(train one with `discovery train {name}`, or give train_data to train it here)")
        return
    try:
        manifest = json.loads(manifest_path.read_text())
        found = fields.training_model.model_validate(manifest["config"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        raise ConfigError(f"{where}.checkpoint_dir: {manifest_path} is not a readable {name} manifest") from None
    if fields.preset is not None and found.preset != fields.preset:
        raise ConfigError(f"{where}.preset: {fields.checkpoint_dir} holds a {found.preset!r} model, the campaign "
                          f"asks for {fields.preset!r} (use another checkpoint_dir)")
    try:
        fields.check_built_on(manifest)
    except DataError as exc:
        raise ConfigError(f"{where}.checkpoint_dir: {exc}") from None
    if fields.train_data is None:
        return
    # the raw manifest, not its validated copy: a key the training did not know yet is a difference
    want = {**flatten(fields.training_config().model_dump(mode="json")), "train_seed": fields.train_seed,
            "train_data sha256": data_sha256(fields.train_data)}
    have = {**flatten(manifest["config"]), "train_seed": manifest.get("seed"),
            "train_data sha256": (manifest.get("data") or {}).get("sha256")}
    differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if differ:
        k = differ[0]
        raise ConfigError(f"{where}.train: {fields.checkpoint_dir} holds a model trained with {k}="
                          f"{have.get(k)!r}, the campaign asks for {want.get(k)!r}"
                          + (f" (+{len(differ) - 1} more)" if len(differ) > 1 else "")
                          + "; use another checkpoint_dir or delete the model")


def data_sha256(path: Path) -> str:
    """sha256 of a data file, or of a folder's files (names and bytes, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()
