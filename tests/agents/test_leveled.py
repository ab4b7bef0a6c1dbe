"""`mlscope run --leveled`'s pure parts: per-process tallies, their merging per pass, the
overhead figures and the root span's attributes (the end-to-end run is in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from torch import nn

from mlscope.agents.api import choose_writer, start_agent
from mlscope.agents.otlp_exporter import FastOTLPSpanExporter
from mlscope.agents.spans import SpanWriterKind
from mlscope.agents.training import trace_training
from mlscope.conventions import AGENT_WRITER
from tests.agents.agent_testing import CapturingClient
from mlscope.agents.leveled import (
    PASS_LEVELS,
    LevelTotal,
    PassSummary,
    SpanTally,
    append_report,
    merge,
    overhead,
    pass_figures,
    read_report,
    render_table,
    root_attributes,
)


def summary(level: str, durations: tuple[int, ...], **levels: tuple[int, int]) -> PassSummary:
    return PassSummary(level, durations, {name: LevelTotal(*total) for name, total in levels.items()})


def test_the_passes_are_model_to_hardware() -> None:
    assert PASS_LEVELS == ("model", "layer", "library", "hardware")


def test_a_summary_survives_its_json_line() -> None:
    original = summary("layer", (3, 1, 2), model=(3, 6), layer=(12, 4))
    assert "\n" not in original.to_json()
    assert PassSummary.from_json(original.to_json()) == original
    assert original.model_p50_ns == 2
    assert summary("model", ()).model_p50_ns is None


def test_merging_the_processes_of_a_pass() -> None:
    parent = summary("library", (10, 30), application=(1, 100), model=(2, 40))
    child = summary("library", (20,), application=(1, 50), model=(1, 20), library=(5, 9))
    merged = merge("library", [parent, child])
    assert merged.model_durations_ns == (10, 30, 20) and merged.model_p50_ns == 20
    assert merged.levels == {"application": LevelTotal(2, 150), "model": LevelTotal(3, 60), "library": LevelTotal(5, 9)}


@pytest.mark.parametrize("p50, baseline, expected", [(150, 100, 0.5), (100, 100, 0.0), (90, 100, -0.1)])
def test_overhead_is_a_fraction_of_the_model_pass(p50: int, baseline: int, expected: float) -> None:
    assert overhead(p50, baseline) == pytest.approx(expected)


@pytest.mark.parametrize("p50, baseline", [(None, 100), (100, None), (100, 0)])
def test_no_overhead_without_both_medians(p50: int | None, baseline: int | None) -> None:
    assert overhead(p50, baseline) is None


def test_root_attributes_take_each_level_from_its_own_pass() -> None:
    summaries = {
        "layer": summary("layer", (300, 300), model=(2, 600), layer=(8, 400)),
        "model": summary("model", (200, 200), model=(2, 400)),
        "library": summary("library", (500, 500), model=(2, 1000), layer=(8, 900), library=(20, 700)),
    }
    attributes = root_attributes(summaries)
    assert attributes["mlscope.leveled.passes"] == "model,layer,library"
    assert attributes["mlscope.leveled.model.model_p50_ns"] == 200
    assert attributes["mlscope.leveled.model.overhead"] == 0.0
    assert attributes["mlscope.leveled.layer.overhead"] == pytest.approx(0.5)
    assert attributes["mlscope.leveled.library.overhead"] == pytest.approx(1.5)
    # The layer figures come from the layer pass, not the slower library pass.
    assert (attributes["mlscope.leveled.layer.level_spans"], attributes["mlscope.leveled.layer.level_total_ns"]) == (8, 400)
    assert attributes["mlscope.leveled.library.level_total_ns"] == 700
    assert not any(key.startswith("mlscope.leveled.hardware.") for key in attributes)


def test_a_pass_without_model_spans_has_no_latency_or_overhead() -> None:
    summaries = {"model": summary("model", (), application=(1, 5)), "layer": summary("layer", (10,), model=(1, 10))}
    attributes = root_attributes(summaries)
    assert attributes["mlscope.leveled.model.model_spans"] == 0
    assert "mlscope.leveled.model.model_p50_ns" not in attributes and "mlscope.leveled.layer.overhead" not in attributes
    assert "mlscope.leveled.layer.model_p50_ns" in attributes


def test_the_table_shows_latency_in_ms_and_overhead_in_percent() -> None:
    figures = pass_figures({"model": summary("model", (2_000_000,)), "layer": summary("layer", (3_000_000, 3_000_000)),
                            "library": summary("library", ())})
    lines = render_table(figures).splitlines()
    assert lines[0].split() == ["pass", "model", "spans", "model", "p50", "(ms)", "overhead", "writer"]
    assert [line.split() for line in lines[1:]] == [["model", "1", "2.000", "+0.0%", "-"],
                                                    ["layer", "2", "3.000", "+50.0%", "-"],
                                                    ["library", "0", "-", "-", "-"]]


@pytest.mark.parametrize("writer", list(SpanWriterKind))
def test_a_tally_counts_the_spans_of_each_level(writer: SpanWriterKind) -> None:
    """The tally decorates the exporter: it counts the spans every writer sends, encoded or not."""
    tallies: list[SpanTally] = []
    client = CapturingClient()

    def tallied(exporter: FastOTLPSpanExporter) -> SpanTally:
        exporter._client = client
        tallies.append(SpanTally(exporter))
        return tallies[-1]

    agent = start_agent("tally-test", "http://127.0.0.1:9", "layer", wrap_exporter=tallied, writer=writer)
    with agent.span("process"):
        model = agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")
        model(torch.ones(1))
        model(torch.ones(1))
        with agent.span("stage", level="layer"):
            pass
        with agent.span("ignored", level="library"):  # deeper than the agent: no span
            pass
    agent.shutdown()
    result = tallies[0].summary("layer", agent.writer.value)
    # Each call: its model span and two layer spans (the Sequential and its ReLU).
    assert {level: total.spans for level, total in result.levels.items()} == {"application": 1, "model": 2, "layer": 5}
    assert len(result.model_durations_ns) == 2 and all(ns > 0 for ns in result.model_durations_ns)
    assert result.levels["model"].total_ns == sum(result.model_durations_ns)
    assert result.levels["layer"].total_ns > 0
    assert agent.resource_attributes()[AGENT_WRITER] == result.writer == choose_writer("layer", RandomIdGenerator(), writer).value


@pytest.mark.parametrize("writer", list(SpanWriterKind))
def test_a_tally_times_only_model_calls_not_a_training_steps_other_parts(writer: SpanWriterKind) -> None:
    """loss, backward, optimizer and data spans are model-level, but no model call: they count
    as model spans of the level, not in the durations the pass's median and overhead come from."""
    tallies: list[SpanTally] = []
    client = CapturingClient()

    def tallied(exporter: FastOTLPSpanExporter) -> SpanTally:
        exporter._client = client
        tallies.append(SpanTally(exporter))
        return tallies[-1]

    agent = start_agent("tally-test", "http://127.0.0.1:9", "layer", wrap_exporter=tallied, writer=writer)
    training = trace_training(agent)
    try:
        model = agent.trace_model(nn.Linear(2, 2), name="tiny")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = nn.MSELoss()
        for _ in range(2):
            optimizer.zero_grad()
            loss_fn(model(torch.ones(1, 2)), torch.zeros(1, 2)).backward()
            optimizer.step()
    finally:
        training.uninstrument()
    agent.shutdown()
    result = tallies[0].summary("layer")
    # Per step: predict, loss, optimizer.zero_grad, backward, optimizer.step.
    assert result.levels["model"].spans == 10
    assert len(result.model_durations_ns) == 2


def test_the_writer_a_pass_measured_is_on_the_root_span_and_in_the_table() -> None:
    summaries = {"model": PassSummary("model", (2,), {}, "inline"), "layer": PassSummary("layer", (3,), {}, "native")}
    assert root_attributes(summaries)["mlscope.leveled.layer.writer"] == "native"
    assert merge("layer", [PassSummary("layer", (), {}, "native"), PassSummary("layer", (), {}, "native")]).writer == "native"
    assert render_table(pass_figures(summaries)).splitlines()[2].split()[-1] == "native"
    assert PassSummary.from_json(summaries["layer"].to_json()) == summaries["layer"]


def test_reports_of_several_processes_are_merged(tmp_path: Path) -> None:
    report = tmp_path / "layer.jsonl"
    assert read_report(report, "layer") is None
    append_report(str(report), summary("layer", (5,), model=(1, 5)))
    append_report(str(report), summary("layer", (7, 9), model=(2, 16)))
    merged = read_report(report, "layer")
    assert merged == summary("layer", (5, 7, 9), model=(3, 21))
