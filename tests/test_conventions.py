"""mlscope.conventions against what users read: every attribute and metric name it defines is
documented in docs/conventions.md, every `mlscope.*` name documented there is defined, and every
environment variable is documented somewhere in the README or docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlscope import conventions
from mlscope.conventions import (
    DEFAULT_ENDPOINT,
    UnknownLevel,
    agent_level,
    collector_endpoint,
    data_dir,
    level_rank,
    leveled_figure,
    levels_up_to,
    parse_level,
    parse_levels,
    service_name,
    stored_level,
)

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "conventions.md").read_text()
ALL_DOCS = "\n".join(path.read_text() for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def _constants(kind: str) -> dict[str, str]:
    values = {name: value for name, value in vars(conventions).items() if name.isupper() and isinstance(value, str)}
    if kind == "env":
        return {name: value for name, value in values.items() if name.startswith("ENV_")}
    # Attribute and metric names: dotted lower-case names (not URLs, prefixes or span names).
    return {
        name: value for name, value in values.items()
        if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", value) and not name.endswith(("_PREFIX", "_SPAN", "_SCOPE"))
    }


def test_every_attribute_and_metric_name_is_documented() -> None:
    names = _constants("attribute")
    assert {"LEVEL", "LAYER_PATH", "HW_ENERGY_METRIC", "SERVICE_NAME"} <= names.keys()
    assert [f"{name} = {value}" for name, value in names.items() if f"`{value}`" not in DOC] == []


def test_every_documented_mlscope_name_is_defined() -> None:
    defined = set(_constants("attribute").values())
    figures = {leveled_figure("<pass>", figure) for figure in conventions.LEVELED_FIGURES}
    documented = {name for name in re.findall(r"`(mlscope\.[a-z_<>.]+[a-z_>])`", DOC) if not name.startswith("mlscope.agents")}
    spans = {conventions.LEVELED_SPAN, conventions.EVALUATION_SPAN, conventions.EVALUATE_SPAN,
             conventions.EVALUATION_PREFIX + "<field>"}
    assert documented - defined - figures - spans == set()


def test_every_environment_variable_is_documented() -> None:
    assert [value for value in _constants("env").values() if value not in ALL_DOCS] == []


def test_levels_parse_and_rank() -> None:
    assert parse_level(" Layer ") == "layer"
    with pytest.raises(UnknownLevel, match="application, model, layer, library, hardware"):
        parse_level("kernel")
    assert parse_levels("model, library") == frozenset({"model", "library"})
    assert parse_levels("") is None and parse_levels(None) is None
    assert levels_up_to("layer") == ("application", "model", "layer")
    assert stored_level("gpu") == "application" and stored_level("library") == "library"
    assert level_rank("gpu") == 0 and level_rank("hardware") == 4


def test_environment_precedence() -> None:
    assert collector_endpoint({}) == DEFAULT_ENDPOINT
    assert collector_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/"}) == "http://otel:4318"
    both = {"MLSCOPE_ENDPOINT": "http://mine:1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}
    assert collector_endpoint(both) == "http://mine:1"
    assert agent_level({}) == "model" and agent_level({"MLSCOPE_LEVEL": "LIBRARY"}) == "library"
    with pytest.raises(UnknownLevel):
        agent_level({"MLSCOPE_LEVEL": "deep"})
    assert service_name("app.py", {}) == "app.py"
    assert service_name("app.py", {"OTEL_SERVICE_NAME": "otel", "MLSCOPE_SERVICE": "mine"}) == "mine"
    assert data_dir({"MLSCOPE_DATA": "/srv/m"}) == "/srv/m"
    assert data_dir({"XDG_DATA_HOME": "/x"}) == "/x/mlscope"
