"""The collector's OTLP endpoints, driven by real clients: the OTel SDK exporters, curl, raw HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from pathlib import Path

import aiohttp
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from mlscope.collector import Collector
from mlscope.store import Store
from tests.collector.collector_testing import JSON, PROTOBUF, StartCollector, post, span_ids, span_request

HERE = Path(__file__).resolve().parent
LIMIT = 64 * 1024
BOMB = gzip.compress(b"\x00" * 10**7)  # ~10 KB that inflates to 10 MB


def traces_url(collector: Collector) -> str:
    return f"http://127.0.0.1:{collector.http_port}/v1/traces"


async def query(store: Store, sql: str) -> list[tuple]:
    # Off the event loop: the collector under test shares it.
    return (await asyncio.to_thread(store.execute, sql)).rows


async def run_program(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_an_unmodified_sdk_program_is_stored(protocol: str, collector: Collector, store: Store) -> None:
    endpoint = f"http://127.0.0.1:{collector.http_port if protocol == 'http' else collector.grpc_port}"

    trace_id = (await run_program(str(HERE / "sdk_program.py"), protocol, endpoint)).strip()

    spans = await query(store, f"SELECT name, span_id, parent_span_id, service, level FROM spans WHERE trace_id = '{trace_id}'")
    by_name = {name: (span_id, parent) for name, span_id, parent, _, _ in spans}
    assert sorted(by_name) == ["layer-0", "layer-1", "layer-2", "model", "pipeline"]
    assert by_name["pipeline"][1] == ""
    assert by_name["model"][1] == by_name["pipeline"][0]
    assert {by_name[f"layer-{i}"][1] for i in range(3)} == {by_name["model"][0]}
    assert {(service, level) for _, _, _, service, level in spans} == {(f"sdk-program-{protocol}", "application")}
    metrics = await query(
        store, f"SELECT name, kind, value, count FROM metrics WHERE service = 'sdk-program-{protocol}' ORDER BY name"
    )
    assert metrics == [("batches", "sum", 3.0, 0), ("latency", "histogram", 3.0, 3)]


async def test_otlp_json_posted_with_curl(collector: Collector, store: Store) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "curl"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "by hand",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [{"key": "mlscope.level", "value": {"stringValue": "model"}}],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json; charset=utf-8",
        "--data-binary", json.dumps(body), traces_url(collector), stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()

    response_body, status = stdout.decode().rsplit("\n", 1)
    assert (status, json.loads(response_body)) == ("200", {})
    assert await query(
        store, "SELECT trace_id, span_id, parent_span_id, name, kind, service, level, duration_ns FROM spans"
    ) == [("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "", "by hand", "server", "curl", "model", 10**9)]


async def test_partial_success_names_the_rejected_spans(collector: Collector, session: aiohttp.ClientSession, store: Store) -> None:
    request = span_request(3)
    request.resource_spans[0].scope_spans[0].spans.append(Span(trace_id=b"short", span_id=b"12345678", name="bad"))

    status, headers, body = await post(session, traces_url(collector), request.SerializeToString())

    assert (status, headers["Content-Type"]) == (200, PROTOBUF)
    partial = ExportTraceServiceResponse.FromString(body).partial_success
    assert partial.rejected_spans == 1 and "invalid trace_id" in partial.error_message
    assert await query(store, "SELECT count() FROM spans") == [(3,)]

    json_status, _, json_body = await post(
        session, traces_url(collector), json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "00", "spanId": "01"}]}]}]}).encode(), JSON
    )
    assert json_status == 200
    assert json.loads(json_body)["partialSuccess"]["rejectedSpans"] == "1"


def rpc_status(body: bytes, content_type: str) -> status_pb2.Status:
    if content_type == PROTOBUF:
        return status_pb2.Status.FromString(body)
    document = json.loads(body)
    return status_pb2.Status(code=document["code"], message=document["message"])


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "expected_status", "reason"),
    [
        (b"\x0a\xff\xff\xff", PROTOBUF, {}, 400, "not a valid ExportTraceServiceRequest protobuf"),
        (b'{"resourceSpans": [', JSON, {}, 400, "not valid JSON"),
        (b"not gzip at all", PROTOBUF, {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        (gzip.compress(b"x")[:-4], PROTOBUF, {"Content-Encoding": "gzip"}, 400, "not one complete gzip stream"),
        (b"{}", "text/plain", {}, 415, "unsupported Content-Type 'text/plain'"),
        (b"{}", JSON, {"Content-Encoding": "br"}, 415, "unsupported Content-Encoding 'br'"),
        (b"\x00" * (LIMIT + 1), PROTOBUF, {}, 413, f"request body exceeds {LIMIT} bytes"),
        (BOMB, PROTOBUF, {"Content-Encoding": "gzip"}, 413, f"decompressed request body exceeds {LIMIT} bytes"),
    ],
    ids=["protobuf-garbage", "json-garbage", "not-gzip", "truncated-gzip", "content-type", "content-encoding", "too-large", "gzip-bomb"],
)
async def test_bad_requests_are_refused_and_the_server_keeps_serving(
    body: bytes, content_type: str, headers: dict[str, str], expected_status: int, reason: str,
    start_collector: StartCollector, session: aiohttp.ClientSession, store: Store,
) -> None:
    collector = await start_collector(max_body_bytes=LIMIT)

    status, response_headers, response_body = await post(session, traces_url(collector), body, content_type, headers)

    assert status == expected_status
    answered_as = PROTOBUF if content_type == PROTOBUF else JSON
    assert response_headers["Content-Type"].split(";")[0] == answered_as
    assert reason in rpc_status(response_body, answered_as).message
    good = span_request(2)
    assert (await post(session, traces_url(collector), gzip.compress(good.SerializeToString()), headers={"Content-Encoding": "gzip"}))[0] == 200
    assert await query(store, "SELECT count() FROM spans") == [(2,)]


async def test_unknown_paths_and_methods(collector: Collector, session: aiohttp.ClientSession) -> None:
    base = f"http://127.0.0.1:{collector.http_port}"
    assert (await post(session, f"{base}/v1/logs", b""))[0] == 404
    async with session.get(f"{base}/v1/traces") as response:
        assert response.status == 405


async def test_too_much_pending_is_answered_429_with_retry_after(start_collector: StartCollector, session: aiohttp.ClientSession, store: Store) -> None:
    # A long flush timer keeps the first request pending while the second arrives.
    collector = await start_collector(max_pending_rows=150, flush_interval_s=0.5)
    first, second = span_request(100), span_request(100)

    first_answer, second_answer = await asyncio.gather(
        post(session, traces_url(collector), first.SerializeToString()),
        post(session, traces_url(collector), second.SerializeToString()),
    )

    assert first_answer[0] == 200
    status, headers, body = second_answer
    assert (status, headers["Retry-After"]) == (429, "1")
    assert "100 rows are waiting" in status_pb2.Status.FromString(body).message
    assert await query(store, "SELECT count() FROM spans") == [(100,)]


async def test_stop_flushes_what_is_pending(start_collector: StartCollector, session: aiohttp.ClientSession, store: Store) -> None:
    collector = await start_collector(flush_interval_s=30)
    request = span_request(5)

    sending = asyncio.create_task(post(session, traces_url(collector), request.SerializeToString()))
    while collector.status()["pending_spans"] == 0:
        await asyncio.sleep(0.01)
    await collector.stop()

    assert (await sending)[0] == 200
    assert sorted(row[0] for row in await query(store, "SELECT span_id FROM spans")) == sorted(span_ids(request))
