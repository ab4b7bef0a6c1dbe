"""The Jaeger-query-compatible API: parameter parsing (pure) and the answers' shapes over both
store backends. The shapes checked are those Jaeger's own query service answers, as defined in
jaegertracing/jaeger's cmd/query/app/http_handler.go (structuredResponse {data, total, limit,
offset, errors}; structuredError {code, msg}; the routes /api/services,
/api/services/{service}/operations, /api/traces, /api/traces/{traceID}) and model/json/model.go
(ui.Trace {traceID, spans, processes, warnings}; Span {traceID, spanID, operationName,
references, startTime, duration, tags, logs, processID, warnings}, times in microseconds;
Reference {refType, traceID, spanID}; KeyValue {key, type, value}; Process {serviceName, tags})."""

from __future__ import annotations

import json

import aiohttp
import pytest

from mlscope.query import create_query_app
from mlscope.query.errors import BadRequest
from mlscope.query.jaeger import (
    TraceQuery, go_duration_ns, parse_trace_id, parse_trace_query, trace_ids_sql,
)
from mlscope.query.traces import SpanCap
from tests.query.api_fixtures_jaeger import LATER, TRACE_ROWS
from tests.query.query_server import serve
from tests.query.trace_fixtures import MS, T0, TRACE, insert

ENVELOPE = {"data", "total", "limit", "offset", "errors"}
TRACE_KEYS = {"traceID", "spans", "processes", "warnings"}
SPAN_KEYS = {"traceID", "spanID", "operationName", "references", "startTime", "duration", "tags", "logs",
             "processID", "warnings"}
VALUE_TYPES = {"string", "bool", "int64", "float64", "binary"}


