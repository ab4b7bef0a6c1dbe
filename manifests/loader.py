"""Manifest files -> typed `Manifest`s: load -> substitute ${ENV} -> yaml.safe_load -> check ->
model. Every failure is one `ManifestError` naming the file, the field and the reason, in at most
MAX_ERROR_CHARS characters.

A manifest may come from the network (a remote job), so reading one is bounded: at most
MAX_MANIFEST_SIZE, no YAML aliases (a "billion laughs" document is a few hundred bytes), and no
error echoes a value whole.

`parse_manifest` (a mapping -> a Manifest) is pure, so the rules are tested without files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .model import (
    ASSET_FORMATS, DATASETS, FRAMEWORKS, TASKS, Dataset, Framework, Manifest, ModelAssets, Step, Tensor, Training,
)
from .processing import POSTPROCESS, PREPROCESS, Param, StepKind
from .trust import BUILDER_PATTERN, MAX_MANIFEST_SIZE, ModelSources, SourceRefused, bounded, short_repr

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DTYPES = ("float32", "int64")


class ManifestError(ValueError):
    """A manifest that cannot be used; str() is one line: `file: field: reason`."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        source, field, reason = bounded(source, 200), bounded(field, 200), bounded(reason)
        super().__init__(f"{source}: {field}: {reason}" if field else f"{source}: {reason}")
        self.source = source
        self.field = field
        self.reason = reason


def builtin_manifests() -> dict[str, Path]:
    """The manifests shipped with mlscope, by file stem (e.g. "resnet18")."""
    folder = resources.files("mlscope.manifests")
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve_manifest(argument: str) -> Path:
    """A manifest path as given, else a built-in manifest's name."""
    path = Path(argument)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    return builtin_manifests().get(argument, path)


