"""agents/otlp_encoder.py against the SDK's encoder: the same message, the same collector rows;
and its exporter against real collectors."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web
from mlscope.agents import start_agent
from mlscope.agents.otlp_encoder import encode_spans
from mlscope.agents.otlp_exporter import FastOTLPSpanExporter
from mlscope.collector import NO_GRPC, Collector, CollectorConfig
from mlscope.collector.otlp import Decoded, Encoding, decode_traces, parse_trace_request
from mlscope.store import Store, open_store
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.span import TraceState

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
SCHEMA_URL = "https://opentelemetry.io/schemas/1.21.0"

# Every value type the SDK's attribute cleaning lets through, at the edges of their encodings.
ALL_VALUE_TYPES: dict[str, Any] = {
    "mlscope.level": "layer",
    "empty": "",
    "unicode": "naïve ✓ 日本語 🙂",
    "long": "x" * 20_000,  # a length of three varint bytes
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -7,
    "int64.max": 2**63 - 1,
    "int64.min": -(2**63),
    "double": 3.25,
    "double.zero": 0.0,
    "double.tiny": -1e-300,
    "double.inf": float("inf"),
    "strings": ("1x3x224x224", ""),
    "ints": (1, -2, 2**40),
    "doubles": (0.5, -0.0),
    "bools": (True, False),
    "empty.array": (),
}
# What only spans built outside the SDK's cleaning carry (agents/spans.py writes such spans).
UNCLEANED_VALUES: dict[str, Any] = {
    "bytes": b"\x00\xff",
    "none": None,
    "mapping": {"a": 1, "b": ("x", None), "c": {"d": [1.5, [True]]}},
    "list": ["a", "b"],
}

RESOURCE = Resource({"service.name": "encoder-test", "process.pid": 42, "process.command_args": ("python", "-m", "x")}, SCHEMA_URL)
OTHER_RESOURCE = Resource({"service.name": "other-service"})
SCOPE = InstrumentationScope("mlscope.agents")


def sdk_spans() -> list[ReadableSpan]:
    """Spans made by the SDK itself: all kinds and statuses, events, links, a remote parent with
    a trace state, and attribute, event and link limits that drop some."""
    exporter = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=len(ALL_VALUE_TYPES), max_events=3, max_links=2, max_event_attributes=2)
    provider = TracerProvider(resource=RESOURCE, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.scope", "1.2.3", schema_url=SCHEMA_URL, attributes={"scope.kind": "test", "n": 3})
    linked = SpanContext(TRACE_ID, 0xABCDEF, is_remote=True, trace_flags=SAMPLED)
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=ALL_VALUE_TYPES) as root:
        root.add_event("checkpoint", {"step": 3, "loss": 0.25, "tags": ("a", "b")}, timestamp=1_700_000_000_000_000_123)
        root.add_event("empty event")
        links = [Link(linked, {"why": "batch"}), Link(linked)]
        with tracer.start_as_current_span("client", kind=SpanKind.CLIENT, links=links) as client:
            client.set_status(Status(StatusCode.ERROR, "boom ✗"))
        with tracer.start_as_current_span("producer", kind=SpanKind.PRODUCER) as producer:
            producer.set_status(Status(StatusCode.OK))
        with pytest.raises(RuntimeError), tracer.start_as_current_span("raises"):
            raise RuntimeError("recorded as an exception event")
        too_many = {f"extra.{index}": index for index in range(len(ALL_VALUE_TYPES) + 3)}
        with tracer.start_as_current_span("over the limits", attributes=too_many, links=[Link(linked)] * 4) as over:
            for index in range(5):
                over.add_event(f"event {index}", {"a": 1, "b": 2, "c": 3})
    trace_state = TraceState([("vendor", "opaque"), ("k", "v")])
    remote_parent = SpanContext(TRACE_ID, 0x1234, is_remote=True, trace_flags=SAMPLED, trace_state=trace_state)
    remote_context = trace.set_span_in_context(NonRecordingSpan(remote_parent))
    with tracer.start_as_current_span("consumer", context=remote_context, kind=SpanKind.CONSUMER):
        pass
    return list(exporter.get_finished_spans())


def written_span(
    name: str, resource: Resource, scope: InstrumentationScope | None, attributes: dict[str, Any] | None
) -> ReadableSpan:
    """A span built whole, as agents/spans.py builds the layer and op spans."""
    context = SpanContext(TRACE_ID, 0x1000 + len(name), is_remote=False, trace_flags=SAMPLED)
    parent = SpanContext(TRACE_ID, 0x2000, is_remote=False, trace_flags=SAMPLED)
    return ReadableSpan(name, context, parent, resource, attributes, status=Status(StatusCode.UNSET),
                        start_time=2**62 + 5, end_time=2**62 + 500, instrumentation_scope=scope)  # fmt: skip


def mixed_batch() -> list[ReadableSpan]:
    """SDK spans and written ones interleaved over two resources (one of them as two equal
    objects) and several scopes (one of them as two equal objects, and none at all)."""
    equal_resource = Resource(dict(RESOURCE.attributes), RESOURCE.schema_url)
    sdk = sdk_spans()
    return [
        *sdk[:2],
        written_span("w", OTHER_RESOURCE, SCOPE, UNCLEANED_VALUES),
        written_span("wr", equal_resource, SCOPE, {"mlscope.level": "library"}),
        *sdk[2:],
        written_span("wri", OTHER_RESOURCE, None, None),
        written_span("writ", equal_resource, InstrumentationScope("mlscope.agents"), {"mlscope.level": "layer"}),
        written_span("write", OTHER_RESOURCE, SCOPE, ALL_VALUE_TYPES),
    ]


def collector_rows(body: bytes) -> Decoded:
    return decode_traces(parse_trace_request(body, Encoding.PROTOBUF))


def assert_encoded_as_the_sdk_does(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    ours = encode_spans(spans)
    sdk_request = sdk_encode_spans(spans)
    parsed = ExportTraceServiceRequest.FromString(ours)
    assert parsed == sdk_request
    assert collector_rows(ours) == collector_rows(sdk_request.SerializeToString())
    return parsed


def test_a_varied_batch_parses_to_the_sdks_message_and_rows() -> None:
    request = assert_encoded_as_the_sdk_does(mixed_batch())

    # Equal resources and scopes are grouped as one, in order of first appearance.
    assert [[scope.scope.name for scope in group.scope_spans] for group in request.resource_spans] == [
        ["tests.scope", "mlscope.agents"], ["mlscope.agents", ""],
    ]
    spans = [span for group in request.resource_spans for scope in group.scope_spans for span in scope.spans]
    assert len(spans) == len(mixed_batch())
    over = next(span for span in spans if span.name == "over the limits")
    assert (over.dropped_attributes_count, over.dropped_events_count, over.dropped_links_count) == (3, 2, 2)
    consumer = next(span for span in spans if span.name == "consumer")
    assert consumer.trace_state == "vendor=opaque,k=v" and consumer.flags == 0x300


def test_each_span_alone_and_an_empty_batch() -> None:
    for span in mixed_batch():
        assert_encoded_as_the_sdk_does([span])
    assert encode_spans([]) == sdk_encode_spans([]).SerializeToString() == b""


def test_a_value_the_wire_format_cannot_hold_is_left_out_as_the_sdk_does() -> None:
    span = written_span("bad", RESOURCE, SCOPE, {"too.big": 2**64, "object": object(), "kept": "yes"})

    request = assert_encoded_as_the_sdk_does([span])

    assert [kv.key for kv in request.resource_spans[0].scope_spans[0].spans[0].attributes] == ["kept"]


def test_repeated_pairs_come_from_the_cache_unchanged() -> None:
    # A second batch is encoded from cached resource, scope and key/value bytes.
    batch = mixed_batch()
    assert encode_spans(batch) == encode_spans(batch)
    assert_encoded_as_the_sdk_does(batch)


# --- the exporter -------------------------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Collector, Store]]:
    """A Collector on the embedded store, and the store."""
    store = open_store(f"embedded://{tmp_path / 'store'}")
    config = CollectorConfig(http_port=0, grpc_port=NO_GRPC, spool_dir=str(tmp_path / "spool"), flush_interval_s=0.005)
    collector = Collector(store, config)
    await collector.start()
    yield collector, store
    await collector.stop()
    store.close()


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_an_agent_exports_through_the_fast_exporter_to_a_collector(
    compression: str, served: tuple[Collector, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", compression)
    collector, store = served
    exporters: list[SpanExporter] = []

    def keep(exporter: SpanExporter) -> SpanExporter:
        exporters.append(exporter)
        return exporter

    trace_id = await asyncio.to_thread(trace_tiny_model, "fast-exporter", collector.http_port, "layer", keep)

    assert [type(exporter) for exporter in exporters] == [FastOTLPSpanExporter]
    rows = (await asyncio.to_thread(store.execute, f"SELECT name, level, service FROM spans WHERE trace_id = '{trace_id}'")).rows
    expected = {("pipeline", "application"), ("predict", "model"), ("0", "layer"), ("1", "layer")}
    assert {(name, level) for name, level, _ in rows} >= expected
    assert {service for _, _, service in rows} == {"fast-exporter"}


async def test_an_agent_exports_its_deep_spans_from_the_deferred_worker_to_a_collector(
    served: tuple[Collector, Store],
) -> None:
    collector, store = served

    trace_id = await asyncio.to_thread(trace_tiny_model, "deferred", collector.http_port, "library")

    rows = (await asyncio.to_thread(store.execute, f"SELECT name, level FROM spans WHERE trace_id = '{trace_id}'")).rows
    assert {("pipeline", "application"), ("predict", "model"), ("tiny", "layer"), ("0", "layer"), ("1", "layer")} <= set(rows)
    assert ("aten::linear", "library") in set(rows)


async def test_the_exporter_retries_after_a_429_as_told() -> None:
    bodies: list[bytes] = []

    async def refuse_once(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        if len(bodies) == 1:
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", refuse_once)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    exporter = FastOTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=10)
    try:
        batch = mixed_batch()
        result = await asyncio.to_thread(exporter.export, batch)
    finally:
        exporter.shutdown()
        await runner.cleanup()

    assert result is SpanExportResult.SUCCESS
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert ExportTraceServiceRequest.FromString(bodies[1]) == sdk_encode_spans(batch)


def test_the_exporter_gives_up_with_failure_when_no_collector_answers() -> None:
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=0.5)
    try:
        assert exporter.export(mixed_batch()) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert exporter.export(mixed_batch()) is SpanExportResult.FAILURE  # after shutdown


def test_a_refused_connection_is_not_retried_and_a_dropped_one_is(caplog: pytest.LogCaptureFixture) -> None:
    # Refused: nothing listens (the collector is gone), and the SDK's backoff would hold the export
    # (and the program's exit) for seconds. Dropped: a stale pooled connection, tried again.
    with socket.socket() as bound:  # bound, not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        exporter = FastOTLPSpanExporter(endpoint=f"http://127.0.0.1:{bound.getsockname()[1]}/v1/traces", timeout=5)
        with caplog.at_level(logging.WARNING):
            assert exporter.export(mixed_batch()) is SpanExportResult.FAILURE
    assert "Connection refused" in caplog.text and "retrying" not in caplog.text

    accepted: list[None] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        def accept_and_close() -> None:
            while len(accepted) < 2:
                connection, _ = server.accept()
                accepted.append(None)
                connection.close()

        acceptor = threading.Thread(target=accept_and_close, daemon=True)
        acceptor.start()
        exporter = FastOTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.getsockname()[1]}/v1/traces", timeout=0.5)
        assert exporter.export(mixed_batch()) is SpanExportResult.FAILURE
        acceptor.join(10)
    assert len(accepted) == 2


def trace_tiny_model(service: str, port: int, level: str,
                     wrap_exporter: Callable[[SpanExporter], SpanExporter] | None = None) -> str:
    """One traced call of a two-layer model under a `pipeline` span, exported to the collector on
    `port` by an agent from start_agent; the trace id."""
    agent = start_agent(service, endpoint=f"http://127.0.0.1:{port}", level=level, wrap_exporter=wrap_exporter)
    model = agent.trace_model(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), name="tiny")
    with agent.span("pipeline") as pipeline:
        model(torch.ones(2, 4))
    agent.shutdown()
    return format(pipeline.get_span_context().trace_id, "032x")
