"""A 200 means durable: acknowledged spans survive kill -9 of the collector and an outage of the
store, and appear exactly once in the deduplicating `spans` view."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from tests.collector.collector_process import start_collector_process
from tests.collector.collector_testing import post, quick_config, span_ids, span_request
from mlscope.collector import Collector
from mlscope.collector.spool import frame
from mlscope.store import Store, open_store, sql_string

SPANS_PER_REQUEST = 50


async def send_all(url: str, requests: list[ExportTraceServiceRequest], concurrency: int = 4) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Posts every request, `concurrency` at a time. Returns the span ids answered 200 and the
    (status, headers) of the other answers."""
    acknowledged: list[str] = []
    refused: list[tuple[int, dict[str, str]]] = []
    queue = list(reversed(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            request = queue.pop()
            try:
                status, headers, _ = await post(session, url, request.SerializeToString())
            except aiohttp.ClientError:
                continue  # no answer: not acknowledged
            if status == 200:
                acknowledged.extend(span_ids(request))
            else:
                refused.append((status, headers))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return acknowledged, refused


def spans_found(store: Store, ids: list[str]) -> tuple[int, int]:
    """(rows, distinct span ids) among `ids` as readers see them."""
    listed = ", ".join(sql_string(span_id) for span_id in ids)
    return store.execute(f"SELECT count(), uniqExact(span_id) FROM spans WHERE span_id IN ({listed})").rows[0]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_acknowledged_spans_survive_kill_9(store_url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    process, port = await asyncio.to_thread(start_collector_process, store_url, spool_dir)
    url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        acknowledged, _ = await send_all(url, [span_request(SPANS_PER_REQUEST) for _ in range(20)])
        # Killed while a second wave is in flight: only its acknowledged part must survive.
        second_wave = asyncio.create_task(send_all(url, [span_request(SPANS_PER_REQUEST) for _ in range(40)]))
        await asyncio.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
    acknowledged += (await second_wave)[0]
    assert len(acknowledged) >= 20 * SPANS_PER_REQUEST

    # A restart replays whatever the spool holds; a graceful stop then releases the store.
    process, _ = await asyncio.to_thread(start_collector_process, store_url, spool_dir)
    await wait_for(lambda: not list(spool_dir.glob("*.pbd")))
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait) == 0

    store = await asyncio.to_thread(open_store, store_url)
    try:
        assert spans_found(store, acknowledged) == (len(acknowledged), len(acknowledged))
    finally:
        store.close()


@pytest.fixture
async def server_store(clickhouse_server) -> AsyncIterator[Store]:
    store = await asyncio.to_thread(open_store, f"clickhouse://127.0.0.1:{clickhouse_server.port}/t_{uuid.uuid4().hex[:12]}")
    yield store
    store.close()


@contextlib.asynccontextmanager
async def store_outage(clickhouse_server) -> AsyncIterator[None]:
    """clickhouse-server is down inside the block; it runs again afterwards whatever happens,
    since the whole session shares it."""
    await asyncio.to_thread(clickhouse_server.stop)
    try:
        yield
    finally:
        await asyncio.to_thread(clickhouse_server.start_again)


async def test_store_outage_is_spooled_then_replayed(clickhouse_server, server_store: Store, tmp_path: Path) -> None:
    collector = Collector(server_store, quick_config(tmp_path))
    await collector.start()
    url = f"http://127.0.0.1:{collector.http_port}/v1/traces"
    try:
        before, _ = await send_all(url, [span_request(SPANS_PER_REQUEST) for _ in range(5)])
        async with store_outage(clickhouse_server):
            during, refused = await send_all(url, [span_request(SPANS_PER_REQUEST) for _ in range(10)])
            assert (len(during), refused) == (10 * SPANS_PER_REQUEST, [])
            status = collector.status()
            assert not status["store_ok"] and status["spooled_bytes"] > 0
        await wait_for(lambda: collector.status()["spooled_bytes"] == 0 and collector.status()["store_ok"])
        after, _ = await send_all(url, [span_request(SPANS_PER_REQUEST)])
    finally:
        await collector.stop()

    acknowledged = before + during + after
    assert len(acknowledged) == 16 * SPANS_PER_REQUEST
    assert await asyncio.to_thread(spans_found, server_store, acknowledged) == (len(acknowledged), len(acknowledged))


async def test_store_down_and_spool_full_is_503_with_retry_after(clickhouse_server, server_store: Store, tmp_path: Path) -> None:
    request_bytes = len(frame([span_request(SPANS_PER_REQUEST).SerializeToString()]))  # as spooled
    collector = Collector(server_store, quick_config(tmp_path, max_spool_bytes=3 * request_bytes))
    await collector.start()
    url = f"http://127.0.0.1:{collector.http_port}/v1/traces"
    try:
        async with store_outage(clickhouse_server):
            spooled, refused = await send_all(url, [span_request(SPANS_PER_REQUEST) for _ in range(6)], concurrency=1)
            assert len(spooled) == 3 * SPANS_PER_REQUEST
            assert [(status, headers["Retry-After"]) for status, headers in refused] == [(503, "5")] * 3

            async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.grpc_port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused_rpc:
                    await TraceServiceStub(channel).Export(span_request(SPANS_PER_REQUEST))
            assert refused_rpc.value.code() == grpc.StatusCode.UNAVAILABLE
            retry_info = RetryInfo.FromString(dict(refused_rpc.value.trailing_metadata())["google.rpc.retryinfo-bin"])
            assert retry_info.retry_delay.seconds == 5
        await wait_for(lambda: collector.status()["spooled_bytes"] == 0)
    finally:
        await collector.stop()

    assert await asyncio.to_thread(spans_found, server_store, spooled) == (len(spooled), len(spooled))
