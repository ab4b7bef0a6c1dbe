"""Shared by the agent tests: the agent start_agent builds (same deep-span writer), whose spans
land in memory, the encoded ones decoded back, so tests see the spans users' agents send."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.common.http import _ExportResult
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from mlscope.agents import Agent
from mlscope.agents.api import deep_span_writer
from mlscope.agents.spans import SpanWriterKind


class CapturingClient:
    """Stands in for the exporter's HTTP client: keeps each request body; `gate` holds them back."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()

    def export(self, body: bytes) -> _ExportResult:
        self.gate.wait()
        self.bodies.append(body)
        return _ExportResult(True, 200, "OK", None)

    def shutdown(self) -> None:
        pass

    def spans(self) -> list[SpanMessage]:
        return [
            span
            for body in self.bodies
            for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


class RecordingExporter(SpanExporter):
    """Keeps every span it is sent: ReadableSpans as they come, encoded requests decoded.
    `get_finished_spans` flushes the agent first, so a test reads what its calls sent."""

    def __init__(self) -> None:
        self._spans: list[ReadableSpan] = []
        self.agent: Agent | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._spans.extend(spans)
        return SpanExportResult.SUCCESS

    def export_encoded(self, body: bytes, spans: int) -> SpanExportResult:
        decoded = decode_request(body)
        assert len(decoded) == spans
        self._spans.extend(decoded)
        return SpanExportResult.SUCCESS

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        if self.agent is not None:
            assert self.agent.force_flush()
        return tuple(self._spans)

    def clear(self) -> None:
        if self.agent is not None:
            assert self.agent.force_flush()
        self._spans.clear()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def agent_at(
    level: str, provider: TracerProvider | None = None, writer: SpanWriterKind | None = None
) -> tuple[Agent, RecordingExporter]:
    """An agent at `level` exporting synchronously to a RecordingExporter, its deep spans written
    as start_agent's are (`writer` forces one: INLINE where a test needs ReadableSpans)."""
    exporter = RecordingExporter()
    provider = provider or TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = Agent(provider, level, deep_spans=deep_span_writer(level, provider, exporter, writer))
    exporter.agent = agent
    return agent, exporter


def decode_request(body: bytes) -> list[ReadableSpan]:
    """The spans of an encoded OTLP request, as the ReadableSpans they were written from."""
    request = ExportTraceServiceRequest.FromString(body)
    return [
        _readable(span, Resource({pair.key: _value(pair.value) for pair in resource_spans.resource.attributes}),
                  InstrumentationScope(scope_spans.scope.name, scope_spans.scope.version or None))
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def _readable(span: SpanMessage, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id = int.from_bytes(span.trace_id, "big")
    flags = TraceFlags(span.flags & 0xFF)
    parent = (SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), False, flags)
              if span.parent_span_id else None)
    status = Status(StatusCode(span.status.code), span.status.message or None)
    return ReadableSpan(
        span.name,
        SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False, flags),
        parent,
        resource,
        {pair.key: _value(pair.value) for pair in span.attributes},
        kind=SpanKind(max(span.kind - 1, 0)),
        status=status,
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, kind) if kind else None
