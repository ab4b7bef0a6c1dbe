"""With a token file every path class answers 401 without a token, 403 with the wrong scope and
200 with the right one: OTLP/HTTP, OTLP/gRPC, the API, SQL, dispatch and the viewer's data (the
pages and /healthz stay open). One backend (embedded): auth does not depend on the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from mlscope.auth import parse_token_file
from mlscope.collector import Collector
from mlscope.collector.otlp import EVALUATION_NEEDS_SCOPE, TRACES, decode_request
from mlscope.dispatch import Dispatcher, dispatch_mount
from mlscope.query import create_query_app
from mlscope.store import Store, open_store
from mlscope.conventions import ENV_OTLP_HEADERS, EVALUATION_SPAN
from tests.collector.collector_testing import post, quick_config, span_request
from tests.collector.test_http import HERE as COLLECTOR_TESTS
from tests.collector.test_http import run_program
from tests.query.query_server import serve
from tests.test_auth import TOKENS

AUTH = parse_token_file(TOKENS, "tokens.yaml")
SDK_PROGRAM = COLLECTOR_TESTS / "sdk_program.py"
NO_TOKEN, INGEST, READ, PREDICTOR, ADMIN = None, "ingest-1", "reader-1", "predictor-1", "admin-1"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
def embedded_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = open_store(f"embedded://{tmp_path / 'store'}")
    yield store
    store.close()


@pytest.fixture
async def collector(embedded_store: Store, tmp_path: Path) -> AsyncIterator[Collector]:
    started = Collector(embedded_store, quick_config(tmp_path), AUTH)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def api_url(embedded_store: Store) -> AsyncIterator[str]:
    mounts = [dispatch_mount(Dispatcher(embedded_store))]
    runner, base_url = await serve(create_query_app(embedded_store, mounts=mounts, auth=AUTH))
    yield base_url
    await runner.cleanup()


@pytest.mark.parametrize("token, status", [(NO_TOKEN, 401), (READ, 403), (INGEST, 200), (ADMIN, 200)])
async def test_otlp_http_needs_an_ingest_token(collector: Collector, token: str | None, status: int) -> None:
    async with aiohttp.ClientSession() as session:
        answered, headers, _ = await post(session, f"http://127.0.0.1:{collector.http_port}/v1/traces",
                                          span_request(2).SerializeToString(), headers=bearer(token))
    assert answered == status


@pytest.mark.parametrize("token, code", [(NO_TOKEN, grpc.StatusCode.UNAUTHENTICATED),
                                         (READ, grpc.StatusCode.PERMISSION_DENIED), (INGEST, None)])
async def test_otlp_grpc_needs_an_ingest_token(collector: Collector, token: str | None,
                                               code: grpc.StatusCode | None) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
        try:
            await TraceServiceStub(channel).Export(span_request(2), metadata=metadata)
            answered = None
        except grpc.aio.AioRpcError as refused:
            answered = refused.code()
    assert answered == code


# (method, path, body, the scope's token that is enough, a token that is not)
ROUTES = [
    ("GET", "/api/traces", None, READ, INGEST),
    ("GET", f"/api/traces/{'a' * 32}/export?format=jaeger", None, READ, PREDICTOR),
    ("GET", "/api/evaluations", None, READ, INGEST),
    ("POST", "/api/sql", {"query": "SELECT 1"}, READ, INGEST),
    ("POST", "/api/predictors", {}, PREDICTOR, READ),
    ("GET", "/api/jobs", None, PREDICTOR, READ),
    ("POST", f"/api/jobs/{'b' * 32}/state", {}, PREDICTOR, INGEST),
    ("GET", "/api/predictors", None, ADMIN, PREDICTOR),
    ("POST", "/api/jobs", {}, ADMIN, PREDICTOR),
]


@pytest.mark.parametrize("method, path, body, enough, too_little", ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
async def test_api_sql_and_dispatch_answer_401_403_and_pass_the_right_scope(
    api_url: str, method: str, path: str, body: object, enough: str, too_little: str
) -> None:
    async def status(token: str | None) -> int:
        async with aiohttp.ClientSession(api_url) as session:
            async with session.request(method, path, json=body, headers=bearer(token)) as response:
                return response.status

    unauthenticated = await status(NO_TOKEN)
    assert (unauthenticated, await status("not-a-token"), await status(too_little)) == (401, 401, 403)
    # Past auth: the handler answers (a 404 for the unknown trace or job, a 400 for an empty body).
    assert await status(enough) not in (401, 403)
    assert await status(ADMIN) not in (401, 403)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/api/conventions", "/",
                                  f"/traces/{'a' * 32}", "/sql", "/static/app.js"])
async def test_health_and_the_viewers_pages_stay_open(api_url: str, path: str) -> None:
    async with aiohttp.ClientSession(api_url) as session, session.get(path) as response:
        assert response.status == 200


@pytest.mark.parametrize(("token", "detailed"), [(NO_TOKEN, False), ("not-a-token", False), (INGEST, False),
                                               (READ, True), (ADMIN, True)])
async def test_readyz_answers_everyone_but_names_the_store_only_to_readers(
    api_url: str, token: str | None, detailed: bool
) -> None:
    async with aiohttp.ClientSession(api_url) as session, session.get("/readyz", headers=bearer(token)) as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ready"
    assert ("store" in body, "store_state_age_s" in body) == (detailed, detailed)


async def test_a_401_names_the_bearer_scheme(api_url: str) -> None:
    async with aiohttp.ClientSession(api_url) as session, session.get("/api/traces") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "bearer token" in (await response.json())["error"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_otel_sdk_exporters_deliver_with_the_token_in_otel_exporter_otlp_headers(
    protocol: str, collector: Collector, embedded_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unmodified SDK program (mlscope's agents use the same SDK exporter, which reads the same
    variable) sends its spans and metrics with the token; without it they are refused."""
    endpoint = f"http://127.0.0.1:{collector.http_port if protocol == 'http' else collector.grpc_port}"
    monkeypatch.setenv(ENV_OTLP_HEADERS, f"authorization=Bearer%20{INGEST}")

    trace_id = (await run_program(str(SDK_PROGRAM), protocol, endpoint)).strip()

    rows = (await asyncio.to_thread(embedded_store.execute, f"SELECT count() FROM spans WHERE trace_id = '{trace_id}'")).rows
    assert rows == [(5,)]


