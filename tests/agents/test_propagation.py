"""W3C trace context through subprocess environments and HTTP headers."""

from __future__ import annotations

from tests.agents.agent_testing import agent_at
from mlscope.agents import extract_env, extract_headers, inject_env, inject_headers
from opentelemetry import trace

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"



def test_environment_round_trip_names_the_current_span() -> None:
    agent, _ = agent_at("model")
    with agent.span("parent") as parent:
        env = inject_env({"PATH": "/bin", "TRACESTATE": "stale=1"})
    assert env["PATH"] == "/bin" and "TRACESTATE" not in env  # a stale outer state is dropped
    assert env["TRACEPARENT"].startswith("00-{:032x}-{:016x}-".format(
        parent.get_span_context().trace_id, parent.get_span_context().span_id))
    remote = trace.get_current_span(extract_env(env)).get_span_context()
    assert (remote.trace_id, remote.span_id, remote.is_remote) == (
        parent.get_span_context().trace_id, parent.get_span_context().span_id, True)


def test_environment_without_or_with_a_bad_traceparent_gives_a_root() -> None:
    for env in ({}, {"TRACEPARENT": "garbage"}, {"TRACEPARENT": f"00-{0:032x}-{SPAN_ID:016x}-01"}):
        assert not trace.get_current_span(extract_env(env)).get_span_context().is_valid
    assert inject_env({"TRACEPARENT": TRACEPARENT}) == {}  # outside any span: nothing to pass on


def test_tracestate_travels_with_traceparent() -> None:
    context = extract_env({"TRACEPARENT": TRACEPARENT, "TRACESTATE": "vendor=abc"})
    assert inject_env({}, context) == {"TRACEPARENT": TRACEPARENT, "TRACESTATE": "vendor=abc"}


def test_a_server_span_continues_the_client_request_span() -> None:
    client, client_spans = agent_at("application")
    server, server_spans = agent_at("application")
    with client.span("POST /predict", kind=trace.SpanKind.CLIENT):
        headers = client.inject_headers({"Content-Type": "application/json"})
    # Header names arrive in any case (http.server keeps the sender's spelling).
    received = {key.title(): value for key, value in headers.items()}
    with server.span_from_headers("handle", received, attributes={"http.route": "/predict"}):
        pass
    (request,), (handled,) = client_spans.get_finished_spans(), server_spans.get_finished_spans()
    assert handled.context.trace_id == request.context.trace_id
    assert handled.parent.span_id == request.context.span_id and handled.parent.is_remote
    assert handled.kind == trace.SpanKind.SERVER and request.kind == trace.SpanKind.CLIENT
    assert handled.attributes["mlscope.level"] == "application"


def test_headers_without_context_start_a_new_trace() -> None:
    agent, exporter = agent_at("application")
    with agent.span_from_headers("handle", {}):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert inject_headers({}) == {}
    assert not trace.get_current_span(extract_headers({"traceparent": "00-bad"})).get_span_context().is_valid
