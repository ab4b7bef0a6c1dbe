"""A queued evaluation job's request: the manifests' texts, the plan's settings and the `where`
constraints that pick predictors, as JSON.

The same parser checks a request where it is queued (mlscope.dispatch answers 400) and where it
runs (a predictor), so both agree on what is valid. Manifests travel and are stored as written,
${VAR}s and all: a predictor substitutes them from the variables its owner lets it share, so no
secret of the submitting machine is stored in a job. Where a request is queued, a ${VAR} takes its
default (one without stays as written). A predictor also holds each manifest's model to the
sources it accepts (no code named from the network). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from mlscope.conventions import UnknownLevel, parse_level
from mlscope.manifests import Manifest, ManifestError, ModelSources, check_model_sources, manifest_from_text, substitute_env

from .predictors import EXECUTION_PROVIDERS, PREDICTORS, PredictorError, check_runs_in
from .runner import Plan
from .scenarios import SCENARIOS

MAX_MANIFESTS = 64
_WHERE_KEY = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")


class JobError(ValueError):
    """Not a valid evaluation job; the message names the field and the reason."""


@dataclass(frozen=True)
class ManifestText:
    source: str  # where the text came from, for error messages
    text: str


@dataclass(frozen=True)
class JobRequest:
    manifests: tuple[ManifestText, ...]
    plan: Plan  # its manifests parsed from `manifests`
    where: tuple[tuple[str, str], ...] = ()  # (key, value): every one must match a predictor

    def to_json(self) -> dict[str, Any]:
        settings = {item.name: getattr(self.plan, item.name) for item in fields(Plan) if item.name != "manifests"}
        return {
            "manifests": [{"source": manifest.source, "text": manifest.text} for manifest in self.manifests],
            "plan": {name: list(value) if isinstance(value, tuple) else value for name, value in settings.items()},
            "where": dict(self.where),
        }


def parse_where(pairs: Sequence[str], option: str = "where") -> tuple[tuple[str, str], ...]:
    """`key=value` texts (the CLI's --where, or a predictor's --label) as pairs; JobError
    naming `option` for a bad one."""
    parsed = []
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise JobError(f"{option}: {pair!r} must be key=value (e.g. system=gpu-box)")
        parsed.append((key.strip(), value.strip()))
    return _checked_where(dict(parsed), option)


def parse_job_request(data: Any, environ: Mapping[str, str] | None = None,
                      sources: ModelSources | None = None) -> JobRequest:
    """Checks a request as JSON decoded it; JobError names the first bad field. Where it runs,
    `environ` has the variables its manifests may use and `sources` what their models may be;
    where it is queued (both None), variables take their defaults."""
    if not isinstance(data, dict):
        raise JobError("the request must be a JSON object with manifests, plan and where")
    _no_unknown(data, ("manifests", "plan", "where"), "")
    texts = _manifest_texts(data.get("manifests"))
    try:  # a ManifestError names the manifest's source
        manifests = [manifest_of(text, environ) for text in texts]
        if sources is not None:
            for manifest in manifests:
                check_model_sources(manifest, sources)
    except ManifestError as exc:
        raise JobError(str(exc)) from None
    plan_data = data.get("plan", {})
    if not isinstance(plan_data, dict):
        raise JobError("plan: expected an object")
    plan = Plan(manifests=tuple(manifests), **_plan_settings(plan_data))
    for manifest in plan.manifests:
        for framework in plan.frameworks:
            try:
                check_runs_in(manifest, framework)
            except PredictorError as exc:
                raise JobError(f"plan.frameworks: {exc}") from None
    where = data.get("where", {})
    if not isinstance(where, dict):
        raise JobError("where: expected an object of key: value strings")
    return JobRequest(tuple(texts), plan, _checked_where(where))


def manifest_of(text: ManifestText, environ: Mapping[str, str] | None = None) -> Manifest:
    """The manifest a job's text describes, its ${VAR}s from `environ`; None (where a job is
    queued or submitted) gives each its default and leaves one without as written."""
    return manifest_from_text(text.source, substitute_env(text.text, environ or {}, text.source,
                                                          keep_unset=environ is None))


def _manifest_texts(value: Any) -> list[ManifestText]:
    if not isinstance(value, list) or not value:
        raise JobError("manifests: expected a non-empty list of {source, text}")
    if len(value) > MAX_MANIFESTS:
        raise JobError(f"manifests: at most {MAX_MANIFESTS} in one job")
    texts = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not isinstance(item.get("source", ""), str):
            raise JobError(f"manifests[{index}]: expected {{source: string, text: string}}")
        _no_unknown(item, ("source", "text"), f"manifests[{index}].")
        texts.append(ManifestText(item.get("source") or f"manifests[{index}]", item["text"]))
    return texts


def _names_from(choices: Sequence[str]) -> Callable[[str, Any], tuple[str, ...]]:
    def check(field: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            raise JobError(f"plan.{field}: expected a non-empty list of names")
        unknown = [item for item in value if item not in choices]
        if unknown:
            raise JobError(f"plan.{field}: unknown {', '.join(map(repr, unknown))} (expected some of {', '.join(choices)})")
        return tuple(value)

    return check


def _levels(field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise JobError(f"plan.{field}: expected a non-empty list of levels")
    try:
        return tuple(parse_level(item) for item in value)
    except UnknownLevel as exc:
        raise JobError(f"plan.{field}: {exc}") from None


def _batch_sizes(field: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(_is_int(item) and item > 0 for item in value):
        raise JobError(f"plan.{field}: expected a non-empty list of positive integers")
    return tuple(value)


def _count(minimum: int) -> Callable[[str, Any], int]:
    def check(field: str, value: Any) -> int:
        if not _is_int(value) or value < minimum:
            raise JobError(f"plan.{field}: expected an integer of at least {minimum}")
        return value

    return check


def _optional_positive(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise JobError(f"plan.{field}: expected a positive number or null")
    return float(value)


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise JobError(f"plan.{field}: expected true or false")
    return value


def _provider(field: str, value: Any) -> str:
    if value not in EXECUTION_PROVIDERS:
        raise JobError(f"plan.{field}: expected one of {', '.join(EXECUTION_PROVIDERS)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Each Plan setting's check; a setting left out takes the Plan's default.
_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "frameworks": _names_from(tuple(PREDICTORS)),
    "batch_sizes": _batch_sizes,
    "scenarios": _names_from(SCENARIOS),
    "levels": _levels,
    "repetitions": _count(1),
    "warmup": _count(0),
    "accuracy": _flag,
    "execution_provider": _provider,
    "server_qps": _optional_positive,
    "server_bound_ms": _optional_positive,
    "seed": _count(0),
}


def _plan_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    _no_unknown(data, tuple(_SETTINGS), "plan.")
    for required in ("frameworks", "batch_sizes"):
        if required not in data:
            raise JobError(f"plan.{required}: missing")
    return {name: _SETTINGS[name](name, value) for name, value in data.items()}


def _checked_where(where: Mapping[Any, Any], option: str = "where") -> tuple[tuple[str, str], ...]:
    for key, value in where.items():
        if not isinstance(key, str) or not _WHERE_KEY.fullmatch(key):
            raise JobError(f"{option}: bad key {key!r} (lower-case letters, digits, '_', '.', '-')")
        if not isinstance(value, str) or not value:
            raise JobError(f"{option}.{key}: expected a non-empty string")
    return tuple(sorted(where.items()))


def _no_unknown(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise JobError(f"{prefix}{unknown[0]}: unknown field (expected {', '.join(allowed)})")