def load_manifest(argument: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Manifest:
    return manifest_from_text(*read_manifest(argument, environ))


def read_manifest(argument: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(source, text) of a manifest file or built-in, with ${VAR} substituted from `environ`
    (default: this process's environment)."""
    source, text = read_manifest_text(argument)
    return source, substitute_env(text, os.environ if environ is None else environ, source)


def read_manifest_text(argument: str | os.PathLike[str]) -> tuple[str, str]:
    """(source, text) of a manifest file or built-in as written, ${VAR}s and all: what a remote
    predictor is sent (it substitutes them from its own environment)."""
    path = resolve_manifest(os.fspath(argument))
    source = str(path)
    try:
        if path.stat().st_size > MAX_MANIFEST_SIZE:
            raise ManifestError(source, "", f"larger than {MAX_MANIFEST_SIZE} bytes: not a manifest")
        return source, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(source, "", f"cannot read: {exc}") from exc


# libyaml where PyYAML has it: linear in the text and nesting capped at 1,000 levels (the pure
# Python scanner takes seconds over 40,000 nested brackets).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _no_aliases(text: str) -> None:
    """A manifest is short enough to write out; an alias is how a few hundred bytes expand to
    gigabytes wherever the document is walked or shown."""
    for event in yaml.parse(text, Loader=_SAFE_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in a manifest (line {event.start_mark.line + 1})")


def manifest_from_text(source: str, text: str) -> Manifest:
    """Parses and checks a manifest's YAML text (variables already substituted)."""
    if len(text) > MAX_MANIFEST_SIZE:
        raise ManifestError(source, "", f"larger than {MAX_MANIFEST_SIZE} characters: not a manifest")
    try:
        _no_aliases(text)
        data = yaml.load(text, Loader=_SAFE_LOADER)  # a safe loader: no tags that build objects
    except yaml.YAMLError as exc:
        raise ManifestError(source, "", f"not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError:
        raise ManifestError(source, "", "not valid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ManifestError(source, "", f"not valid YAML: {exc}") from None
    return parse_manifest(data, source)


def substitute_env(text: str, environ: Mapping[str, str], source: str, keep_unset: bool = False) -> str:
    """${VAR} and ${VAR:-default}; an unset VAR without a default is an error, or with
    `keep_unset` stays as written (a check made where the variables are not known)."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is None:
            if keep_unset:
                return match.group(0)
            raise ManifestError(source, "", f"environment variable {name} is not set here (use ${{{name}:-default}})")
        return default

    return _ENV.sub(replace, text)


def check_model_sources(manifest: Manifest, sources: ModelSources) -> None:
    """The manifest's builder and path against what this machine accepts (a URL's addresses
    are checked where it is downloaded); ManifestError naming the field."""
    try:
        if manifest.model.builder:
            sources.check_builder(manifest.model.builder)
        if manifest.model.path:
            sources.check_path()
    except SourceRefused as exc:
        raise ManifestError(manifest.source, "model.builder" if manifest.model.builder else "model.path", str(exc)) from None


class _Checker:
    """Reads typed values out of nested mappings, naming the dotted field in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, reason: str) -> ManifestError:
        return ManifestError(self.source, field, reason)

    def mapping(self, value: Any, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field or "(top level)", f"expected a mapping, got {_kind(value)}")
        unknown = sorted(str(key) for key in value if key not in allowed)
        if unknown:
            prefix = f"{field}." if field else ""
            raise self.fail(f"{prefix}{unknown[0]}", f"unknown field (expected one of {', '.join(allowed)})")
        return value

    def get(self, data: dict[str, Any], key: str, field: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        name = f"{field}.{key}" if field else key
        if key not in data or data[key] is None:
            if default is ...:
                raise self.fail(name, "missing required field")
            return default
        value = data[key]
        # YAML reads 1.0 as a float and yes as a bool; a bool is never a number here.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail(name, f"expected {_type_name(kind)}, got {_kind(value)} {short_repr(value)}")
        return value

    def choice(self, data: dict[str, Any], key: str, field: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(data, key, field, str, default)
        if value not in choices:
            name = f"{field}.{key}" if field else key
            raise self.fail(name, f"unknown {key} {value!r} (expected one of {', '.join(choices)})")
        return value

    def positive(self, data: dict[str, Any], key: str, field: str, default: Any = ...) -> int:
        value = self.get(data, key, field, int, default)
        if value <= 0:
            raise self.fail(f"{field}.{key}", f"must be positive, got {value}")
        return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "nothing"}.get(type(value), type(value).__name__)


TOP_LEVEL = ("name", "version", "description", "task", "framework", "model", "inputs", "outputs", "dataset",
             "attributes")


def parse_manifest(data: Any, source: str) -> Manifest:
    """Checks a loaded YAML document and builds the Manifest; raises ManifestError."""
    check = _Checker(source)
    top = check.mapping(data, "", TOP_LEVEL)
    name = check.get(top, "name", "", str)
    if not _NAME.fullmatch(name):
        raise check.fail("name", f"{name!r} must be lower-case letters, digits, '.', '_' or '-'")
    framework = _framework(check, top)
    model = _model(check, top, framework)
    inputs = _tensors(check, top, "inputs", PREPROCESS, "preprocess")
    outputs = _tensors(check, top, "outputs", POSTPROCESS, "postprocess")
    attributes = check.get(top, "attributes", "", dict, {})
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise check.fail(f"attributes.{key}", f"expected a string, number or boolean, got {_kind(value)}")
    return Manifest(
        source=source,
        name=name,
        version=check.get(top, "version", "", str),
        description=check.get(top, "description", "", str, ""),
        task=check.choice(top, "task", "", TASKS),
        framework=framework,
        model=model,
        input=inputs,
        output=outputs,
        dataset=_dataset(check, top),
        attributes=dict(attributes),
    )


def _framework(check: _Checker, top: dict[str, Any]) -> Framework:
    data = check.mapping(check.get(top, "framework", "", dict), "framework", ("name", "version"))
    name = check.choice(data, "name", "framework", FRAMEWORKS)
    constraint = check.get(data, "version", "framework", str, "")
    try:
        SpecifierSet(constraint)
    except InvalidSpecifier:
        raise check.fail("framework.version", f"bad version constraint {constraint!r} (e.g. '>=2.0,<3')") from None
    return Framework(name, constraint)


def _model(check: _Checker, top: dict[str, Any], framework: Framework) -> ModelAssets:
    data = check.mapping(check.get(top, "model", "", dict), "model", ("builder", "path", "url", "sha256", "format", "size", "train"))
    sources = [key for key in ("builder", "path", "url") if key in data]
    if len(sources) != 1:
        raise check.fail("model", "give exactly one of builder, path or url")
    if sources[0] == "builder":
        builder = check.get(data, "builder", "model", str)
        if not BUILDER_PATTERN.fullmatch(builder):
            raise check.fail("model.builder", f"{builder!r} must be 'package.module:function'")
        if framework.name != "pytorch":
            raise check.fail("model.builder", "builders make PyTorch models: framework.name must be pytorch")
        for key in ("sha256", "format", "size"):
            if key in data:
                raise check.fail(f"model.{key}", "only for a model from a path or url")
        return ModelAssets(builder=builder, training=_training(check, data))
    location = check.get(data, sources[0], "model", str)
    if sources[0] == "url" and not location.startswith(("http://", "https://")):
        raise check.fail("model.url", f"{location!r} must be an http:// or https:// URL")
    sha256 = check.get(data, "sha256", "model", str)
    if not _SHA256.fullmatch(sha256):
        raise check.fail("model.sha256", f"bad checksum format {sha256!r}: expected 64 lower-case hex digits")
    asset_format = check.choice(data, "format", "model", ASSET_FORMATS)
    if "train" in data:
        raise check.fail("model.train", "only a builder's model can be trained")
    if asset_format == "onnx" and framework.name != "onnxruntime":
        raise check.fail("model.format", "an onnx graph needs framework.name onnxruntime")
    if asset_format == "torchscript" and framework.name != "pytorch":
        raise check.fail("model.format", "a torchscript file needs framework.name pytorch")
    size = check.positive(data, "size", "model", 0) if "size" in data else 0
    return ModelAssets(**{sources[0]: location}, sha256=sha256, format=asset_format, size=size)


def _training(check: _Checker, data: dict[str, Any]) -> Training | None:
    if "train" not in data:
        return None
    train = check.mapping(check.get(data, "train", "model", dict), "model.train", ("epochs", "learning_rate", "seed"))
    rate = check.get(train, "learning_rate", "model.train", (int, float))
    if rate <= 0:
        raise check.fail("model.train.learning_rate", f"must be positive, got {rate}")
    return Training(
        epochs=check.positive(train, "epochs", "model.train"),
        learning_rate=float(rate),
        seed=check.get(train, "seed", "model.train", int, 0),
    )


def _tensors(check: _Checker, top: dict[str, Any], key: str, kinds: dict[str, StepKind], steps_key: str) -> Tensor:
    items = check.get(top, key, "", list)
    if len(items) != 1:
        raise check.fail(key, f"exactly one entry is supported, got {len(items)}")
    field = f"{key}[0]"
    data = check.mapping(items[0], field, ("name", "shape", "dtype", steps_key))
    shape = check.get(data, "shape", field, list, [])
    if not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape):
        raise check.fail(f"{field}.shape", f"expected a list of positive integers, got {short_repr(shape)}")
    steps = check.get(data, steps_key, field, list, [])
    return Tensor(
        name=check.get(data, "name", field, str),
        shape=tuple(shape),
        dtype=check.choice(data, "dtype", field, DTYPES, "float32"),
        steps=tuple(_step(check, step, f"{field}.{steps_key}[{index}]", kinds) for index, step in enumerate(steps)),
    )


def _step(check: _Checker, value: Any, field: str, kinds: dict[str, StepKind]) -> Step:
    """A step is `op` or `{op: {param: value}}`."""
    if isinstance(value, str):
        op, raw = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        op, raw = next(iter(value.items()))
        raw = {} if raw is None else raw
    else:
        raise check.fail(field, f"expected a step name or {{name: {{params}}}}, got {_kind(value)}")
    if op not in kinds:
        raise check.fail(field, f"unknown step {short_repr(op)} (expected one of {', '.join(kinds)})")
    params = check.mapping(raw, f"{field}.{op}", tuple(kinds[op].params))
    return Step(op, {name: _param(check, params, name, spec, f"{field}.{op}") for name, spec in kinds[op].params.items()})


def _param(check: _Checker, params: dict[str, Any], name: str, spec: Param, field: str) -> Any:
    default = ... if spec.required else spec.default
    if spec.kind == "int":
        return check.get(params, name, field, int, default)
    if spec.kind == "number":
        return float(check.get(params, name, field, (int, float), default))
    values = check.get(params, name, field, list, default)
    item_kind, noun = (int, "integers") if spec.kind == "ints" else ((int, float), "numbers")
    if not values or not all(isinstance(v, item_kind) and not isinstance(v, bool) for v in values):
        raise check.fail(f"{field}.{name}", f"expected a non-empty list of {noun}, got {short_repr(values)}")
    return tuple(values)


def _dataset(check: _Checker, top: dict[str, Any]) -> Dataset:
    data = check.mapping(check.get(top, "dataset", "", dict), "dataset", ("name", "samples", "split", "seed"))
    return Dataset(
        name=check.choice(data, "name", "dataset", DATASETS),
        samples=check.positive(data, "samples", "dataset"),
        split=check.choice(data, "split", "dataset", ("train", "test"), "test"),
        seed=check.get(data, "seed", "dataset", int, 0),
    )
