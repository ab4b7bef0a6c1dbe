"""Shared by the collector tests: hand-built OTLP requests, a small HTTP client, a quick config."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from mlscope.collector import Collector, CollectorConfig

StartCollector = Callable[..., Awaitable[Collector]]  # the start_collector fixture

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def quick_config(tmp_path: Path, **overrides: object) -> CollectorConfig:
    """Ports picked by the OS; a short flush timer and replay interval keep the tests quick."""
    config = CollectorConfig(
        http_port=0, grpc_port=0, spool_dir=str(tmp_path / "spool"), flush_interval_s=0.005, replay_interval_s=0.2
    )
    return dataclasses.replace(config, **overrides)


def string_attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span_request(count: int, service: str = "test-service", start_ns: int = 1_700_000_000_000_000_000) -> ExportTraceServiceRequest:
    """`count` spans of one new trace: a root and its children, with random ids."""
    trace_id = os.urandom(16)
    root_id = os.urandom(8)
    spans = [
        Span(
            trace_id=trace_id,
            span_id=root_id if index == 0 else os.urandom(8),
            parent_span_id=b"" if index == 0 else root_id,
            name=f"op-{index}",
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=start_ns + index * 1000,
            end_time_unix_nano=start_ns + index * 1000 + 500,
            attributes=[string_attribute("mlscope.level", "layer"), KeyValue(key="index", value=AnyValue(int_value=index))],
        )
        for index in range(count)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[string_attribute("service.name", service)]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="tests"), spans=spans)],
            )
        ]
    )


def span_ids(request: ExportTraceServiceRequest) -> list[str]:
    return [
        span.span_id.hex()
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, content_type: str = PROTOBUF, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url, data=body, headers={"Content-Type": content_type, **(headers or {})}) as response:
        return response.status, dict(response.headers), await response.read()