def _request_with_an_evaluation() -> ExportTraceServiceRequest:
    request = span_request(3)
    request.resource_spans[0].scope_spans[0].spans[2].name = EVALUATION_SPAN
    return request


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("token, may_evaluate", [(INGEST, False), (PREDICTOR, True), (ADMIN, True)])
async def test_evaluation_spans_need_a_predictor_token_the_rest_is_stored(
    protocol: str, token: str, may_evaluate: bool, collector: Collector, embedded_store: Store
) -> None:
    request = _request_with_an_evaluation()
    if protocol == "http":
        async with aiohttp.ClientSession() as session:
            status, _, body = await post(session, f"http://127.0.0.1:{collector.http_port}/v1/traces",
                                         request.SerializeToString(), headers=bearer(token))
        assert status == 200
        answer = ExportTraceServiceResponse.FromString(body)
    else:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
            answer = await TraceServiceStub(channel).Export(request, metadata=(("authorization", f"Bearer {token}"),))
    trace_id = request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    stored = await asyncio.to_thread(embedded_store.execute, f"SELECT name FROM spans WHERE trace_id = '{trace_id}'")
    evaluations = await asyncio.to_thread(embedded_store.execute,
                                          f"SELECT count() FROM evaluations WHERE trace_id = '{trace_id}'")
    if may_evaluate:
        assert (answer.partial_success.rejected_spans, len(stored.rows), evaluations.rows) == (0, 3, [(1,)])
    else:
        assert answer.partial_success.rejected_spans == 1
        assert answer.partial_success.error_message == f"1 span rejected; first: {EVALUATION_NEEDS_SCOPE}"
        assert (sorted(stored.rows), evaluations.rows) == ([("op-0",), ("op-1",)], [(0,)])


def test_a_refused_evaluation_span_leaves_the_request_so_a_spooled_copy_holds_none() -> None:
    request = _request_with_an_evaluation()
    decoded, changed = decode_request(TRACES, request, may_write_evaluations=False)
    assert (changed, decoded.rows, decoded.rejected) == (True, 2, 1)
    assert EVALUATION_SPAN not in [span.name for span in request.resource_spans[0].scope_spans[0].spans]
    untouched = _request_with_an_evaluation()
    decoded, changed = decode_request(TRACES, untouched, may_write_evaluations=True)
    assert (changed, decoded.rows, decoded.rejected) == (False, 3, 0)
