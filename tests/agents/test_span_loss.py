"""agents/span_loss.py and back-pressure: what an agent cannot deliver is dropped deepest level
first, a whole call at a time, and counted per level, so delivered + counted = produced."""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Sequence

import pytest
import torch
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from torch import nn

from mlscope.agents import Agent, api, start_agent
from mlscope.agents.deferred import DeferredSpans
from mlscope.agents.otlp_encoder import encode_spans
from mlscope.agents.otlp_exporter import DeliveryWatch, EncodedSpanExporter, ExporterDecorator
from mlscope.agents.run_config import undelivered_by_level, undelivered_line, undelivered_report_path, undelivered_summary
from mlscope.agents.span_loss import CountingBatchSpanProcessor, SpanLoss, dropped_attributes, request_levels, span_level
from tests.agents.agent_testing import decode_request

MODEL_LAYERS = 4  # the Sequential and its three modules
MODEL_OPS = 3  # two linear ops and a relu at the top level


class SlowRecordingExporter(ExporterDecorator):
    """Keeps the spans it is sent, taking `delay_s` per request: a collector that falls behind."""

    def __init__(self, exporter: EncodedSpanExporter, delay_s: float, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        super().__init__(exporter)
        self.delay_s = delay_s
        self.result = result
        self.levels: Counter[str] = Counter()
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(self.delay_s)
        with self._lock:
            self.levels.update(map(span_level, spans))
        return self.result

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        time.sleep(self.delay_s)
        decoded = decode_request(body)
        assert len(decoded) == spans
        with self._lock:
            self.levels.update(map(span_level, decoded))
        return self.result

    def shutdown(self) -> None:
        pass


def slow_agent(level: str, delay_s: float) -> tuple[Agent, list[SlowRecordingExporter]]:
    recorders: list[SlowRecordingExporter] = []

    def slow(exporter: EncodedSpanExporter) -> SlowRecordingExporter:
        recorders.append(SlowRecordingExporter(exporter, delay_s))
        return recorders[-1]

    return start_agent("span-loss-test", endpoint="http://127.0.0.1:9", level=level, wrap_exporter=slow), recorders


def test_a_tight_loop_against_a_slow_exporter_loses_library_spans_first_whole_calls_counted_per_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A budget of about 80 calls' deep spans: the loop outruns the exporter within it.
    monkeypatch.setattr(api, "DeferredSpans", functools.partial(DeferredSpans, budget_bytes=64 * 2**10))
    agent, (recorder,) = slow_agent("library", delay_s=0.2)
    model = agent.trace_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), name="tiny")
    calls = 3000
    with torch.inference_mode():
        for _ in range(calls):
            model(torch.ones(1, 8))
    assert agent.flush_deep_spans(60)
    dropped = agent.dropped_spans()  # before shutdown: what the process span would record
    assert agent.shutdown(timeout_s=60)
    assert agent.dropped_spans() == dropped
    produced = {"model": calls, "layer": calls * MODEL_LAYERS, "library": calls * MODEL_OPS}
    delivered = {level: recorder.levels[level] for level in produced}
    assert {level: delivered[level] + dropped.get(level, 0) for level in produced} == produced
    # The exporter could not keep up: deep spans went, whole calls of them, library spans
    # before layer spans; no model span did.
    assert dropped.get("library", 0) > 0 and "model" not in dropped
    assert delivered["layer"] % MODEL_LAYERS == 0 and delivered["library"] % MODEL_OPS == 0
    assert delivered["library"] // MODEL_OPS < delivered["layer"] // MODEL_LAYERS
    assert agent.undelivered_spans == sum(dropped.values())
    assert dropped_attributes(dropped) == {f"mlscope.dropped.{level}": count for level, count in dropped.items()}


def test_a_full_sdk_queue_waits_briefly_then_drops_the_new_span_and_counts_it() -> None:
    loss = SpanLoss()
    gate = threading.Event()

    class Blocked(SlowRecordingExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            gate.wait()
            return super().export(spans)

    recorder = Blocked(None, 0.0)  # type: ignore[arg-type]
    provider = TracerProvider(resource=Resource({}), shutdown_on_exit=False)
    provider.add_span_processor(CountingBatchSpanProcessor(recorder, loss, max_queue_size=8, max_export_batch_size=4))
    tracer = provider.get_tracer("test")
    for index in range(40):
        tracer.start_span("s", attributes={"mlscope.level": "model" if index % 2 else "layer"}).end()
    gate.set()
    provider.force_flush()
    counted = loss.counts()
    assert sum(counted.values()) > 0
    assert recorder.levels["model"] + counted.get("model", 0) == 20
    assert recorder.levels["layer"] + counted.get("layer", 0) == 20
    provider.shutdown()


def test_spans_the_collector_refuses_are_counted_per_level_on_both_doors() -> None:
    provider = TracerProvider(resource=Resource({}), shutdown_on_exit=False)
    tracer = provider.get_tracer("test")
    spans = []
    for level in ("model", "layer", "layer", "library", None):
        span = tracer.start_span("s", attributes={"mlscope.level": level} if level else {})
        span.end()
        spans.append(span)
    loss = SpanLoss()
    watch = DeliveryWatch(SlowRecordingExporter(None, 0.0, SpanExportResult.FAILURE), loss)  # type: ignore[arg-type]
    watch.export(spans[:1])
    watch.export_encoded(encode_spans(spans[1:]), 4)
    assert watch.failing
    assert loss.counts() == {"model": 1, "layer": 2, "library": 1, "application": 1}
    assert request_levels(encode_spans(spans), 5) == {"model": 1, "layer": 2, "library": 1, "application": 1}


def test_the_run_report_sums_each_process_line_per_level(tmp_path) -> None:
    trace_file = str(tmp_path / "trace-id")
    with open(undelivered_report_path(trace_file), "w", encoding="utf-8") as report:
        report.write(undelivered_line({"layer": 8, "library": 6}))
        report.write(undelivered_line({"model": 1, "layer": 4}))
    counts = undelivered_by_level(trace_file)
    assert counts == {"layer": 12, "library": 6, "model": 1}
    assert undelivered_summary(counts) == "19 spans not delivered (model 1, layer 12, library 6)"
    assert undelivered_by_level(str(tmp_path / "none")) == {}


def test_model_calls_from_threads_join_the_default_parent_or_their_own_span() -> None:
    agent, _ = slow_agent("model", delay_s=0.0)
    model = agent.trace_model(nn.ReLU(), name="relu")
    process = agent.start_span("process")
    agent.default_parent = trace.set_span_in_context(process)

    def work() -> None:
        model(torch.ones(1))
        with agent.span("stage") as stage:
            model(torch.ones(1))
        assert stage is not None

    kept = InMemorySpanExporter()
    agent.add_span_processor(SimpleSpanProcessor(kept))
    worker = threading.Thread(target=work, name="worker-1")
    worker.start()
    worker.join()
    process.end()
    agent.shutdown()
    by_name = {}
    seen = kept.get_finished_spans()
    for span in seen:
        by_name.setdefault(span.name, []).append(span)
    (stage,) = by_name["stage"]
    first, second = by_name["predict"]
    root = process.get_span_context()
    assert {span.context.trace_id for span in seen} == {root.trace_id}
    assert first.parent.span_id == root.span_id and stage.parent.span_id == root.span_id
    assert second.parent.span_id == stage.context.span_id
    assert first.attributes["thread.name"] == "worker-1" and first.attributes["thread.id"] == worker.ident
