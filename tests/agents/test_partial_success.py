"""A collector that takes a request but refuses some of its spans (OTLP partial_success) is a
loss the agent counts: per level when all of a request's spans were refused, as `refused` when
the answer does not say which (start_agent's exporter reads the answer the SDK's client ignores)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from mlscope.agents import start_agent
from mlscope.agents.span_loss import dropped_attributes
from mlscope.conventions import DROPPED_MODEL, DROPPED_REFUSED


class _Refusing(http.server.BaseHTTPRequestHandler):
    refuse_all = True

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        refused = spans if self.refuse_all else 1
        body = ExportTraceServiceResponse(partial_success=ExportTracePartialSuccess(
            rejected_spans=refused, error_message="start time is more than 86400 s in the future")).SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_collector() -> Iterator[type[_Refusing]]:
    handler = type("Handler", (_Refusing,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler
    server.shutdown()
    server.server_close()


def test_spans_all_refused_are_counted_per_level(refusing_collector: type[_Refusing], caplog: pytest.LogCaptureFixture) -> None:
    agent = start_agent("refused", endpoint=refusing_collector.endpoint, level="model")
    model = agent.trace_model(lambda x: x, name="identity")
    for _ in range(5):
        model([1])
    agent.shutdown()

    assert agent.dropped_spans() == {"model": 5}
    assert dropped_attributes(agent.dropped_spans()) == {DROPPED_MODEL: 5}
    assert [record.getMessage() for record in caplog.records if "refused" in record.getMessage()] == [
        "mlscope: the collector refused 5 of 5 spans: start time is more than 86400 s in the future"]


def test_spans_partly_refused_are_counted_as_refused(refusing_collector: type[_Refusing]) -> None:
    refusing_collector.refuse_all = False
    agent = start_agent("refused", endpoint=refusing_collector.endpoint, level="model")
    model = agent.trace_model(lambda x: x, name="identity")
    for _ in range(3):
        model([1])
    agent.shutdown()

    assert agent.dropped_spans() == {"refused": 1}
    assert dropped_attributes(agent.dropped_spans()) == {DROPPED_REFUSED: 1}
