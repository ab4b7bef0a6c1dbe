"""The agent API: spans per level, model calls as model spans, deeper levels skipped."""

from __future__ import annotations

import pytest
import torch
from tests.agents.agent_testing import agent_at

from mlscope.cli.demo import build_model
from mlscope.conventions import UnknownLevel


def test_stages_and_model_calls_nest_with_levels() -> None:
    agent, exporter = agent_at("model")
    model = agent.trace_model(build_model(), name="democnn", framework="pytorch", version="1")
    with agent.span("pipeline"):
        with agent.span("preprocess", level="model"):
            images = torch.zeros(2, 3, 32, 32)
        logits = model(images)
    assert logits.shape == (2, 10)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"pipeline", "preprocess", "predict"}
    root = spans["pipeline"]
    assert root.parent is None and root.attributes["mlscope.level"] == "application"
    for child in ("preprocess", "predict"):
        assert spans[child].parent.span_id == root.context.span_id
        assert spans[child].attributes["mlscope.level"] == "model"
    assert spans["predict"].attributes["mlscope.batch_size"] == 2
    assert spans["predict"].attributes["mlscope.model.name"] == "democnn"


def test_levels_deeper_than_the_agent_are_not_traced() -> None:
    agent, exporter = agent_at("application")
    model = agent.trace_model(lambda x: x + 1, name="add-one")
    with agent.span("pipeline"):
        with agent.span("preprocess", level="model") as skipped:
            assert skipped is None
        assert model(1) == 2
    assert [span.name for span in exporter.get_finished_spans()] == ["pipeline"]


def test_exceptions_are_recorded_and_reraised() -> None:
    agent, exporter = agent_at("model")
    with pytest.raises(ValueError):
        with agent.span("load-data"):
            raise ValueError("bad input")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.events[0].name == "exception"


def test_unknown_level_is_refused() -> None:
    with pytest.raises(UnknownLevel, match="expected one of application, model"):
        agent_at("kernel")