@pytest.mark.parametrize("text, ns", [("10ms", 10 * MS), ("1.5s", 1_500 * MS), ("1h15m", 4_500 * 10**9),
                                      ("250us", 250_000), ("7ns", 7), (".5ms", MS // 2)])
def test_go_durations(text: str, ns: int) -> None:
    assert go_duration_ns("minDuration", text) == ns


@pytest.mark.parametrize("text", ["10", "ms", "-1s", "1s ", "1d", "1e3s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(BadRequest, match="minDuration must be a duration"):
        go_duration_ns("minDuration", text)


def test_search_parameters_in_jaeger_units() -> None:
    query = parse_trace_query({"service": "svc", "operation": "predict", "start": "1700000000000000",
                               "end": "1700000001000000", "minDuration": "5ms", "tags": '{"k": "v", "n": 3}',
                               "limit": "7", "lookback": "1h"})
    assert query == TraceQuery(service="svc", operation="predict", start_ns=1_700_000_000_000_000_000,
                               end_ns=1_700_000_001_000_000_000, min_duration_ns=5 * MS, tags={"k": "v", "n": "3"},
                               limit=7)
    with pytest.raises(BadRequest, match="parameter 'service' is required"):
        parse_trace_query({})
    with pytest.raises(BadRequest, match="tags must be a JSON object"):
        parse_trace_query({"service": "svc", "tags": "[1]"})


def test_search_sql_quotes_everything() -> None:
    sql = trace_ids_sql(TraceQuery(service="x' OR 1=1 --", tags={"k'": "v'"}, limit=3))
    assert "service = 'x\\' OR 1=1 --'" in sql and "'k\\''" in sql and sql.endswith("LIMIT 3")


def test_trace_ids_are_padded_like_jaeger() -> None:
    assert parse_trace_id("ABC") == "0" * 29 + "abc"
    with pytest.raises(BadRequest):
        parse_trace_id("g" * 32)


# --- over HTTP, both store backends -------------------------------------------------------------


@pytest.fixture
async def jaeger(served):
    insert(served.store, TRACE_ROWS)
    return served


def check_trace_shape(trace: dict) -> None:
    assert set(trace) == TRACE_KEYS
    for span in trace["spans"]:
        assert set(span) == SPAN_KEYS
        assert isinstance(span["startTime"], int) and isinstance(span["duration"], int)
        assert span["processID"] in trace["processes"]
        for reference in span["references"]:
            assert set(reference) == {"refType", "traceID", "spanID"} and reference["refType"] == "CHILD_OF"
        for tag in span["tags"] + [field for log in span["logs"] for field in log["fields"]]:
            assert set(tag) == {"key", "type", "value"} and tag["type"] in VALUE_TYPES
    for process in trace["processes"].values():
        assert set(process) == {"serviceName", "tags"}


async def test_services_and_operations(jaeger) -> None:
    status, body = await jaeger.get("/jaeger/api/services")
    assert status == 200 and set(body) == ENVELOPE
    assert (body["data"], body["total"], body["errors"]) == (["svc", "web"], 2, None)
    status, body = await jaeger.get("/jaeger/api/services/web/operations")
    assert (status, body["data"], body["total"]) == (200, ["serve-request", "tokenize"], 2)
    assert (await jaeger.get("/jaeger/api/services/nobody/operations"))[1]["data"] == []


async def test_trace_by_id(jaeger) -> None:
    status, body = await jaeger.get(f"/jaeger/api/traces/{TRACE.upper()}")
    assert status == 200 and set(body) == ENVELOPE and body["total"] == 1
    (trace,) = body["data"]
    check_trace_shape(trace)
    predict = next(span for span in trace["spans"] if span["operationName"] == "predict")
    assert (predict["startTime"], predict["duration"]) == ((T0 + 10 * MS) // 1000, 80_000)


async def test_trace_search(jaeger) -> None:
    status, body = await jaeger.get("/jaeger/api/traces?service=svc&operation=predict&minDuration=50ms")
    assert status == 200 and set(body) == ENVELOPE
    assert [trace["traceID"] for trace in body["data"]] == [TRACE]
    check_trace_shape(body["data"][0])
    assert len(body["data"][0]["spans"]) == 5  # the whole trace, not only the matching span
    newest_first = await jaeger.get("/jaeger/api/traces?service=web")
    assert [trace["traceID"] for trace in newest_first[1]["data"]] == [LATER]
    for query in ("service=svc&operation=predict&minDuration=81ms", f"service=svc&start={(T0 + 11 * MS) // 1000}&operation=predict",
                  "service=web&tags=" + json.dumps({"mlscope.model.name": "gpt"})):
        assert (await jaeger.get(f"/jaeger/api/traces?{query}"))[1]["data"] == [], query
    tagged = await jaeger.get("/jaeger/api/traces?service=web&tags=" + json.dumps({"mlscope.model.name": "bert"}))
    assert [trace["traceID"] for trace in tagged[1]["data"]] == [LATER]


@pytest.mark.parametrize("path, status, message", [
    ("/jaeger/api/traces", 400, "parameter 'service' is required"),
    ("/jaeger/api/traces?service=svc&minDuration=soon", 400, "minDuration must be a duration"),
    ("/jaeger/api/traces?service=svc&limit=0", 400, "limit must be between"),
    ("/jaeger/api/traces/xyz", 400, "trace id must be"),
    (f"/jaeger/api/traces/{'f' * 32}", 404, "trace not found"),
])
async def test_errors_in_jaeger_shape(jaeger, path: str, status: int, message: str) -> None:
    answer_status, body = await jaeger.get(path)
    assert answer_status == status and set(body) == ENVELOPE and body["data"] is None
    (error,) = body["errors"]
    assert error["code"] == status and message in error["msg"]


@pytest.mark.parametrize("cap, status", [(4, 413), (5, 200)])
async def test_a_trace_past_the_span_cap_is_a_413_pointing_to_the_windowed_read(jaeger, cap: int, status: int) -> None:
    """TRACE has 5 spans: past the cap, the trace route and a search finding it answer as
    GET /api/traces/{id} does, before any span is read; the cap is the query app's own."""
    runner, base_url = await serve(create_query_app(jaeger.store, span_cap=SpanCap(full=cap)))
    try:
        async with aiohttp.ClientSession(base_url) as session:
            for path in (f"/jaeger/api/traces/{TRACE}", "/jaeger/api/traces?service=svc&operation=predict"):
                async with session.get(path) as response:
                    assert response.status == status, path
                    body = await response.json()
                if status == 413:
                    (error,) = body["errors"]
                    assert error["code"] == 413 and f"has 5 spans, more than one response holds ({cap})" in error["msg"]
                    assert f"/api/traces/{TRACE}/window" in error["msg"]
                else:
                    assert [trace["traceID"] for trace in body["data"]] == [TRACE]
    finally:
        await runner.cleanup()
